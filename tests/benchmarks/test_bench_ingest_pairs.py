"""bench-ingest's batch pairs: fresh events each run, the learner caught up before each run, and
the side that goes first alternating."""

import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # as the bench scripts import each other

import bench_ingest  # noqa: E402


def test_fresh_copies_wrap_around_the_slice_with_new_event_ids():
    events = [{"event_id": f"e{i}", "user_id": f"u{i}"} for i in range(3)]
    copies = bench_ingest.fresh_copies(events, 5, start=2)
    assert [c["user_id"] for c in copies] == ["u2", "u0", "u1", "u2", "u0"]
    ids = [c["event_id"] for c in copies]
    assert len(set(ids)) == 5 and all(str(uuid.UUID(i)) == i for i in ids)
    assert events[0]["event_id"] == "e0"  # the slice itself is untouched


def test_each_run_waits_for_the_learner_and_the_first_side_alternates(monkeypatch):
    import streamrec.replay

    calls: list[str] = []
    monkeypatch.setattr(streamrec.replay, "read_taobao_rows", lambda path: [])
    monkeypatch.setattr(streamrec.replay, "taobao_events", lambda rows: [{"event_id": "x", "user_id": "u"}])
    monkeypatch.setattr(bench_ingest, "wait_for_the_learner", lambda stack, kafka: calls.append("wait"))
    monkeypatch.setattr(bench_ingest, "raw_batch_throughput", lambda kafka, events: calls.append("raw") or 100.0)
    monkeypatch.setattr(bench_ingest, "collector_batch_throughput",
                        lambda stack, events, size, lanes: calls.append("collector") or (60.0, 0))
    stack = bench_ingest.Stack({}, "http://127.0.0.1:1", "127.0.0.1:2")
    runs = bench_ingest.batch_pairs(stack, pairs=3, per_run=4, batch_size=2, lanes=1)
    assert calls == ["wait", "raw", "wait", "collector", "wait", "collector", "wait", "raw", "wait", "raw", "wait", "collector"]
    assert [r["ratio"] for r in runs] == [0.6, 0.6, 0.6] and all(r["not_accepted"] == 0 for r in runs)
