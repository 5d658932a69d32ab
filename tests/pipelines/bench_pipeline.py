"""Throughput of one micro-batch over the real Taobao slice, end to end (not collected by pytest).

    .venv/bin/python tests/pipelines/bench_pipeline.py [--users N]

Starts a private broker, produces the slice (key=user_id, acks=all), runs one batch (Beam
DirectRunner, lake, Feast offline + online SQLite push, state, commit) and prints the timings.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parents[1])]

from support import start_broker  # noqa: E402  (tests/support.py)
from pipeline_support import pipeline_settings, produce, taobao_subset  # noqa: E402

from pipelines.runner import FeaturePipeline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=None, help="first N users only (default: all)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    handle = start_broker(tmp / "broker")
    try:
        settings = pipeline_settings(handle.settings, tmp / "state")
        events = taobao_subset(None, users=args.users)
        started = time.monotonic()
        produce(settings, events)
        produce_s = time.monotonic() - started
        pipeline = FeaturePipeline(settings)
        marks: dict[str, float] = {}
        pipeline.on_step = lambda step: marks.setdefault(step, time.monotonic())
        started = time.monotonic()
        cpu = time.process_time()
        summary = pipeline.run_once()
        total = time.monotonic() - started
        # A small batch on top of the whole history: what one --follow step costs at this size.
        from pipeline_support import ev

        produce(settings, [ev("view", "bench-user", 716_823 + 60, item_id="bench-item")])
        small_started = time.monotonic()
        small = pipeline.run_once()
        small_s = time.monotonic() - small_started
        pipeline.close()
        print(f"events: {len(events)}; produce {produce_s:.1f}s ({len(events) / produce_s:,.0f} ev/s)")
        print(f"batch: {total:.1f}s wall, {time.process_time() - cpu:.1f}s CPU of this process "
              f"({len(events) / total:,.0f} ev/s end to end)")
        order = ["beam", "lake", "dlq", "features", "state", "commit"]
        spans = {a: marks[b] - marks[a] for a, b in zip(order, order[1:]) if a in marks and b in marks}
        print("  steps: " + ", ".join(f"{k} {v:.1f}s" for k, v in spans.items()))
        print("  " + summary.as_text())
        print(f"next batch of {small.records} event on this state: {small_s:.1f}s ({small.as_text()})")
    finally:
        handle.broker.stop()


if __name__ == "__main__":
    main()
