"""Simulated shoppers built from the held-out later events of real users.

The Taobao slice is cut in time: events before the cut are history (replayed through the collector,
so features and models learn from them); each user's events after the cut are that user's real
future. A shopper then visits the live service: for each of their future events, in order, they
send that event (now, through the collector), ask for bundles and recommendations with the item
they are looking at as context, and click or buy what their real future says they would, with
noise:

* an item they really interact with later: click with ``item_click``, buy with ``item_purchase``
  when they later carted / bought it;
* an item of a category they interact with later: click with ``category_click`` (buy with
  ``category_purchase`` for a category they later buy in);
* anything else: click with ``noise_click``.

Reward of a bundle request = expected probability that the shopper clicks at least one shown
bundle under this model (pseudo-reward: no coin-flip noise); the realised clicks and purchases are
drawn from the same probabilities and sent as events. Regret is computed after the run against the
best ``k`` bundles for that shopper among every bundle the service showed during the run.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from features.events import SCHEMA_VERSION

__all__ = [
    "ShopperModel", "Interests", "Shopper", "ShopperRun", "split_shoppers", "slate_click_probability",
    "add_oracle_rewards", "run_shoppers",
]

# Namespace of the deterministic ids of the shoppers' live events (a re-run sends the same ids).
LIVE_NAMESPACE = uuid.UUID("0b9f4c1e-6a53-4d1e-9e3c-5f1f3d2b7a10")


@dataclass(frozen=True)
class ShopperModel:
    item_click: float = 0.9
    category_click: float = 0.1
    noise_click: float = 0.01
    item_purchase: float = 0.7
    category_purchase: float = 0.1


@dataclass(frozen=True)
class Interests:
    """What a shopper will still do after a given point of their real future."""

    future_items: frozenset[str]
    bought_items: frozenset[str]  # carted or bought later
    future_categories: frozenset[str]
    bought_categories: frozenset[str]

    def item_click_probability(self, item: str, category: str | None, model: ShopperModel) -> float:
        if item in self.future_items:
            return model.item_click
        if category is not None and category in self.future_categories:
            return model.category_click
        return model.noise_click

    def purchase_probability(self, item: str, category: str | None, model: ShopperModel) -> float:
        if item in self.bought_items:
            return model.item_purchase
        if category is not None and category in self.bought_categories:
            return model.category_purchase
        return 0.0


@dataclass(frozen=True)
class Shopper:
    """One real user's events after the cut, in time order (contract dicts, original times)."""

    user_id: str
    future_events: tuple[dict[str, Any], ...]

    def interests_after(self, step: int) -> Interests:
        """Interests from the events *after* ``step``: the item being looked at now (the request's
        context) is not itself evidence of what the shopper wants next."""
        later = self.future_events[step + 1:]
        items = [_event_item(e) for e in later]
        bought = [_event_item(e) for e in later if e["type"] in ("add_to_cart", "purchase")]
        return Interests(
            future_items=frozenset(i for i, _ in items),
            bought_items=frozenset(i for i, _ in bought),
            future_categories=frozenset(c for _, c in items if c),
            bought_categories=frozenset(c for _, c in bought if c),
        )


def _event_item(event: dict[str, Any]) -> tuple[str, str | None]:
    if "items" in event:
        line = event["items"][0]
        return line["item_id"], line.get("category_id")
    return event["item_id"], event.get("category_id")


def split_shoppers(events: Sequence[dict[str, Any]], cut: datetime) -> tuple[list[dict[str, Any]], list[Shopper]]:
    """(history events before ``cut``, shoppers = users with history and events after it)."""
    cut_iso = cut.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    history = [e for e in events if e["ts"] < cut_iso]
    known = {e["user_id"] for e in history}
    later: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        if e["ts"] >= cut_iso and e["user_id"] in known:
            later.setdefault(e["user_id"], []).append(e)
    return history, [Shopper(user, tuple(evs)) for user, evs in sorted(later.items())]


def slate_click_probability(probabilities: Iterable[float]) -> float:
    """P(at least one click) when each shown bundle is clicked independently."""
    miss = 1.0
    for p in probabilities:
        miss *= 1.0 - p
    return 1.0 - miss


def bundle_click_probability(interests: Interests, items: Sequence[str], category_of: dict[str, str], model: ShopperModel) -> float:
    """A bundle is clicked when the shopper would click any of its items."""
    return slate_click_probability(interests.item_click_probability(i, category_of.get(i), model) for i in items)


@dataclass
class ShopperRun:
    """What the shoppers did; ``records`` are the lines of ``shoppers.jsonl``."""

    records: list[dict[str, Any]] = field(default_factory=list)
    events_sent: int = 0
    events_accepted: int = 0
    accepted_event_ids: set[str] = field(default_factory=set)
    feedback_events: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


