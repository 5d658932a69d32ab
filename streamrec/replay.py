"""Replaying real clickstream data through the collector, as the web frontend would send it.

The Taobao UserBehavior slice becomes contract events: pv -> view, cart -> add_to_cart,
fav -> favorite, buy -> purchase; a session ends after 30 minutes of inactivity; event time is the
row's timestamp. Event ids are derived from the row, so replaying the same file twice produces the
same ids and downstream de-duplication removes the second copy.
"""

from __future__ import annotations

import asyncio
import csv
import json
import time
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import httpx
from tqdm import tqdm

from features.events import SCHEMA_VERSION

TAOBAO_BEHAVIOR_TO_TYPE = {"pv": "view", "cart": "add_to_cart", "fav": "favorite", "buy": "purchase"}
SESSION_GAP_S = 30 * 60
# Namespace of the deterministic event ids of replayed rows.
REPLAY_NAMESPACE = uuid.UUID("6f1c3c1e-6a55-4c57-9a43-2f1b1c0c8a11")


@dataclass(frozen=True)
class TaobaoRow:
    line: int
    user_id: str
    item_id: str
    category_id: str
    behavior: str
    timestamp: int


def read_taobao_rows(path: Path) -> list[TaobaoRow]:
    """Rows of UserBehavior.csv (no header: user,item,category,behavior,unix seconds), file order."""
    rows: list[TaobaoRow] = []
    with open(path, newline="") as handle:
        for line, cols in enumerate(csv.reader(handle), start=1):
            if len(cols) != 5:
                raise ValueError(f"{path}:{line}: expected 5 columns, got {len(cols)}")
            rows.append(TaobaoRow(line, cols[0], cols[1], cols[2], cols[3], int(cols[4])))
    return rows


def taobao_events(rows: Iterable[TaobaoRow]) -> list[dict[str, Any]]:
    """Contract events (as JSON-ready dicts) in event-time order, sessionised per user.

    A behaviour outside the mapping is kept as its raw value so that the collector rejects it
    with a reason, rather than the replay silently dropping it.
    """
    ordered = sorted(rows, key=lambda r: (r.timestamp, r.line))
    last_seen: dict[str, int] = {}
    session_no: Counter[str] = Counter()
    events: list[dict[str, Any]] = []
    for row in ordered:
        previous = last_seen.get(row.user_id)
        if previous is None or row.timestamp - previous > SESSION_GAP_S:
            session_no[row.user_id] += 1
        last_seen[row.user_id] = row.timestamp
        events.append(_taobao_event(row, f"{row.user_id}-s{session_no[row.user_id]}"))
    return events


def _taobao_event(row: TaobaoRow, session_id: str) -> dict[str, Any]:
    event: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "event_id": str(uuid.uuid5(REPLAY_NAMESPACE, f"taobao:{row.line}:{row.user_id}:{row.item_id}:{row.timestamp}")),
        "type": TAOBAO_BEHAVIOR_TO_TYPE.get(row.behavior, row.behavior),
        "user_id": row.user_id,
        "session_id": session_id,
        "ts": datetime.fromtimestamp(row.timestamp, tz=timezone.utc).isoformat().replace("+00:00", "Z"),
    }
    if event["type"] == "purchase":
        event["items"] = [{"item_id": row.item_id, "quantity": 1, "category_id": row.category_id}]
    else:
        event["item_id"] = row.item_id
        event["category_id"] = row.category_id
    return event


@dataclass
class ReplaySummary:
    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    retries_503: int = 0
    requests: int = 0
    elapsed_s: float = 0.0
    accepted_event_ids: set[str] = field(default_factory=set)

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_text(self) -> str:
        reasons = ", ".join(f"{r}={n}" for r, n in self.rejected_by_reason.most_common()) or "none"
        return (
            f"sent {self.sent} events in {self.requests} requests over {self.elapsed_s:.1f}s "
            f"({self.rate:,.0f} ev/s): accepted {self.accepted}, rejected {self.rejected} "
            f"(to the DLQ; reasons: {reasons}); 503 retries {self.retries_503}"
        )


class _RateLimiter:
    """At most `rate` events per second on average (0: unlimited)."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._start = time.monotonic()
        self._granted = 0

    async def take(self, n: int) -> None:
        if self._rate <= 0:
            return
        self._granted += n
        wait = self._start + self._granted / self._rate - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)


def _lanes(events: list[dict[str, Any]], lanes: int) -> list[list[dict[str, Any]]]:
    """Split by user into lanes; each lane posts in order, so a user's events keep their order."""
    out: list[list[dict[str, Any]]] = [[] for _ in range(lanes)]
    for event in events:
        out[zlib.crc32(str(event.get("user_id")).encode()) % lanes].append(event)
    return out


def _chunks(seq: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def _encoded_batches(events: list[dict[str, Any]], batch_size: int) -> list[tuple[int, bytes]]:
    """(events in it, JSON body) of each batch of a lane, in order."""
    return [(len(batch), json.dumps(batch).encode()) for batch in _chunks(events, batch_size)]


async def _post_lane(
    client: httpx.AsyncClient,
    url: str,
    batches: list[tuple[int, bytes]],
    limiter: _RateLimiter,
    summary: ReplaySummary,
    progress: tqdm,
    max_retries: int,
) -> None:
    for count, body in batches:
        await limiter.take(count)
        for attempt in range(max_retries + 1):
            reply = await client.post(url, content=body, headers={"content-type": "application/json"})
            summary.requests += 1
            if reply.status_code != 503:
                break
            summary.retries_503 += 1
            await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
        if reply.status_code not in (200, 207, 422):
            raise RuntimeError(f"collector answered {reply.status_code}: {reply.text[:500]}")
        _count(reply.json(), summary)
        summary.sent += count
        progress.update(count)


def _count(body: dict[str, Any], summary: ReplaySummary) -> None:
    summary.accepted += body["accepted"]
    summary.rejected += body["rejected"]
    for result in body["results"]:
        if result["status"] == "accepted":
            summary.accepted_event_ids.add(result["event_id"])
        else:
            summary.rejected_by_reason[result["reason"]] += 1


async def replay_events(
    events: list[dict[str, Any]],
    collector_url: str,
    token: str,
    *,
    rate: float = 0.0,
    batch_size: int = 200,
    concurrency: int = 4,
    max_retries: int = 20,
    show_progress: bool = True,
) -> ReplaySummary:
    """POST events to the collector's /v1/events; retries 503s with the same event ids."""
    summary = ReplaySummary()
    limiter = _RateLimiter(rate)
    url = collector_url.rstrip("/") + "/v1/events"
    # Bodies are encoded before the clock starts: ``elapsed_s`` times the collector's path, as a
    # raw producer's timing leaves out encoding its records (tests/benchmarks/bench_ingest.py).
    lanes = [_encoded_batches(lane, batch_size) for lane in _lanes(events, concurrency) if lane]
    started = time.monotonic()
    headers = {"authorization": f"Bearer {token}"}
    with tqdm(total=len(events), unit="ev", desc="replay", disable=not show_progress) as progress:
        async with httpx.AsyncClient(headers=headers, timeout=30.0) as client:
            await asyncio.gather(*(_post_lane(client, url, lane, limiter, summary, progress, max_retries) for lane in lanes))
    summary.elapsed_s = time.monotonic() - started
    return summary
