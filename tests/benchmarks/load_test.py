"""Load test: the collector and the two recommender endpoints together, for minutes, then a check that
every event the collector accepted is in Kafka.

    make load-test        (or: .venv/bin/python tests/benchmarks/load_test.py --duration 300)

Not part of CI (5 minutes by default). On the private embedded stack of ``serving_stack.py``, the
open-loop generator of ``loadgen.py`` sends one interleaved constant-rate schedule of
``POST /v1/events`` (one real-shaped Taobao event per request, fresh event ids), ``GET
/v1/recommendations`` and ``GET /v1/bundles`` (known and unknown users). Prints per-target
p50/p95/p99 (from the scheduled send time), throughput and errors, then reads the events topic and
counts the accepted event ids found there. Verdict (met/MISSED, exit 1 when missed; ``--no-verdict``:
exit 0): no accepted event missing from Kafka, no failed request.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import Request, run_open_loop, summarize  # noqa: E402
from verdict import Verdict, add_verdict_argument  # noqa: E402  (tests/benchmarks/verdict.py)

REPORT_DIR = Path(__file__).resolve().parents[2] / "reports" / "load-test"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=300.0, help="seconds of load")
    p.add_argument("--events-rate", type=float, default=50.0, help="POST /v1/events per second")
    p.add_argument("--recommendations-rate", type=float, default=25.0, help="GET /v1/recommendations per second")
    p.add_argument("--bundles-rate", type=float, default=25.0, help="GET /v1/bundles per second")
    p.add_argument("--processes", type=int, default=4, help="load generator processes")
    p.add_argument("--threads", type=int, default=6, help="keep-alive connections per generator process")
    p.add_argument("--unknown-share", type=float, default=0.3, help="share of requests for users no model knows")
    p.add_argument("--history-events", type=int, default=20_000, help="Taobao events replayed before the load")
    p.add_argument("--train-epochs", type=int, default=1, help="LightGCN epochs (plain PyTorch, Taobao slice)")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: reports/load-test/<time>.json)")
    add_verdict_argument(p)
    return p.parse_args()


def event_bodies(settings: Any, skip: int, n: int) -> list[tuple[str, bytes]]:
    """``n`` Taobao events after the replayed history, as (event_id, JSON body) with fresh ids, so
    every accepted one can be found again in the topic."""
    from streamrec.replay import read_taobao_rows, taobao_events

    source = taobao_events(read_taobao_rows(settings.data.taobao_csv))[skip:]
    bodies = []
    for i in range(n):
        event = dict(source[i % len(source)], event_id=str(uuid.uuid4()))
        bodies.append((event["event_id"], json.dumps(event).encode()))
    return bodies


def build_schedule(args: argparse.Namespace, settings: Any, users: list[str]) -> tuple[list[Request], dict[int, str]]:
    """The interleaved schedule at the total rate (targets drawn by their shares, seeded) and, per
    request index of a collector POST, the event id it carries."""
    rates = {"events": args.events_rate, "recommendations": args.recommendations_rate, "bundles": args.bundles_rate}
    total = sum(rates.values())
    n = int(total * args.duration)
    rng = random.Random(7)
    kinds = rng.choices(list(rates), weights=list(rates.values()), k=n)
    bodies = event_bodies(settings, args.history_events, kinds.count("events"))
    auth = (("authorization", f"Bearer {settings.collector.auth_token.get_secret_value()}"), ("content-type", "application/json"))
    requests: list[Request] = []
    event_of: dict[int, str] = {}
    next_body = iter(bodies)
    for i, (kind, user) in enumerate(zip(kinds, users)):
        who = "unknown" if user.startswith("new-") else "known"
        if kind == "events":
            event_id, body = next(next_body)
            event_of[i] = event_id
            requests.append(Request("POST /v1/events", "POST", "/v1/events", body, auth))
        elif kind == "recommendations":
            requests.append(Request(f"GET /v1/recommendations ({who})", "GET", f"/v1/recommendations?k=10&user_id={user}",
                                    None, auth[:1]))
        else:
            requests.append(Request(f"GET /v1/bundles ({who})", "GET", f"/v1/bundles?user_id={user}", None, auth[:1]))
    return requests, event_of


def events_in_kafka(settings: Any, wanted: set[str]) -> tuple[int, int]:
    """(how many of ``wanted`` event ids the events topic holds, extra copies of them)."""
    from streamrec.runtime.kafka import read_topic

    seen: dict[str, int] = {}
    for record in read_topic(settings.kafka, settings.kafka.topics.events, timeout_s=600):
        try:
            event_id = json.loads(record.value).get("event_id")
        except (ValueError, TypeError, AttributeError):
            continue
        if event_id in wanted:
            seen[event_id] = seen.get(event_id, 0) + 1
    return len(seen), sum(c - 1 for c in seen.values())


def main() -> int:
    args = parse_args()
    load_before = os.getloadavg()
    print(f"load average before: {load_before}", flush=True)
    from serving_stack import start_serving_stack, user_mix

    with tempfile.TemporaryDirectory(prefix="load-test-") as tmp:
        stack = start_serving_stack(Path(tmp), args.history_events, args.train_epochs)
        try:
            total_rate = args.events_rate + args.recommendations_rate + args.bundles_rate
            users = user_mix(stack.known_users, int(total_rate * args.duration), args.unknown_share, seed=2)
            requests, event_of = build_schedule(args, stack.settings, users)
            print(f"  {len(requests)} requests over {args.duration:g} s at {total_rate:g}/s ...", flush=True)
            result = run_open_loop(stack.base_url, requests, total_rate, args.processes, args.threads)
            targets = summarize(requests, result, rate=total_rate)
            accepted = {event_of[i] for i in event_of if result.status[i] == 200}
            print(f"  reading the events topic for {len(accepted)} accepted event ids ...", flush=True)
            found, duplicates = events_in_kafka(stack.settings, accepted)
        finally:
            stack.close()
    load_after = os.getloadavg()
    print(f"\nLoad test: {args.duration:g} s, {total_rate:g} requests/s offered "
          f"(events {args.events_rate:g}, recommendations {args.recommendations_rate:g}, bundles {args.bundles_rate:g})")
    print(f"  {'target':<36} {'req':>6} {'ok/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>7}")
    for name, s in sorted(targets.items()):
        print(f"  {name:<36} {s['requests']:>6} {s['throughput_per_s']:>7.1f} {s['p50_ms']:>8.2f} {s['p95_ms']:>8.2f} "
              f"{s['p99_ms']:>8.2f} {s['max_ms']:>8.1f} {s['errors']:>7}")
    print("  (latency from the scheduled send; errors: non-2xx, connection errors, and requests not sent because\n"
          "   they were over 10 s behind schedule, whose latencies then make p99 a lower bound)")
    for name, s in sorted(targets.items()):
        print(f"  statuses {name}: {s['statuses']}")
    missing = len(accepted) - found
    print(f"  events: {len(event_of)} scheduled, {len(accepted)} accepted (HTTP 200), {found} of them in Kafka, "
          f"{missing} missing, {duplicates} extra copies")
    print(f"load average before {load_before}, after {load_after}")
    results = {
        "when": datetime.now(timezone.utc).isoformat(), "cpus": os.cpu_count(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "targets": targets, "events": {"scheduled": len(event_of), "accepted": len(accepted), "in_kafka": found,
                                       "missing": missing, "extra_copies": duplicates},
        "loadavg_before": load_before, "loadavg_after": load_after,
    }
    out = args.out or REPORT_DIR / f"load-test-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    verdict = Verdict.from_args(args)
    verdict.check("accepted events missing from Kafka", missing, "<=", 0, note="nothing accepted is lost")
    verdict.check("failed requests (non-2xx, connection errors, not sent)", sum(s["errors"] for s in targets.values()),
                  "<=", 0)
    return verdict.report()


if __name__ == "__main__":
    sys.exit(main())
