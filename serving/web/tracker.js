// streamrec browser tracker: contract events (features/events.py) from the page to the collector.
// Served by the collector at /v1/events/tracker.js; no dependencies.
//
//   import { createTracker } from "/v1/events/tracker.js";
//   const tracker = createTracker({ key: "<publishable key>", userId: "u-42" });
//   tracker.view("item-7", { categoryId: "c-3" });
//   tracker.click({ requestId, bundleId, position, feedbackToken });   // from a /v1/bundles answer
//
// Delivery is at least once: events are queued and sent in batches (size and time limits) with
// fetch(..., {keepalive: true}); 408/429/5xx and network errors are retried with backoff, keeping
// their event_ids, so the pipeline's de-duplication by event_id makes them exactly once in features.
// When the page is hidden the queue is flushed with navigator.sendBeacon. Nothing here throws into
// the page or blocks it: failures go to options.onError.

const SCHEMA_VERSION = 1;
const SESSION_GAP_MS = 30 * 60 * 1000; // a new session after 30 idle minutes (the pipeline's gap)
const BEACON_MAX_BYTES = 60000; // browsers cap keepalive/beacon bodies in flight at 64 KiB
const RETRYABLE = new Set([408, 425, 429, 500, 502, 503, 504]);

const DEFAULTS = {
  collectorUrl: "/v1/events",
  maxBatch: 20, // events per request
  flushIntervalMs: 1000, // longest an event waits in the queue before a send
  maxQueue: 1000, // oldest events are dropped (and reported) beyond this
  backoffMs: 250, // first retry delay, doubled each attempt, with jitter
  maxBackoffMs: 15000,
  storage: typeof sessionStorage !== "undefined" ? sessionStorage : null,
  onError: () => {},
  onEvent: () => {}, // each event as created (a debug panel, a test, a mirror to another tool)
};

