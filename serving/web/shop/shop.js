// The demo storefront (served at /shop/ by the recommender app): what a shopper sees, on the real
// endpoints. Home: /v1/recommendations with their reasons. A product page: a view event, the item's
// bundles from /v1/bundles (with the experiment variant and each bundle's reason), similar items.
// Every action goes through the tracker; bundle clicks and purchases carry the slate's feedback token.
import { createTracker, uuid4 } from "/v1/events/tracker.js";

const view = document.getElementById("view");
const config = await (await fetch("/shop/config.json")).json();
const params = new URLSearchParams(location.search);
const userId = params.get("user") || localStorage.getItem("streamrec.shopper") || `web-${uuid4().slice(0, 8)}`;
localStorage.setItem("streamrec.shopper", userId);
const errors = [];
const created = []; // {type, event_id} of every event this page made
const tracker = createTracker({
  key: config.key, userId, collectorUrl: config.collector_url,
  flushIntervalMs: Number(params.get("flush_ms")) || undefined,
  onError: (e) => { errors.push(e); console.warn("streamrec tracker", e); },
  onEvent: (e) => created.push({ type: e.type, event_id: e.event_id }),
});
const categoryOf = new Map(); // item -> category, from the recommendation answers
const cart = []; // {itemId, categoryId}
const shop = { tracker, errors, created, userId, last: {} }; // read by tests/serving/app/test_storefront_browser.py
window.streamrecShop = shop;
document.getElementById("shopper").textContent = `shopper ${userId}`;

async function api(path, query) {
  const q = new URLSearchParams({ user_id: userId, session_id: tracker.sessionId, ...query });
  const response = await fetch(`${path}?${q}`, { headers: { authorization: `Bearer ${config.key}` } });
  const body = await response.json();
  if (!response.ok) throw new Error(`${path}: ${response.status} ${body.error ? body.error.reason : ""}`);
  return body;
}

const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
};
const swatch = (id) => `hsl(${[...String(id)].reduce((h, c) => (h * 31 + c.charCodeAt(0)) % 360, 7)} 55% 62%)`;

function itemCard(answer, item, position) {
  if (item.category != null) categoryOf.set(item.item_id, item.category);
  const open = () => {
    tracker.click({ requestId: answer.request_id, itemId: item.item_id, position });
    location.hash = `#/item/${encodeURIComponent(item.item_id)}`;
  };
  return el("div", { class: "card", "data-testid": "rec-item", "data-item": item.item_id },
    el("div", { class: "swatch", style: `background:${swatch(item.category ?? item.item_id)};height:60px;width:100%` }),
    el("h3", {}, `item ${item.item_id}`),
    el("p", { class: "muted" }, `category ${item.category ?? "unknown"}`),
    el("p", {}, item.reason || answer.source),
    el("button", { onclick: open, "data-testid": "open-item" }, "view"));
}

function itemGrid(answer, title) {
  const cards = answer.items.map((item, i) => itemCard(answer, item, i));
  return [el("h2", {}, title), el("p", { class: "muted" }, `source ${answer.source} · ranker ${(answer.ranker && answer.ranker.model) || "none"}`),
    cards.length ? el("div", { class: "grid" }, ...cards) : el("p", { class: "muted" }, "nothing to recommend yet")];
}

function addToCart(itemId) {
  const categoryId = categoryOf.get(itemId);
  tracker.addToCart(itemId, { categoryId });
  cart.push({ itemId, categoryId });
  document.getElementById("cart-count").textContent = cart.length;
}

