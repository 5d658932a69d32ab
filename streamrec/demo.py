"""`streamrec demo`: the main job on the embedded defaults, end to end, with a printed summary.

Start the broker, Ray and the Serve apps; replay the real Taobao slice through the collector over
HTTP; read the topics back and account for every event; turn the events into features (Beam ->
Feast + Parquet lake, one micro-batch); ask the recommender for bundles and items; stop everything.
(Training, simulated shoppers and the A/B read-out join here as those stages land.)
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass

from streamrec import local_stack
from streamrec.config import Settings
from streamrec.replay import ReplaySummary, read_taobao_rows, replay_events, taobao_events
from streamrec.topics import read_topic


@dataclass
class TopicTally:
    events: int
    distinct_event_ids: int
    users: int
    dlq: int
    dlq_reasons: Counter[str]


def tally_topics(settings: Settings) -> TopicTally:
    events = read_topic(settings.kafka, settings.kafka.topics.events)
    dead = read_topic(settings.kafka, settings.kafka.topics.dlq)
    values = [json.loads(r.value) for r in events]
    return TopicTally(
        events=len(values),
        distinct_event_ids=len({v["event_id"] for v in values}),
        users=len({v["user_id"] for v in values}),
        dlq=len(dead),
        dlq_reasons=Counter(json.loads(r.value)["reason"] for r in dead),
    )


def run_feature_batch(settings: Settings) -> str:
    """One bounded micro-batch from the committed offsets to the end (what `pipeline run --once` does)."""
    from features.repo import apply_feature_repo
    from pipelines.runner import FeaturePipeline

    apply_feature_repo(settings)
    pipeline = FeaturePipeline(settings)
    try:
        return pipeline.run_once().as_text()
    finally:
        pipeline.close()


def ask_recommender(settings: Settings, user_id: str) -> list[str]:
    """One bundles request and one recommendations request for a real user, summarised."""
    import httpx

    base = settings.collector.base_url
    bundles = httpx.get(f"{base}/v1/bundles", params={"user_id": user_id}, timeout=30).json()
    items = httpx.get(f"{base}/v1/recommendations", params={"user_id": user_id, "k": 5}, timeout=30).json()
    shown = ", ".join(f"{b['bundle_id']} (p={b['propensity']:.2f})" for b in bundles.get("bundles", []))
    ranked = ", ".join(f"{i['item_id']} ({i['reason']})" for i in items.get("items", []))
    return [
        f"/v1/bundles for user {user_id}: experiment {bundles.get('experiment')}, variant {bundles.get('variant')}, "
        f"policy {bundles.get('policy')}: {shown or bundles}",
        f"/v1/recommendations ({items.get('source')}): {ranked or items}",
    ]


def run_demo(settings: Settings, limit: int = 0, rate: float = 0.0, keep_running: bool = False) -> int:
    started = time.monotonic()
    ok = False
    print("[1/6] starting the embedded stack (tansu broker, Ray, Serve collector) ...", flush=True)
    try:
        for name, state in local_stack.up(settings).items():
            print(f"      {name}: {state}")
        rows = read_taobao_rows(settings.data.taobao_csv)
        events = taobao_events(rows)[: limit or None]
        url = settings.collector.base_url
        print(f"[2/6] replaying {len(events):,} real Taobao events through {url}/v1/events ...", flush=True)
        summary: ReplaySummary = asyncio.run(
            replay_events(events, url, settings.collector.auth_token.get_secret_value(), rate=rate)
        )
        print(f"      {summary.as_text()}")
        print("[3/6] reading the topics back from Kafka ...", flush=True)
        tally = tally_topics(settings)
        accounted = tally.distinct_event_ids + tally.dlq
        print(
            f"      {settings.kafka.topics.events}: {tally.events:,} records, {tally.distinct_event_ids:,} distinct "
            f"event ids, {tally.users:,} users; {settings.kafka.topics.dlq}: {tally.dlq:,} "
            f"({dict(tally.dlq_reasons) or 'empty'})"
        )
        ok = accounted >= len(events) and summary.accepted + summary.rejected == len(events)
        print(f"      every replayed event accounted for: {'yes' if ok else 'NO'} ({accounted:,} of {len(events):,})")
        print("[4/6] features: Kafka -> Beam -> Feast (online + offline) + Parquet lake, one micro-batch ...", flush=True)
        print(f"      {run_feature_batch(settings)}")
        print("[5/6] asking the recommender ...", flush=True)
        for line in ask_recommender(settings, user_id=events[-1]["user_id"]):
            print(f"      {line}")
    finally:
        if not keep_running:
            print("[6/6] stopping the stack ...", flush=True)
            for name, state in local_stack.down(settings).items():
                print(f"      {name}: {state}")
    print(f"demo finished in {time.monotonic() - started:.0f}s")
    return 0 if ok else 1