export function uuid4() {
  if (globalThis.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

// The session id survives page loads (sessionStorage) and rotates after SESSION_GAP_MS idle.
function sessionIdFrom(storage, now) {
  try {
    const saved = JSON.parse((storage && storage.getItem("streamrec.session")) || "null");
    const id = saved && now - saved.at < SESSION_GAP_MS ? saved.id : `s-${uuid4()}`;
    if (storage) storage.setItem("streamrec.session", JSON.stringify({ id, at: now }));
    return id;
  } catch (_) {
    return `s-${uuid4()}`;
  }
}

function lines(items) {
  return items.map((it) => {
    const line = { item_id: String(it.itemId ?? it.item_id), quantity: it.quantity ?? 1 };
    if (it.price != null) line.price = it.price;
    if (it.categoryId != null) line.category_id = String(it.categoryId);
    return line;
  });
}

function retryAfterMs(response) {
  const seconds = Number(response.headers.get("retry-after"));
  return Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : 0;
}

export function createTracker(options) {
  const o = { ...DEFAULTS };
  for (const [name, value] of Object.entries(options || {})) if (value !== undefined) o[name] = value;
  if (!o.key) throw new Error("streamrec tracker: options.key (the publishable key) is required");
  if (!o.userId) throw new Error("streamrec tracker: options.userId is required");
  const queue = []; // events not yet acknowledged, oldest first
  let timer = null;
  let inFlight = null; // the batch being sent (one request at a time keeps order and the keepalive quota)
  let attempt = 0;
  let sessionId = o.sessionId || sessionIdFrom(o.storage, Date.now());
  const stats = { sent: 0, retried: 0, dropped: 0, beaconed: 0 };

  const report = (reason, detail) => {
    try {
      o.onError({ reason, ...detail });
    } catch (_) {
      /* a faulty handler must not break tracking */
    }
  };

  const schedule = (delayMs) => {
    if (timer === null) timer = setTimeout(() => { timer = null; send(); }, delayMs);
  };

  async function send() {
    if (inFlight || queue.length === 0) return;
    const batch = queue.splice(0, o.maxBatch);
    inFlight = batch;
    let retryIn = 0;
    try {
      const response = await fetch(o.collectorUrl, {
        method: "POST",
        keepalive: true,
        headers: { authorization: `Bearer ${o.key}`, "content-type": "application/json" },
        body: JSON.stringify(batch),
      });
      if (response.ok || response.status === 207 || response.status === 422) {
        attempt = 0;
        stats.sent += batch.length;
        // 207/422: the rejected events are in the dead-letter topic with their reasons; resending won't help.
        if (!response.ok || response.status === 207) report("rejected", { status: response.status, body: await response.json() });
      } else if (RETRYABLE.has(response.status)) {
        retryIn = retryAfterMs(response) || 1;
      } else if (response.status === 413 && batch.length > 1) {
        queue.unshift(...batch); // too big for the collector's limits: send it in halves
        o.maxBatch = Math.max(1, Math.floor(batch.length / 2));
      } else {
        stats.dropped += batch.length;
        report("refused", { status: response.status, events: batch.length });
      }
    } catch (error) {
      retryIn = 1; // network error or the page going away: the same events, the same ids, later
    }
    if (retryIn) {
      queue.unshift(...batch);
      stats.retried += batch.length;
      attempt += 1;
      const backoff = Math.min(o.maxBackoffMs, o.backoffMs * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2);
      inFlight = null;
      schedule(Math.max(retryIn, backoff));
      return;
    }
    inFlight = null;
    if (queue.length >= o.maxBatch) send();
    else if (queue.length) schedule(o.flushIntervalMs);
  }

  // The page is being hidden (tab switch, navigation, close): hand everything queued to the browser.
  function beaconFlush() {
    if (queue.length === 0) return;
    const url = `${o.collectorUrl}?key=${encodeURIComponent(o.key)}`; // a beacon cannot set headers
    let chunk = [];
    const flushChunk = () => {
      if (chunk.length === 0) return;
      const body = JSON.stringify(chunk);
      const ok = typeof navigator !== "undefined" && navigator.sendBeacon
        && navigator.sendBeacon(url, new Blob([body], { type: "text/plain;charset=UTF-8" }));
      if (ok) stats.beaconed += chunk.length;
      else queue.push(...chunk); // the browser refused (quota): keep them for the next send
      chunk = [];
    };
    const pending = queue.splice(0, queue.length);
    for (const event of pending) {
      if (chunk.length >= o.maxBatch || JSON.stringify([...chunk, event]).length > BEACON_MAX_BYTES) flushChunk();
      chunk.push(event);
    }
    flushChunk();
  }

  function track(type, fields = {}) {
    try {
      const now = Date.now();
      sessionId = o.sessionId || sessionIdFrom(o.storage, now);
      const event = {
        schema_version: SCHEMA_VERSION, type, event_id: uuid4(), user_id: String(o.userId),
        session_id: sessionId, ts: new Date(now).toISOString(),
        page: typeof location !== "undefined" ? location.pathname.slice(0, 256) : undefined,
        ...fields,
      };
      for (const k of Object.keys(event)) if (event[k] === undefined || event[k] === null) delete event[k];
      queue.push(event);
      try {
        o.onEvent(event);
      } catch (_) {
        /* as onError */
      }
      if (queue.length > o.maxQueue) {
        const dropped = queue.splice(0, queue.length - o.maxQueue);
        stats.dropped += dropped.length;
        report("queue_full", { events: dropped.length });
      }
      if (queue.length >= o.maxBatch) send();
      else schedule(o.flushIntervalMs);
      return event.event_id;
    } catch (error) {
      report("tracker_error", { message: String(error) });
      return null;
    }
  }

  if (typeof document !== "undefined") {
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "hidden") beaconFlush();
    });
    addEventListener("pagehide", beaconFlush);
  }

  const item = (itemId, extra = {}) => ({
    item_id: String(itemId),
    category_id: extra.categoryId != null ? String(extra.categoryId) : undefined,
    price: extra.price,
  });

  return {
    get userId() { return o.userId; },
    get sessionId() { return sessionId; },
    get pending() { return queue.length + (inFlight ? inFlight.length : 0); },
    stats,
    track,
    view: (itemId, extra) => track("view", item(itemId, extra)),
    addToCart: (itemId, extra = {}) => track("add_to_cart", { ...item(itemId, extra), quantity: extra.quantity ?? 1 }),
    removeFromCart: (itemId, extra = {}) => track("remove_from_cart", { ...item(itemId, extra), quantity: extra.quantity ?? 1 }),
    purchase: (items, extra = {}) => track("purchase", { items: lines(items), order_id: extra.orderId, currency: extra.currency }),
    // A click on a shown item or bundle: requestId and feedbackToken come from the answer that showed it.
    click: ({ requestId, itemId, bundleId, position, feedbackToken }) => track("click", {
      request_id: requestId, item_id: itemId, bundle_id: bundleId, position, feedback_token: feedbackToken,
    }),
    bundlePurchase: ({ requestId, bundleId, items, feedbackToken, orderId, currency }) => track("bundle_purchase", {
      request_id: requestId, bundle_id: bundleId, items: lines(items), feedback_token: feedbackToken,
      order_id: orderId, currency,
    }),
    flush: () => send(),
    beaconFlush,
  };
}
