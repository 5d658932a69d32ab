"""Ingest benchmark on the shipped configuration: the collector as `streamrec up` runs it.

    make bench-ingest        (or: .venv/bin/python tests/benchmarks/bench_ingest.py --duration 60)

Starts a private embedded stack with `streamrec up` (tansu, the Ray head, Serve's HAProxy ingress,
``deploy/local/serve.yaml`` as shipped: collector with 64 ongoing requests, the recommender beside
it) on free ports, then, in one run:

* **single events, open loop**: one contract event per POST at ``--rate`` (100/s) for
  ``--duration`` seconds from the separate-process generator of ``loadgen.py`` (latency from the
  scheduled send time, so queueing counts). Targets: p99 < 20 ms; no queue growth (p50 of the last
  quarter <= 1.5x the first quarter's); no error response;
* **single events, saturated**: wrk (2 threads, 32 connections, closed loop) POSTing single events
  (a fresh event_id and user each) against wrk on ``GET /v1/events/healthz`` through the same ingress,
  in interleaved pairs (``--pairs``, the side that goes first alternating, median ratio). Target >= 0.5x;
* **batches**: the collector's batch path (``streamrec replay``'s client: batches of 500, 4 lanes)
  against a raw kafka-python producer with the collector's producer options (acks=all, idempotent)
  writing the same records (key, value, headers) to the same events topic, on fresh events each,
  ``--batch-pairs`` interleaved pairs (the side that goes first alternating), median ratio. Target >= 0.5x.

Every response of the collector is answered only after Kafka acknowledged its events. Prints
met/MISSED per target and exits 1 when one is missed (``--no-verdict``: exits 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for the `support` helpers
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from loadgen import Request, percentile, run_open_loop, summarize  # noqa: E402
from support import TEST_ADMIN_TOKEN, TEST_TOKEN, private_stack_env, run_streamrec  # noqa: E402
from streamrec.runtime.config import KafkaConfig, Settings  # noqa: E402
from verdict import Verdict, add_verdict_argument, ratio  # noqa: E402  (tests/benchmarks/verdict.py)

RATIO_TARGET, P99_TARGET_MS, QUEUE_GROWTH_TARGET = 0.5, 20.0, 1.5

# wrk: each request a new contract event (random event_id and user), so nothing is a duplicate.
SINGLE_EVENT_LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
local hex = "0123456789abcdef"
local function h(n)
  local t = {}
  for i = 1, n do local r = math.random(1, 16); t[i] = hex:sub(r, r) end
  return table.concat(t)
end
request = function()
  local id = h(8) .. "-" .. h(4) .. "-4" .. h(3) .. "-a" .. h(3) .. "-" .. h(12)
  local body = '{"schema_version":1,"type":"view","event_id":"' .. id .. '","user_id":"wrk-' .. h(6) ..
    '","session_id":"s-' .. h(6) .. '","ts":"%s","item_id":"i-' .. h(4) .. '"}'
  return wrk.format(nil, "/v1/events", nil, body)
end
"""


@dataclass
class Stack:
    env: dict[str, str]
    base_url: str
    bootstrap: str


def start_stack(state_dir: Path) -> Stack:
    """`streamrec up` on private ports with the shipped Serve config."""
    ports, env = private_stack_env(state_dir)
    env["STREAMREC_COLLECTOR__AUTH_TOKEN"] = TEST_TOKEN
    env["STREAMREC_SERVING__ADMIN_TOKEN"] = TEST_ADMIN_TOKEN  # to read the learner's offsets
    up = run_streamrec(env, "up", timeout_s=600)
    if up.returncode != 0:
        run_streamrec(env, "down", timeout_s=600)
        raise RuntimeError(f"streamrec up failed:\n{up.stdout}\n{up.stderr}")
    return Stack(env, f"http://127.0.0.1:{ports['collector']}", f"127.0.0.1:{ports['broker']}")


def contract_event(i: int, now: str) -> dict[str, Any]:
    return {"schema_version": 1, "type": "view", "event_id": str(uuid.uuid4()), "user_id": f"open-{i % 997}",
            "session_id": f"s-{i % 997}", "ts": now, "item_id": f"i-{i % 5000}"}


