"""`streamrec demo`: the main job on the embedded defaults, end to end, with a printed summary.

Stage 1 (ingestion): start the broker, Ray and the collector; replay the real Taobao slice through
the collector over HTTP; read the topics back and account for every event; stop everything.
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


def run_demo(settings: Settings, limit: int = 0, rate: float = 0.0, keep_running: bool = False) -> int:
    started = time.monotonic()
    print("[1/4] starting the embedded stack (tansu broker, Ray, Serve collector) ...", flush=True)
    try:
        for name, state in local_stack.up(settings).items():
            print(f"      {name}: {state}")
        rows = read_taobao_rows(settings.data.taobao_csv)
        events = taobao_events(rows)[: limit or None]
        url = f"http://{settings.collector.host}:{settings.collector.port}"
        print(f"[2/4] replaying {len(events):,} real Taobao events through {url}/v1/events ...", flush=True)
        summary: ReplaySummary = asyncio.run(
            replay_events(events, url, settings.collector.auth_token.get_secret_value(), rate=rate)
        )
        print(f"      {summary.as_text()}")
        print("[3/4] reading the topics back from Kafka ...", flush=True)
        tally = tally_topics(settings)
        accounted = tally.distinct_event_ids + tally.dlq
        print(
            f"      {settings.kafka.topics.events}: {tally.events:,} records, {tally.distinct_event_ids:,} distinct "
            f"event ids, {tally.users:,} users; {settings.kafka.topics.dlq}: {tally.dlq:,} "
            f"({dict(tally.dlq_reasons) or 'empty'})"
        )
        ok = accounted >= len(events) and summary.accepted + summary.rejected == len(events)
        print(f"      every replayed event accounted for: {'yes' if ok else 'NO'} ({accounted:,} of {len(events):,})")
    finally:
        if not keep_running:
            print("[4/4] stopping the stack ...", flush=True)
            for name, state in local_stack.down(settings).items():
                print(f"      {name}: {state}")
    print(f"demo finished in {time.monotonic() - started:.0f}s")
    return 0 if ok else 1