function bundleCard(slate, bundle) {
  const items = bundle.items.map((itemId) => ({ itemId, categoryId: categoryOf.get(itemId) }));
  const claim = { requestId: slate.request_id, bundleId: bundle.bundle_id, feedbackToken: slate.feedback_token };
  const take = () => {
    tracker.click({ ...claim, position: bundle.position });
    bundle.items.forEach(addToCart);
    status(`bundle ${bundle.bundle_id} added to the cart`);
  };
  const buy = () => {
    tracker.bundlePurchase({ ...claim, items, orderId: `o-${uuid4().slice(0, 12)}` });
    status(`bought bundle ${bundle.bundle_id}`);
  };
  return el("div", { class: "card", "data-testid": "bundle", "data-bundle": bundle.bundle_id },
    el("h3", {}, `bundle of ${bundle.items.length}`),
    el("p", {}, ...bundle.items.map((i) => el("span", { class: "tag" }, i))),
    el("p", {}, bundle.reason), el("p", { class: "muted" }, `source ${bundle.source}`),
    el("button", { onclick: take, "data-testid": "bundle-click" }, "add bundle"),
    el("button", { onclick: buy, class: "secondary", "data-testid": "bundle-buy" }, "buy bundle"));
}

function status(text) {
  const old = document.getElementById("status");
  if (old) old.textContent = text;
}

async function home() {
  const answer = await api("/v1/recommendations", { k: 12 });
  shop.last.recommendations = answer;
  view.replaceChildren(...itemGrid(answer, "Recommended for you"));
}

async function product(itemId) {
  const categoryId = categoryOf.get(itemId);
  tracker.view(itemId, { categoryId });
  view.replaceChildren(
    el("div", { class: "product" },
      el("div", { class: "swatch", style: `background:${swatch(categoryId ?? itemId)}` }),
      el("div", {}, el("h2", {}, `item ${itemId}`), el("p", { class: "muted" }, `category ${categoryId ?? "unknown"}`),
        el("div", { class: "actions" },
          el("button", { onclick: () => { addToCart(itemId); status(`item ${itemId} added to the cart`); }, "data-testid": "add-to-cart" }, "add to cart"),
          el("button", { class: "secondary", "data-testid": "buy-now", onclick: () => {
            tracker.purchase([{ itemId, categoryId }], { orderId: `o-${uuid4().slice(0, 12)}` });
            status(`bought item ${itemId}`);
          } }, "buy now")),
        el("p", { id: "status", class: "note", "data-testid": "status" }))),
    el("p", { class: "muted" }, "loading bundles…"));
  const [slate, similar] = await Promise.all([api("/v1/bundles", { item_id: itemId }), api("/v1/recommendations", { item_id: itemId, k: 8 })]);
  shop.last.bundles = slate;
  view.lastChild.replaceWith(
    el("h2", {}, "Bundles with this item"),
    el("div", { class: "variant", "data-testid": "variant" },
      `experiment ${slate.experiment} · variant ${slate.variant} · policy ${slate.policy}`),
    slate.bundles.length ? el("div", { class: "grid" }, ...slate.bundles.map((b) => bundleCard(slate, b)))
      : el("p", { class: "muted" }, slate.note || "no bundles"),
    ...itemGrid(similar, "Similar items"));
}

function cartPage() {
  const checkout = () => {
    if (!cart.length) return;
    tracker.purchase(cart, { orderId: `o-${uuid4().slice(0, 12)}` });
    cart.length = 0;
    document.getElementById("cart-count").textContent = "0";
    cartPage();
    status("order placed");
  };
  view.replaceChildren(el("h2", {}, "Cart"),
    cart.length ? el("ul", {}, ...cart.map((c) => el("li", {}, `item ${c.itemId}`))) : el("p", { class: "muted" }, "empty"),
    el("button", { onclick: checkout, "data-testid": "checkout" }, "checkout"),
    el("p", { id: "status", class: "note", "data-testid": "status" }));
}

async function route() {
  const [, page, arg] = location.hash.split("/");
  try {
    if (page === "item" && arg) await product(decodeURIComponent(arg));
    else if (page === "cart") cartPage();
    else await home();
    document.body.dataset.ready = location.hash || "#/";
  } catch (error) {
    view.replaceChildren(el("p", { class: "muted", "data-testid": "error" }, String(error)));
    document.body.dataset.ready = "error";
  }
}

setInterval(() => {
  document.getElementById("tracker-status").textContent =
    `tracker: ${tracker.stats.sent} sent, ${tracker.pending} pending, ${tracker.stats.retried} retried`;
}, 500);
addEventListener("hashchange", route);
route();
