"""Ingest benchmark: the collector against a raw kafka-python producer, in the same run.

    make bench-ingest        (or: .venv/bin/python tests/benchmarks/bench_ingest.py --events 30000)

Measures, on a private embedded broker and a private local Ray/Serve:
  * batch throughput (events/s): raw producer (acks=all, idempotent) vs collector (JSON batches
    over HTTP, validated, acks=all), and their ratio (target: collector >= 0.5x raw);
  * single-event latency p50/p99 at a moderate open-loop rate: one raw send+ack per event vs one
    HTTP POST per event (target: collector p99 < 20 ms);
  * error responses: any reply but 200 (for batches: 503s, retried; 207/422 replies leave events
    not accepted) and any transport error, warm-up included, counted rather than raised so the run
    keeps measuring (target: 0 for the collector and for the no-op baseline; 0 events not accepted).

Prints met/MISSED per target and exits 1 when one is missed (``--no-verdict``: exits 0).
"""


import argparse
import asyncio
import math
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for the `support` helpers

from support import TEST_TOKEN, deploy_collector, make_settings, free_port  # noqa: E402
from features.events import parse_event, event_to_json  # noqa: E402
from streamrec.local_stack import EmbeddedBroker  # noqa: E402
from streamrec.replay import read_taobao_rows, replay_events, taobao_events  # noqa: E402
from streamrec.topics import ensure_topics  # noqa: E402
from verdict import Verdict, add_verdict_argument, ratio  # noqa: E402  (tests/benchmarks/verdict.py)

RATIO_TARGET, P99_TARGET_MS = 0.5, 20.0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN (not measured) for no values, e.g. when every request failed."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def raw_batch_throughput(bootstrap: str, topic: str, events: list[dict]) -> float:
    from kafka import KafkaProducer

    wire = [(e["user_id"].encode(), event_to_json(parse_event(e))) for e in events]
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=1)
    started = time.perf_counter()
    futures = [producer.send(topic, key=k, value=v) for k, v in wire]
    producer.flush()
    for f in futures:
        f.get(timeout=30)
    elapsed = time.perf_counter() - started
    producer.close()
    return len(wire) / elapsed


def raw_single_latencies(bootstrap: str, topic: str, events: list[dict], rate: float) -> list[float]:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=0)
    latencies = []
    start = time.perf_counter()
    for i, e in enumerate(events):
        wait = start + i / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        t0 = time.perf_counter()
        producer.send(topic, key=e["user_id"].encode(), value=event_to_json(parse_event(e))).get(timeout=30)
        latencies.append((time.perf_counter() - t0) * 1000)
    producer.close()
    return latencies


def deploy_noop(port: int) -> str:
    """A do-nothing FastAPI endpoint on the same Serve: the floor that HTTP + Serve cost."""
    from fastapi import FastAPI, Request
    from ray import serve

    noop_api = FastAPI()

    @serve.deployment(name="NoOp")
    @serve.ingress(noop_api)
    class NoOp:
        @noop_api.post("/v1/events")
        async def events(self, request: Request) -> dict:
            await request.body()
            return {"accepted": 1}

    serve.run(NoOp.bind(), name="noop", route_prefix="/noop")
    return f"http://127.0.0.1:{port}/noop"


async def collector_single_latencies(url: str, events: list[dict], rate: float) -> tuple[list[float], Counter[str]]:
    """Milliseconds of each 200 reply, and the other replies and transport errors by kind.

    A failed request is counted, not timed: its latency (a fast 503, a 30 s timeout) says nothing
    about serving, and the error count fails the verdict on its own.
    """
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    headers = {"authorization": f"Bearer {TEST_TOKEN}"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=httpx.Timeout(30, pool=None), limits=limits) as client:

        async def one(i: int, event: dict, start: float) -> None:
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))  # open loop
            t0 = time.perf_counter()
            try:
                reply = await client.post("/v1/events", json=event)
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] += 1
                return
            if reply.status_code != 200:
                errors[f"HTTP {reply.status_code}"] += 1
                return
            latencies.append((time.perf_counter() - t0) * 1000)

        start = time.perf_counter()
        await asyncio.gather(*(one(i, e, start) for i, e in enumerate(events)))
    return latencies, errors


def collector_batches(
    url: str, events: list[dict], args: argparse.Namespace
) -> tuple[float | None, int | None, Counter[str]]:
    """Events/s of the batch replay, events not accepted (both None when the run failed), error replies by kind."""
    try:
        summary = asyncio.run(
            replay_events(events, url, TEST_TOKEN, batch_size=args.batch_size, concurrency=args.concurrency, show_progress=False)
        )
    except (RuntimeError, httpx.HTTPError) as exc:  # replay_events raises on a reply other than 200/207/422/503
        print(f"collector batch run failed: {exc}", flush=True)
        return None, None, Counter({f"batch run failed ({type(exc).__name__})": 1})
    if summary.accepted != len(events):
        print(f"collector batch run: {summary.as_text()}", flush=True)
    errors = Counter({"HTTP 503 (retried)": summary.retries_503} if summary.retries_503 else {})
    return len(events) / summary.elapsed_s, len(events) - summary.accepted, errors


