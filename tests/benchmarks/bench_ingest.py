"""Ingest benchmark: the collector against a raw kafka-python producer, in the same run.

    make bench-ingest        (or: .venv/bin/python tests/benchmarks/bench_ingest.py --events 30000)

Measures, on a private embedded broker and a private local Ray/Serve:
  * batch throughput (events/s): raw producer (acks=all, idempotent) vs collector (JSON batches
    over HTTP, validated, acks=all), and their ratio (target: collector >= 0.5x raw);
  * single-event latency p50/p99 at a moderate open-loop rate: one raw send+ack per event vs one
    HTTP POST per event (target: collector p99 < 20 ms).
"""


import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for the `support` helpers

from support import TEST_TOKEN, deploy_collector, make_settings, free_port  # noqa: E402
from features.events import parse_event, event_to_json  # noqa: E402
from streamrec.local_stack import EmbeddedBroker  # noqa: E402
from streamrec.replay import read_taobao_rows, replay_events, taobao_events  # noqa: E402
from streamrec.topics import ensure_topics  # noqa: E402


def percentile(values: list[float], q: float) -> float:
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


async def collector_single_latencies(url: str, events: list[dict], rate: float) -> list[float]:
    latencies: list[float] = []
    headers = {"authorization": f"Bearer {TEST_TOKEN}"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=httpx.Timeout(30, pool=None), limits=limits) as client:

        async def one(i: int, event: dict, start: float) -> None:
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))  # open loop
            t0 = time.perf_counter()
            reply = await client.post("/v1/events", json=event)
            latencies.append((time.perf_counter() - t0) * 1000)
            assert reply.status_code == 200, reply.text

        start = time.perf_counter()
        await asyncio.gather(*(one(i, e, start) for i, e in enumerate(events)))
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=30_000, help="events for the throughput runs")
    parser.add_argument("--single", type=int, default=2_000, help="events for the single-event latency runs")
    parser.add_argument("--rate", type=float, default=100.0, help="open-loop rate of single events (per second)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()

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
        summary = asyncio.run(
            replay_events(batch_events, handle.url, TEST_TOKEN, batch_size=args.batch_size, concurrency=args.concurrency, show_progress=False)
        )
        assert summary.accepted == len(batch_events), summary.as_text()
        collector_tput = len(batch_events) / summary.elapsed_s
        print(f"collector: {collector_tput:,.0f} events/s", flush=True)

        warm = single_events[:50]
        raw_single_latencies(bootstrap, "bench.raw", warm, args.rate)
        asyncio.run(collector_single_latencies(handle.url, warm, args.rate))
        asyncio.run(collector_single_latencies(noop_url, warm, args.rate))
        noop_lat = asyncio.run(collector_single_latencies(noop_url, single_events, args.rate))
        print(f"no-op Serve p99 {percentile(noop_lat, 99):.1f} ms", flush=True)
        raw_lat = raw_single_latencies(bootstrap, "bench.raw", single_events, args.rate)
        print(f"raw single p99 {percentile(raw_lat, 99):.1f} ms", flush=True)
        col_lat = asyncio.run(collector_single_latencies(handle.url, single_events, args.rate))

        print(f"\nbatch throughput ({len(batch_events):,} events, batches of {args.batch_size}, {args.concurrency} concurrent lanes)")
        print(f"  raw kafka-python producer : {raw_tput:10,.0f} events/s")
        print(f"  collector (HTTP + validate): {collector_tput:10,.0f} events/s")
        print(f"  ratio collector/raw        : {collector_tput / raw_tput:10.2f}x   (target >= 0.50x)")
        print(f"\nsingle-event latency ({len(single_events):,} events, open loop at {args.rate:.0f}/s), ms")
        for name, lat in (("raw send+ack", raw_lat), ("no-op Serve POST", noop_lat), ("collector POST", col_lat)):
            print(
                f"  {name:17s} p50 {percentile(lat, 50):6.2f}  p99 {percentile(lat, 99):6.2f}  "
                f"mean {statistics.fmean(lat):6.2f}  max {max(lat):7.2f}"
            )
        print(f"  collector p50 / no-op p50   : {percentile(col_lat, 50) / percentile(noop_lat, 50):.2f}x")
        print(f"  collector p99 target < 20 ms: {'met' if percentile(col_lat, 99) < 20 else 'NOT met'}")
    finally:
        serve.shutdown()
        ray.shutdown()
        broker.stop()


if __name__ == "__main__":
    main()