def single_event_requests(n: int) -> list[Request]:
    now = datetime.now(timezone.utc).isoformat()
    headers = (("Content-Type", "application/json"), ("Authorization", f"Bearer {TEST_TOKEN}"))
    return [Request("POST /v1/events", "POST", "/v1/events", json.dumps(contract_event(i, now)).encode(), headers)
            for i in range(n)]


def open_loop(stack: Stack, rate: float, duration_s: float, warmup_s: float) -> dict[str, Any]:
    """Single events at ``rate``; latency summary after the warm-up and the quarter-by-quarter p50."""
    requests = single_event_requests(int(rate * (warmup_s + duration_s)))
    result = run_open_loop(stack.base_url, requests, rate, processes=2, threads=8)
    summary = summarize(requests, result, skip_before_s=warmup_s, rate=rate)["POST /v1/events"]
    measured = [i for i in range(len(requests)) if i / rate >= warmup_s]
    quarter = len(measured) // 4
    first = [result.latency_s[i] * 1000 for i in measured[:quarter]]
    last = [result.latency_s[i] * 1000 for i in measured[-quarter:]]
    summary["p50_first_quarter_ms"], summary["p50_last_quarter_ms"] = percentile(first, 50), percentile(last, 50)
    summary["warmup_errors"] = sum(1 for i in range(len(requests)) if i / rate < warmup_s and not 200 <= result.status[i] < 300)
    return summary


def wrk_run(base_url: str, path: str, seconds: float, script: str | None) -> dict[str, Any]:
    args = ["wrk", "-t2", "-c32", f"-d{seconds:g}s", "--latency"]
    if script:
        args += ["-s", script]
    out = subprocess.run([*args, base_url + path], capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"requests_per_s": float(rps.group(1)) if rps else float("nan"),
            "errors": (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, errors.groups())) if errors else 0)}


def wait_for_the_learner(stack: Stack, kafka: KafkaConfig, timeout_s: float = 120.0) -> None:
    """Until the bandit learner has read the events topic to its end: a run must not pay for
    folding the records of the run before it (it took CPU from whichever side went second)."""
    import httpx
    from kafka import TopicPartition

    from streamrec.runtime.kafka import end_offsets, new_consumer

    consumer = new_consumer(kafka, client_id="bench-ingest-lag")
    try:
        topic = kafka.topics.events
        ends = end_offsets(consumer, [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])])
    finally:
        consumer.close()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reply = httpx.get(f"{stack.base_url}/v1/learner", headers={"authorization": f"Bearer {TEST_ADMIN_TOKEN}"}, timeout=10)
        offsets = reply.json().get("offsets", {}) if reply.status_code == 200 else {}
        if all(offsets.get(f"{tp.topic}:{tp.partition}", 0) >= end for tp, end in ends.items()):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the bandit learner did not catch up with {topic} within {timeout_s:g} s")