def add_oracle_rewards(records: list[dict[str, Any]], shoppers: dict[str, Shopper], bundle_items: dict[str, list[str]],
                       category_of: dict[str, str], model: ShopperModel,
                       candidates: Mapping[str, Iterable[Sequence[str]]] | None = None) -> None:
    """Set ``oracle_reward`` of each bundle request: the best slate of the same size for that
    shopper among every bundle shown during the run and the request's own candidates (known only
    afterwards). Where ``candidates`` (request id -> the items of each candidate bundle the policy
    chose from) has the request, also set ``candidate_reward``: the best slate among those alone,
    so that regret splits into what the candidates missed (oracle - candidate) and what the
    policy's choice missed (candidate - reward)."""
    for r in records:
        if r["endpoint"] != "bundles" or r["user_id"] not in shoppers:
            continue
        interests = shoppers[r["user_id"]].interests_after(r["step"])
        k = len(r["shown"])

        def best_first(bundles: Iterable[Sequence[str]]) -> list[float]:
            return sorted((bundle_click_probability(interests, items, category_of, model) for items in bundles), reverse=True)

        shown = best_first(bundle_items.values())
        own = best_first(candidates.get(r["request_id"], ()) if candidates is not None else ())
        if own:
            r["candidate_reward"] = max(slate_click_probability(own[:k]), r["reward"])
        # The best k of both lists are among the first k of each.
        oracle = slate_click_probability(sorted(shown[:k] + own[:k], reverse=True)[:k])
        r["oracle_reward"] = max(oracle, r["reward"], r.get("candidate_reward", 0.0))


def _live_event(template: dict[str, Any], now: datetime, tag: str) -> dict[str, Any]:
    """A copy of a real later event as it happens now (new deterministic id, live time)."""
    event = dict(template)
    event["event_id"] = str(uuid.uuid5(LIVE_NAMESPACE, f"{tag}:{template['event_id']}"))
    event["ts"] = now.isoformat().replace("+00:00", "Z")
    event["session_id"] = f"{template['session_id']}-live"
    return event


def _feedback_event(kind: str, user: str, session: str, request_id: str, now: datetime, **fields: Any) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION, "event_id": str(uuid.uuid4()), "type": kind, "user_id": user,
        "session_id": session, "ts": now.isoformat().replace("+00:00", "Z"), "request_id": request_id, **fields,
    }