def print_latency(name: str, lat: list[float]) -> None:
    if not lat:
        print(f"  {name:17s} no successful reply")
        return
    print(
        f"  {name:17s} p50 {percentile(lat, 50):6.2f}  p99 {percentile(lat, 99):6.2f}  "
        f"mean {statistics.fmean(lat):6.2f}  max {max(lat):7.2f}"
    )


def check_targets(
    verdict: Verdict, raw_tput: float, collector_tput: float | None, not_accepted: int | None, col_lat: list[float],
    errors: dict[str, Counter[str]],
) -> None:
    """The docstring's targets, and no error reply from either endpoint."""
    verdict.check("batch throughput collector / raw", ratio(collector_tput, raw_tput), ">=", RATIO_TARGET, "x", note="docstring")
    verdict.check("collector single-event p99", percentile(col_lat, 99), "<", P99_TARGET_MS, "ms", note="docstring")
    verdict.check("collector batch: events not accepted", not_accepted, "==", 0)
    for endpoint, kinds in errors.items():
        verdict.check(f"{endpoint}: error responses", sum(kinds.values()), "==", 0,
                      note=", ".join(f"{kind} x{n}" for kind, n in kinds.most_common()) or "non-200 or transport error")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=30_000, help="events for the throughput runs")
    parser.add_argument("--single", type=int, default=2_000, help="events for the single-event latency runs")
    parser.add_argument("--rate", type=float, default=100.0, help="open-loop rate of single events (per second)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=4)
    add_verdict_argument(parser)
    args = parser.parse_args()
    verdict = Verdict.from_args(args)

    import ray
    from ray import serve

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_worker_niceness", "0")  # as the embedded stack (streamrec/local_stack.py)
    state = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    settings = make_settings(state, free_port(), collector={"limits": {"max_batch_events": args.batch_size}})
    broker = EmbeddedBroker(settings)
    broker.start()
    ensure_topics(settings.kafka)
    bootstrap = settings.kafka.bootstrap_servers
    events = taobao_events(read_taobao_rows(settings.data.taobao_csv))
    batch_events = events[: args.events]
    single_events = events[args.events : args.events + args.single]
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        handle = deploy_collector(settings, port, "collector")
        noop_url = deploy_noop(port)

        print(f"machine: {os.cpu_count()} CPUs; events from the Taobao slice; broker tansu (memory)")
        raw_tput = raw_batch_throughput(bootstrap, "bench.raw", batch_events)
        print(f"raw producer: {raw_tput:,.0f} events/s", flush=True)
        collector_tput, not_accepted, collector_errors = collector_batches(handle.url, batch_events, args)
        print(f"collector: {collector_tput or math.nan:,.0f} events/s", flush=True)

        # Warm-up replies are not timed, but their errors count: a user would have seen them.
        noop_errors: Counter[str] = Counter()
        warm = single_events[:50]
        raw_single_latencies(bootstrap, "bench.raw", warm, args.rate)
        collector_errors.update(asyncio.run(collector_single_latencies(handle.url, warm, args.rate))[1])
        noop_errors.update(asyncio.run(collector_single_latencies(noop_url, warm, args.rate))[1])
        noop_lat, errors = asyncio.run(collector_single_latencies(noop_url, single_events, args.rate))
        noop_errors.update(errors)
        print(f"no-op Serve p99 {percentile(noop_lat, 99):.1f} ms", flush=True)
        raw_lat = raw_single_latencies(bootstrap, "bench.raw", single_events, args.rate)
        print(f"raw single p99 {percentile(raw_lat, 99):.1f} ms", flush=True)
        col_lat, errors = asyncio.run(collector_single_latencies(handle.url, single_events, args.rate))
        collector_errors.update(errors)

        print(f"\nbatch throughput ({len(batch_events):,} events, batches of {args.batch_size}, {args.concurrency} concurrent lanes)")
        print(f"  raw kafka-python producer : {raw_tput:10,.0f} events/s")
        print(f"  collector (HTTP + validate): {collector_tput or math.nan:10,.0f} events/s")
        print(f"  ratio collector/raw        : {ratio(collector_tput, raw_tput):10.2f}x")
        print(f"\nsingle-event latency ({len(single_events):,} events, open loop at {args.rate:.0f}/s), ms")
        for name, lat in (("raw send+ack", raw_lat), ("no-op Serve POST", noop_lat), ("collector POST", col_lat)):
            print_latency(name, lat)
        print(f"  collector p50 / no-op p50   : {ratio(percentile(col_lat, 50), percentile(noop_lat, 50)):.2f}x")
        check_targets(verdict, raw_tput, collector_tput, not_accepted, col_lat,
                      {"collector": collector_errors, "no-op Serve": noop_errors})
    finally:
        serve.shutdown()
        ray.shutdown()
        broker.stop()
    return verdict.report()


if __name__ == "__main__":
    sys.exit(main())
