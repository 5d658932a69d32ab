"""The real Taobao slice replayed through the collector: every event accounted for."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest

from support import TEST_TOKEN, CollectorHandle, taobao_csv
from streamrec.replay import read_taobao_rows, replay_events, taobao_events
from streamrec.runtime.kafka import read_topic, topic_end_offsets

pytestmark = [pytest.mark.kafka, pytest.mark.ray]

TAOBAO_EVENTS = 84_287  # the dataset README's count


def test_taobao_events_map_behaviours_and_sessions(collector: CollectorHandle) -> None:
    rows = read_taobao_rows(taobao_csv(collector.settings))
    assert len(rows) == TAOBAO_EVENTS
    events = taobao_events(rows)
    assert Counter(e["type"] for e in events) == {"view": 75_693, "add_to_cart": 4_494, "favorite": 2_351, "purchase": 1_749}
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    assert len({e["event_id"] for e in events}) == TAOBAO_EVENTS
    assert taobao_events(rows[:100])[0]["event_id"] in {e["event_id"] for e in events}  # stable ids
    # A gap of more than 30 minutes starts a new session of the same user.
    user = events[0]["user_id"]
    mine = [e for e in events if e["user_id"] == user]
    assert len({e["session_id"] for e in mine}) > 1


def test_every_replayed_taobao_event_is_in_kafka_or_the_dlq(collector: CollectorHandle) -> None:
    kafka = collector.settings.kafka
    events_start = topic_end_offsets(kafka, kafka.topics.events)
    dlq_start = topic_end_offsets(kafka, kafka.topics.dlq)
    events = taobao_events(read_taobao_rows(taobao_csv(collector.settings)))
    summary = asyncio.run(
        replay_events(events, collector.url, TEST_TOKEN, batch_size=collector.settings.collector.limits.max_batch_events, show_progress=False)
    )
    assert summary.sent == TAOBAO_EVENTS
    assert summary.accepted + summary.rejected == TAOBAO_EVENTS

    in_kafka = read_topic(kafka, kafka.topics.events, start=events_start)
    in_dlq = [json.loads(r.value) for r in read_topic(kafka, kafka.topics.dlq, start=dlq_start)]
    kafka_ids = {json.loads(r.value)["event_id"] for r in in_kafka}
    assert kafka_ids == summary.accepted_event_ids
    assert len(in_dlq) == summary.rejected and all(d["reason"] for d in in_dlq)
    accounted = kafka_ids | {d["event_id"] for d in in_dlq}
    assert accounted == {e["event_id"] for e in events}