def alternated_pair(stack: Stack, kafka: KafkaConfig, index: int, sides: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Pair ``index``'s runs: each side's result by name, the sides in the given order in even pairs
    and reversed in odd ones (a pair's second run meets a longer topic), each run started once the
    learner has caught up (``wait_for_the_learner``)."""
    results: dict[str, Any] = {}
    for name in (list(sides) if index % 2 == 0 else list(reversed(sides))):
        wait_for_the_learner(stack, kafka)
        results[name] = sides[name]()
    return results


def saturation_pairs(stack: Stack, pairs: int, seconds: float) -> list[dict[str, Any]]:
    """wrk on healthz and on single events, ``pairs`` times (interleaved: drift hits both sides),
    as ``alternated_pair`` runs them."""
    ts = datetime.now(timezone.utc).isoformat()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(SINGLE_EVENT_LUA % (TEST_TOKEN, ts))
        script = f.name
    try:
        runs = []
        kafka = KafkaConfig(bootstrap_servers=stack.bootstrap)
        for p in range(pairs):
            pair = alternated_pair(stack, kafka, p, {
                "healthz": lambda: wrk_run(stack.base_url, "/v1/events/healthz", seconds, None),
                "single": lambda: wrk_run(stack.base_url, "/v1/events", seconds, script),
            })
            health, single = pair["healthz"], pair["single"]
            runs.append({"healthz": health, "single": single, "ratio": ratio(single["requests_per_s"], health["requests_per_s"])})
            print(f"  saturated: healthz {health['requests_per_s']:,.0f}/s, single events {single['requests_per_s']:,.0f}/s "
                  f"({single['errors']} errors)", flush=True)
        return runs
    finally:
        os.unlink(script)


def fresh_copies(events: list[dict[str, Any]], count: int, start: int) -> list[dict[str, Any]]:
    """``count`` events from ``start`` on (round the slice), each with a new event_id: the pairs
    may need more events than the slice holds, and none may be a duplicate of an earlier one."""
    return [{**events[(start + i) % len(events)], "event_id": str(uuid.uuid4())} for i in range(count)]


def raw_batch_throughput(kafka: KafkaConfig, events: list[dict[str, Any]]) -> float:
    """Events per second of a raw producer: built with the collector's producer options, writing
    the collector's records (same key, value and headers) to the same events topic, so that the
    stack's consumers of that topic (the bandit learner) work during both sides of a pair."""
    from features.events import event_to_json, parse_event
    from serving.collector.publisher import event_producer_options, event_record
    from streamrec.runtime.kafka import new_producer

    records = []
    for event in events:
        parsed = parse_event(event)
        records.append(event_record(kafka.topics.events, parsed, event_to_json(parsed)))
    producer = new_producer(kafka, client_id="bench-raw-producer", **event_producer_options(kafka, linger_ms=1))
    # Connected and knowing the topic's partitions before the clock, as the collector's long-lived
    # producer is: otherwise the first pair's raw side also timed the topic's creation.
    producer.partitions_for(kafka.topics.events)
    started = time.perf_counter()
    futures = [producer.send(r.topic, key=r.key, value=r.value, headers=list(r.headers)) for r in records]
    producer.flush()
    for f in futures:
        f.get(timeout=30)
    elapsed = time.perf_counter() - started
    producer.close()
    return len(records) / elapsed


def collector_batch_throughput(stack: Stack, events: list[dict[str, Any]], batch_size: int, lanes: int) -> tuple[float, int]:
    """Events per second through the collector's batch path (`streamrec replay`'s client), and how
    many were not accepted (then the rate is NaN)."""
    from streamrec.replay import replay_events

    summary = asyncio.run(replay_events(events, stack.base_url, TEST_TOKEN, batch_size=batch_size, concurrency=lanes,
                                        show_progress=False))
    rate = len(events) / summary.elapsed_s if summary.accepted == len(events) else float("nan")
    return rate, len(events) - summary.accepted


def batch_pairs(stack: Stack, pairs: int, per_run: int, batch_size: int, lanes: int) -> list[dict[str, Any]]:
    """The raw producer and the collector's batch path on fresh Taobao events each run, as
    ``alternated_pair`` runs them."""
    from streamrec.replay import read_taobao_rows, taobao_events

    events = taobao_events(read_taobao_rows(Settings().data.taobao_csv))
    kafka = KafkaConfig(bootstrap_servers=stack.bootstrap)
    runs = []
    for p in range(pairs):
        raw_events = fresh_copies(events, per_run, 2 * p * per_run)
        col_events = fresh_copies(events, per_run, (2 * p + 1) * per_run)
        pair = alternated_pair(stack, kafka, p, {
            "raw": lambda: raw_batch_throughput(kafka, raw_events),
            "collector": lambda: collector_batch_throughput(stack, col_events, batch_size, lanes),
        })
        raw, (collector, not_accepted) = pair["raw"], pair["collector"]
        runs.append({"raw": raw, "collector": collector, "ratio": ratio(collector, raw), "not_accepted": not_accepted})
        print(f"  batches: raw {raw:,.0f}/s, collector {collector:,.0f}/s", flush=True)
    return runs


def check_targets(verdict: Verdict, single: dict[str, Any], saturated: list[dict[str, Any]], batches: list[dict[str, Any]]) -> None:
    verdict.check("single events p99 at the open-loop rate", single["p99_ms"], "<", P99_TARGET_MS, "ms")
    verdict.check("queue growth: p50 last quarter / first quarter",
                  ratio(single["p50_last_quarter_ms"], single["p50_first_quarter_ms"]), "<=", QUEUE_GROWTH_TARGET, "x")
    verdict.check("single events: error responses (warm-up included)", single["errors"] + single["warmup_errors"], "==", 0)
    # Without wrk nothing saturated was measured: both figures are then MISSED (not measured).
    verdict.check("saturated single events / healthz (median pair)",
                  statistics.median(r["ratio"] for r in saturated) if saturated else None, ">=", RATIO_TARGET, "x")
    verdict.check("saturated single events: error responses",
                  sum(r["single"]["errors"] for r in saturated) if saturated else None, "==", 0)
    verdict.check("batch path / raw producer (median pair)", statistics.median(r["ratio"] for r in batches), ">=", RATIO_TARGET, "x")
    verdict.check("batch path: events not accepted", sum(r["not_accepted"] for r in batches), "==", 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=100.0, help="open-loop single events per second")
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds of the open-loop run")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds at the same rate before measuring")
    parser.add_argument("--pairs", type=int, default=3, help="interleaved pairs of the saturated ratio (median reported)")
    parser.add_argument("--batch-pairs", type=int, default=5, help="interleaved pairs of the batch ratio (median reported)")
    parser.add_argument("--saturation-s", type=float, default=10.0, help="seconds of each wrk run")
    parser.add_argument("--batch-events", type=int, default=30_000,
                        help="events of each batch-throughput run (shorter runs: the raw side lasted <1 s and swung 10-20k/s)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--lanes", type=int, default=4, help="concurrent batch requests")
    add_verdict_argument(parser)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (make system-deps installs it): the saturated figures are not measured")
    load_before = os.getloadavg()
    state = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    stack = start_stack(state / "state")
    try:
        print(f"machine: {os.cpu_count()} CPUs, load {load_before}; stack: streamrec up with deploy/local/serve.yaml "
              f"at {stack.base_url}", flush=True)
        print(f"  open loop: {args.rate:g} single events/s for {args.warmup:g}+{args.duration:g} s ...", flush=True)
        single = open_loop(stack, args.rate, args.duration, args.warmup)
        saturated = saturation_pairs(stack, args.pairs, args.saturation_s) if shutil.which("wrk") else []
        batches = batch_pairs(stack, args.batch_pairs, args.batch_events, args.batch_size, args.lanes)
    finally:
        run_streamrec(stack.env, "down", timeout_s=600)
        shutil.rmtree(state, ignore_errors=True)
    print(f"\nsingle events, open loop at {args.rate:g}/s (ms from the scheduled send): p50 {single['p50_ms']:.2f}, "
          f"p95 {single['p95_ms']:.2f}, p99 {single['p99_ms']:.2f}, max {single['max_ms']:.1f}; p50 first/last quarter "
          f"{single['p50_first_quarter_ms']:.2f} / {single['p50_last_quarter_ms']:.2f}; statuses {single['statuses']}")
    for r in saturated:
        print(f"saturated pair: healthz {r['healthz']['requests_per_s']:,.0f}/s, single events {r['single']['requests_per_s']:,.0f}/s, ratio {r['ratio']:.2f}x")
    for r in batches:
        print(f"batch pair: raw producer {r['raw']:,.0f}/s, collector {r['collector']:,.0f}/s, ratio {r['ratio']:.2f}x")
    print(f"load average after: {os.getloadavg()}\n")
    verdict = Verdict.from_args(args)
    check_targets(verdict, single, saturated, batches)
    return verdict.report()


if __name__ == "__main__":
    sys.exit(main())