class _Visit:
    """One shopper's session against the live service (HTTP through the collector and the app)."""

    def __init__(self, client: httpx.AsyncClient, base_url: str, token: str, run: ShopperRun,
                 category_of: dict[str, str], model: ShopperModel, rng: random.Random, experiment: str | None) -> None:
        self.client, self.base, self.run = client, base_url, run
        self.headers = {"Authorization": f"Bearer {token}"}
        self.category_of, self.model, self.rng, self.experiment = category_of, model, rng, experiment

    async def send_events(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        self.run.events_sent += len(events)
        for attempt in range(5):
            try:
                r = await self.client.post(f"{self.base}/v1/events", json=events, headers=self.headers)
            except httpx.HTTPError:
                self.run.error("collector_unreachable")
                await asyncio.sleep(0.5 * (attempt + 1))
                continue
            if r.status_code == 503:  # broker not acknowledging: nothing was logged, retry
                self.run.error("collector_503")
                await asyncio.sleep(0.5 * (attempt + 1))
                continue
            body = r.json()
            for result in body.get("results", []):
                if result.get("status") == "accepted":
                    self.run.events_accepted += 1
                    self.run.accepted_event_ids.add(result["event_id"])
            return
        self.run.error("events_lost_after_retries")

    async def get(self, path: str, params: dict[str, Any]) -> tuple[dict[str, Any] | None, float]:
        started = time.perf_counter()
        for attempt in range(5):
            try:
                r = await self.client.get(f"{self.base}{path}", params=params, headers=self.headers)
            except httpx.HTTPError:
                self.run.error(f"{path} unreachable")
                await asyncio.sleep(0.5 * (attempt + 1))
                continue
            if r.status_code >= 500:
                self.run.error(f"{path} {r.status_code}")
                await asyncio.sleep(0.5 * (attempt + 1))
                continue
            if r.status_code != 200:
                self.run.error(f"{path} {r.status_code}")
                return None, (time.perf_counter() - started) * 1000
            return r.json(), (time.perf_counter() - started) * 1000
        return None, (time.perf_counter() - started) * 1000

    async def step(self, shopper: Shopper, index: int) -> None:
        template = shopper.future_events[index]
        now = datetime.now(timezone.utc)
        organic = _live_event(template, now, f"step{index}")
        await self.send_events([organic])
        seed, _ = _event_item(template)
        session = organic["session_id"]
        params: dict[str, Any] = {"user_id": shopper.user_id, "item_id": seed, "k": 3}
        if self.experiment:
            params["experiment"] = self.experiment
        interests = shopper.interests_after(index)
        bundles, latency = await self.get("/v1/bundles", params)
        if bundles is not None:
            await self._answer_bundles(shopper.user_id, index, interests, bundles, latency, session)
        items, latency = await self.get("/v1/recommendations", {"user_id": shopper.user_id, "item_id": seed, "k": 10})
        if items is not None:
            await self._answer_items(shopper.user_id, index, interests, items, latency, session)

    async def _answer_bundles(self, user: str, step: int, interests: Interests, body: dict[str, Any], latency: float,
                              session: str) -> None:
        now = datetime.now(timezone.utc)
        shown = body.get("bundles", [])
        probs = [bundle_click_probability(interests, b["items"], self.category_of, self.model) for b in shown]
        clicked, purchased, feedback = [], [], []
        for b, p in zip(shown, probs):
            if self.rng.random() >= p:
                continue
            clicked.append(b["bundle_id"])
            # The slate's signed token goes back with its feedback, as a web frontend sends it.
            feedback.append(_feedback_event("click", user, session, body["request_id"], now,
                                            bundle_id=b["bundle_id"], position=b["position"],
                                            feedback_token=body.get("feedback_token")))
            bought = [i for i in b["items"]
                      if self.rng.random() < interests.purchase_probability(i, self.category_of.get(i), self.model)]
            if bought:
                purchased.append(b["bundle_id"])
                lines = [{"item_id": i, "quantity": 1, **({"category_id": self.category_of[i]} if i in self.category_of else {})}
                         for i in bought]
                feedback.append(_feedback_event("bundle_purchase", user, session, body["request_id"], now,
                                                bundle_id=b["bundle_id"], order_id=uuid.uuid4().hex, items=lines,
                                                feedback_token=body.get("feedback_token")))
        self.run.feedback_events += len(feedback)
        await self.send_events(feedback)
        self.run.records.append({
            "t": time.time(), "user_id": user, "step": step, "experiment": body.get("experiment"),
            "variant": body.get("variant"), "policy": body.get("policy"), "endpoint": "bundles",
            "request_id": body.get("request_id"), "latency_ms": round(latency, 3),
            "shown": [b["bundle_id"] for b in shown], "shown_items": [b["items"] for b in shown],
            "clicked": clicked, "purchased": purchased,
            # Taobao has no prices: revenue stays 0 (purchase lines carry no price).
            "revenue": 0.0, "reward": slate_click_probability(probs), "oracle_reward": None,
        })

    async def _answer_items(self, user: str, step: int, interests: Interests, body: dict[str, Any], latency: float,
                            session: str) -> None:
        now = datetime.now(timezone.utc)
        shown = body.get("items", [])
        clicked, feedback = [], []
        for pos, it in enumerate(shown):
            p = interests.item_click_probability(it["item_id"], self.category_of.get(it["item_id"]), self.model)
            if self.rng.random() < p:
                clicked.append(it["item_id"])
                feedback.append(_feedback_event("click", user, session, body["request_id"], now,
                                                item_id=it["item_id"], position=pos))
        self.run.feedback_events += len(feedback)
        await self.send_events(feedback)
        self.run.records.append({
            "t": time.time(), "user_id": user, "step": step, "experiment": None, "variant": body.get("source"),
            "policy": body.get("source"), "endpoint": "recommendations", "request_id": body.get("request_id"),
            "latency_ms": round(latency, 3), "shown": [it["item_id"] for it in shown], "clicked": clicked,
            "purchased": [], "revenue": 0.0, "reward": float(bool(clicked)), "oracle_reward": None,
        })


async def run_shoppers(
    base_url: str, token: str, shoppers: Sequence[Shopper], category_of: dict[str, str], *,
    steps_per_shopper: int = 5, concurrency: int = 8, model: ShopperModel = ShopperModel(), seed: int = 0,
    experiment: str | None = None, progress: Any = None, stop_after_s: float | None = None,
    visits_per_s: float | None = None,
) -> ShopperRun:
    """Every shopper walks through up to ``steps_per_shopper`` of their real later events.

    Shoppers run ``concurrency`` at a time; each shopper's own steps are sequential (their events
    stay in order). ``visits_per_s`` paces the steps of all shoppers together (a site's arrival
    rate; None: as fast as the service answers). ``progress`` (e.g. a tqdm bar) is advanced once per step.
    """
    run = ShopperRun()
    pace = _Pace(visits_per_s)
    queue: asyncio.Queue[Shopper] = asyncio.Queue()
    for s in shoppers:
        queue.put_nowait(s)
    deadline = None if stop_after_s is None else time.monotonic() + stop_after_s
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:

        async def worker(n: int) -> None:
            while not queue.empty():
                shopper = queue.get_nowait()
                visit = _Visit(client, base_url, token, run, category_of, model,
                               random.Random(f"{seed}:{shopper.user_id}"), experiment)
                for index in range(min(steps_per_shopper, len(shopper.future_events))):
                    if deadline is not None and time.monotonic() > deadline:
                        return
                    await pace.wait()
                    await visit.step(shopper, index)
                    if progress is not None:
                        progress.update(1)

        await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return run


class _Pace:
    """Visits at a fixed rate across all workers (open loop: a slow answer does not delay the schedule)."""

    def __init__(self, per_s: float | None) -> None:
        self.interval = 1.0 / per_s if per_s else 0.0
        self.next_at = time.monotonic()

    async def wait(self) -> None:
        if not self.interval:
            return
        at, self.next_at = self.next_at, max(self.next_at, time.monotonic() - 1.0) + self.interval
        delay = at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
