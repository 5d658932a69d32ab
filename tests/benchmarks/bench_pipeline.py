"""Feature pipeline benchmark: throughput, freshness and Feast online reads (not collected by pytest).

    make bench-pipeline      (or: .venv/bin/python tests/benchmarks/bench_pipeline.py [--users N])

On a private embedded broker, with private state, Feast repository and (for the Redis part) a
private ``redis-server``, it measures in one run:

1. throughput (events/s) over the real Taobao slice, ``--repeats`` interleaved pairs (each
   pipeline on a fresh consumer group, state and Feast project; the median pair is the result,
   every pair is printed: this VM's speed drifts by ~30% between runs): a raw kafka-python
   consume of the topic in as many processes as the pipeline uses (2, each assigned half the
   partitions, connected before the timer starts as the pipeline's reader is, read to the end
   offsets, ``json.loads`` each value: the least a consumer must do) against one ``FeaturePipeline.run_once`` end to end (read, Beam run on the
   in-process FnApiRunner, event lake, Feast offline files and online push, state checkpoint,
   offset commit), the ratio (target >= 0.25x) and the pipeline's time per stage; the pipeline
   is started first (Feast apply, the Beam graph built and the Kafka reader process started:
   ``prepare``, as ``--follow`` does);
2. freshness: ``pipeline run --follow`` in a subprocess on that state; single new events are
   produced at random phases of its poll loop and the Feast online store is polled until each is
   visible; produce -> visible p50/p95 (target p95 < 5 s);
3. Feast online read of one entity (``get_online_features``, every feature of ``user_features``)
   p50/p99 on SQLite and on Redis, against a raw redis-py ``HGETALL`` of the same Redis key, the
   reads of one store interleaved call by call (target Redis p99 < 5 ms and <= 2x raw at p99, for
   ``OnlineReader``: what serving reads with).

Prints met/MISSED per target and exits 1 when one is missed (``--no-verdict``: exits 0).
"""

import argparse
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
sys.path[:0] = [str(TESTS), str(TESTS / "pipelines"), str(REPO)]

from pipeline_support import (  # noqa: E402  (tests/pipelines/pipeline_support.py)
    ev,
    offline_latest,
    pipeline_settings,
    produce,
    subprocess_env,
    taobao_subset,
    write_config,
)
from support import free_port, start_broker  # noqa: E402  (tests/support.py)

from features.repo import apply_feature_repo  # noqa: E402
from pipelines.feast_sink import feature_frame, push_online  # noqa: E402
from pipelines.runner import FeaturePipeline  # noqa: E402
from streamrec.runtime.config import Settings  # noqa: E402
from verdict import Verdict, add_verdict_argument, ratio as safe_ratio  # noqa: E402  (tests/benchmarks/verdict.py)

RATIO_TARGET, FRESH_P95_TARGET_S, READ_P99_TARGET_MS, READ_VS_RAW_TARGET = 0.25, 5.0, 5.0, 2.0

# The pipeline's on_step marks (each stage runs up to the next mark); unknown marks print as named.
STAGE_LABELS = {
    "start": "batch start",
    "tombstones": "deletions + plan offsets + load state",
    "beam": "read records (kafka-python; a large batch: 0, read during the Beam run)",
    "select_state": "select state subset (a state passed whole: 0)",
    "compute": "Beam run (FnApiRunner, in process; a large batch's records read and partly parsed alongside in the reader process)",
    "dlq": "dead letters",
    "features": "event lake, Feast offline files and online push (three threads at once)",
    "state": "state checkpoint",
    "commit": "offset commit",
    "lag": "lag check",
}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN (not measured) for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def user_feature_refs() -> list[str]:
    from features.views import ALL_FEATURE_VIEWS

    view = next(v for v in ALL_FEATURE_VIEWS if v.name == "user_features")
    return [f"user_features:{f.name}" for f in view.features]


# --- 1. throughput ------------------------------------------------------------------------------


RAW_PROCESSES = 2  # as many as the pipeline uses: its driver (Beam run) and its Kafka reader process


def _raw_consume_share(settings: Settings, partitions: list[int], ready: Any, start: Any, results: Any) -> None:
    """One process of the raw consume: its consumer connected and positioned before the start
    (as the pipeline's reader is, in ``prepare``), then read to the end offsets, ``json.loads`` each."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**settings.kafka.client_options(), enable_auto_commit=False, group_id=None)
    topic = settings.kafka.topics.events
    assigned = [TopicPartition(topic, p) for p in partitions]
    consumer.assign(assigned)
    consumer.seek_to_beginning(*assigned)
    ends = consumer.end_offsets(assigned)
    remaining = {tp for tp in assigned if ends[tp] > 0}
    ready.put(True)
    start.wait()
    count = 0
    while remaining:
        for tp, records in consumer.poll(timeout_ms=500, max_records=5000).items():
            for record in records:
                json.loads(record.value)
                count += 1
            if records and records[-1].offset + 1 >= ends[tp]:
                remaining.discard(tp)
    results.put((count, time.monotonic()))  # CLOCK_MONOTONIC: one clock for every process here
    consumer.close()


def raw_consume(settings: Settings) -> tuple[int, float]:
    """Records read and seconds for a plain consume of the whole topic by ``RAW_PROCESSES``
    processes, each on its share of the partitions: from the start signal (every consumer connected
    and positioned, as the pipeline's reader is before its timer) until the last one is done."""
    import multiprocessing

    from kafka import KafkaConsumer

    probe = KafkaConsumer(**settings.kafka.client_options(), enable_auto_commit=False, group_id=None)
    partitions = sorted(probe.partitions_for_topic(settings.kafka.topics.events))
    probe.close()
    context = multiprocessing.get_context("spawn")
    ready, results, start = context.Queue(), context.Queue(), context.Event()
    shares = [partitions[i::RAW_PROCESSES] for i in range(RAW_PROCESSES)]
    workers = [context.Process(target=_raw_consume_share, args=(settings, share, ready, start, results)) for share in shares]
    for worker in workers:
        worker.start()
    for _ in workers:
        ready.get(timeout=120)
    started = time.monotonic()
    start.set()
    done = [results.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    return sum(count for count, _ in done), max(end for _, end in done) - started


def pipeline_batch(pipeline: FeaturePipeline) -> tuple[Any, float, dict[str, float]]:
    """One ``run_once`` over everything produced: summary, seconds, seconds per stage."""
    started = time.perf_counter()
    marks: list[tuple[str, float]] = [("start", started)]
    pipeline.on_step = lambda step: marks.append((step, time.perf_counter()))
    summary = pipeline.run_once()
    ended = time.perf_counter()
    pipeline.on_step = lambda step: None
    stages = {name: end - at for (name, at), (_, end) in zip(marks, [*marks[1:], ("end", ended)])}
    return summary, ended - started, stages


def throughput_pairs(settings: Settings, workdir: Path, repeats: int) -> list[dict[str, Any]]:
    """``repeats`` interleaved (raw consume, pipeline batch) pairs; each pipeline is fresh."""
    pairs = []
    for i in range(repeats):
        raw = raw_consume(settings)
        run_settings = settings if i == 0 else pipeline_settings(settings, workdir / f"state-{i}", new_topics=False)
        pipeline = FeaturePipeline(run_settings)  # Feast apply: start-up, not part of a batch
        prepare_s = pipeline.prepare()  # graph built, reader started: start-up too, as in --follow
        batch = pipeline_batch(pipeline)
        pairs.append({"raw": raw, "batch": batch, "prepare_s": prepare_s, "pipeline": pipeline})
        print(f"pair {i + 1}: raw consume {raw[1]:.2f}s, pipeline batch {batch[0].records:,} records in "
              f"{batch[1]:.2f}s, ratio {ratio(raw, batch):.3f}x", flush=True)
        if i:
            pipeline.close()
    return pairs


def ratio(raw: tuple[int, float], batch: tuple[Any, float, dict[str, float]]) -> float:
    return (batch[0].records / batch[1]) / (raw[0] / raw[1])


def median_pair(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """The pair of median ratio: the throughput result (the VM's speed drifts between pairs)."""
    return sorted(pairs, key=lambda pair: ratio(pair["raw"], pair["batch"]))[len(pairs) // 2]


# --- 2. freshness -------------------------------------------------------------------------------


def small_batches(pipeline: FeaturePipeline, settings: Settings, head_ts: int, n: int = 3) -> list[tuple[float, dict[str, float]]]:
    """Seconds and stages of single-event batches on the full state: what one --follow step costs."""
    at = datetime.fromtimestamp(head_ts, tz=timezone.utc).isoformat().replace("+00:00", "Z")
    out = []
    for i in range(n):
        produce(settings, [ev("view", f"bench-small-{i}", 0, item_id="bench-item", category_id="bench-cat", ts=at)])
        summary, seconds, stages = pipeline_batch(pipeline)
        assert summary.records == 1, summary.as_text()
        out.append((seconds, stages))
    return out


def online_last_seen(store: Any, user_id: str) -> Any:
    return store.get_online_features(
        features=["user_features:last_seen_unix"], entity_rows=[{"user_id": user_id}]
    ).to_dict()["last_seen_unix"][0]


def wait_visible(store: Any, user_id: str, expected: int, timeout_s: float, proc: subprocess.Popen, log: Path) -> float:
    """Seconds until ``user_id``'s last-seen reads ``expected`` online (polling every 20 ms)."""
    started = time.perf_counter()
    while online_last_seen(store, user_id) != expected:
        if proc.poll() is not None:
            raise RuntimeError("follow process exited:\n" + log.read_text()[-3000:])
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError(f"{user_id} not visible online after {timeout_s}s")
        time.sleep(0.02)
    return time.perf_counter() - started


def freshness(settings: Settings, workdir: Path, head_ts: int, samples: int) -> list[float]:
    """Produce -> visible-online latencies of single events against ``pipeline run --follow``."""
    from kafka import KafkaProducer

    from features.events import event_to_json, parse_event

    config = write_config(settings, workdir / "streamrec.yaml")
    log = workdir / "follow.log"
    store = apply_feature_repo(settings)
    producer = KafkaProducer(**settings.kafka.client_options(), acks="all", linger_ms=0)
    at = datetime.fromtimestamp(head_ts, tz=timezone.utc).isoformat().replace("+00:00", "Z")

    def send(user_id: str) -> float:
        # At the head of event time: the watermark does not move, so the batch is one event's work.
        event = parse_event(ev("view", user_id, 0, item_id="bench-item", category_id="bench-cat", ts=at))
        sent = time.perf_counter()
        producer.send(settings.kafka.topics.events, key=user_id.encode(), value=event_to_json(event)).get(timeout=30)
        return sent

    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "pipeline", "run", "--follow", "-v"],
            env=subprocess_env(config), cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
        )
    latencies: list[float] = []
    try:
        send("bench-warm")
        wait_visible(store, "bench-warm", head_ts, 300, proc, log)  # start-up: imports, Feast, first batch
        rng = random.Random(7)
        for i in range(samples):
            # A random phase of the poll loop, so the samples cover the whole poll interval.
            time.sleep(rng.uniform(0, settings.pipeline.poll_interval_s))
            user_id = f"bench-fresh-{i}"
            sent = send(user_id)
            wait_visible(store, user_id, head_ts, 120, proc, log)
            latencies.append(time.perf_counter() - sent)
    finally:
        producer.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return latencies


# --- 3. Feast online reads -------------------------------------------------------------------


def interleaved_calls(calls: dict[str, Callable[[], Any]], n: int, warmup: int = 50) -> dict[str, list[float]]:
    """Milliseconds of each of ``n`` calls of each of ``calls`` (after ``warmup`` untimed rounds),
    interleaved: one call of each per round, each in turn first, so that the ratios compare reads
    made under the same conditions (the machine's speed drifts within a run)."""
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    out: dict[str, list[float]] = {name: [] for name in names}
    for i in range(n):
        for name in names[i % len(names):] + names[:i % len(names)]:
            started = time.perf_counter()
            calls[name]()
            out[name].append((time.perf_counter() - started) * 1000)
    return out


def feast_read(store: Any, user_id: str, refs: list[str]) -> Callable[[], Any]:
    def call() -> Any:
        row = store.get_online_features(features=refs, entity_rows=[{"user_id": user_id}]).to_dict()
        assert row["last_seen_unix"][0] is not None, f"{user_id} has no online features"
        return row

    return call


def start_redis(workdir: Path) -> tuple[subprocess.Popen, int]:
    import socket

    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not installed (make system-deps)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.1)


def redis_settings(settings: Settings, workdir: Path, port: int) -> Settings:
    dumped = settings.model_dump(mode="json")
    dumped["collector"]["auth_token"] = settings.collector.auth_token.get_secret_value()
    dumped["feast"] = {
        **dumped["feast"],
        "repo_dir": str(workdir / "feast-redis"),
        "online_store": "redis",
        "redis_connection_string": f"127.0.0.1:{port}",
    }
    return Settings(**dumped)


def redis_key(settings: Settings, user_id: str) -> bytes:
    """The Redis key Feast's Redis online store keeps a user's features under."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from features.repo import repo_config

    entity = EntityKey(join_keys=["user_id"], entity_values=[Value(string_val=user_id)])
    config = repo_config(settings)
    return serialize_entity_key(entity, entity_key_serialization_version=config.entity_key_serialization_version) + (
        config.project.encode("utf-8")
    )


def reader_read(store: Any, user_id: str, refs: list[str]) -> Callable[[], Any]:
    from features.online import OnlineReader

    reader = OnlineReader(store, refs)

    def call() -> Any:
        row = reader.read(user_id)
        assert row.get("last_seen_unix") is not None, f"{user_id} has no online features"
        return row

    return call


def online_reads(settings: Settings, workdir: Path, user_id: str, n: int) -> dict[str, list[float]]:
    """Latencies (ms) of one-entity reads on SQLite and Redis, through Feast's ``get_online_features``
    and through ``OnlineReader`` (what serving reads with), and a raw redis-py HGETALL of the key."""
    import redis

    refs = user_feature_refs()
    on_sqlite = apply_feature_repo(settings)
    results = interleaved_calls({"feast_sqlite": feast_read(on_sqlite, user_id, refs),
                                 "reader_sqlite": reader_read(on_sqlite, user_id, refs)}, n)
    proc, port = start_redis(workdir)
    try:
        on_redis = redis_settings(settings, workdir, port)
        store = apply_feature_repo(on_redis)
        # The same rows the pipeline served on SQLite (latest per user), pushed to Redis.
        latest = offline_latest(settings, "user_features").reset_index()
        rows = latest.to_dict("records")
        push_online(store, "user_features", feature_frame("user_features", rows, time.time()))
        client = redis.Redis(host="127.0.0.1", port=port)
        key = redis_key(on_redis, user_id)
        assert client.hgetall(key), "the computed Redis key holds nothing: key format mismatch"
        results.update(interleaved_calls({"feast_redis": feast_read(store, user_id, refs),
                                          "reader_redis": reader_read(store, user_id, refs),
                                          "raw_redis_hgetall": lambda: client.hgetall(key)}, n))
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return results


# --- report --------------------------------------------------------------------------------


def print_report(
    events: int, pairs: list[dict[str, Any]],
    small: list[tuple[float, dict[str, float]]], fresh: list[float], reads: dict[str, list[float]],
    poll_interval_s: float,
) -> None:
    median = median_pair(pairs)
    raw_count, raw_s = median["raw"]
    summary, batch_s, stages = median["batch"]
    raw_rate, pipe_rate = raw_count / raw_s, summary.records / batch_s
    print(f"\n## Throughput ({events:,} Taobao events, one micro-batch; median of {len(pairs)} interleaved pairs)")
    print("| pair | raw consume s | pipeline batch s | ratio |\n|---|---|---|---|")
    for i, pair in enumerate(pairs, start=1):
        print(f"| {i} | {pair['raw'][1]:.2f} | {pair['batch'][1]:.2f} | {ratio(pair['raw'], pair['batch']):.3f}x |")
    print("\n| | events | seconds | events/s |\n|---|---|---|---|")
    print(f"| raw kafka-python consume + json.loads | {raw_count:,} | {raw_s:.2f} | {raw_rate:,.0f} |")
    print(f"| pipeline run_once end to end | {summary.records:,} | {batch_s:.2f} | {pipe_rate:,.0f} |")
    print(f"| **ratio (median pair)** | | | **{pipe_rate / raw_rate:.3f}x** (target >= {RATIO_TARGET}x) |")
    print(f"\nStart-up before the batch (not timed in it): building and translating the Beam graph and "
          f"starting the Kafka reader process (`FeaturePipeline.prepare`, what `--follow` does at start) "
          f"{median['prepare_s']:.2f} s.")
    print("\n| pipeline stage (median pair) | seconds | share |\n|---|---|---|")
    for stage, seconds in stages.items():
        print(f"| {STAGE_LABELS.get(stage, stage)} | {seconds:.2f} | {seconds / batch_s:.0%} |")
    print(f"\n  {summary.as_text()}")
    print("\n## One-event batches on that state (what a --follow step costs), seconds")
    print("| stage | " + " | ".join(f"batch {i + 1}" for i in range(len(small))) + " |")
    print("|---|" + "---|" * len(small))
    for stage in small[0][1]:
        print(f"| {STAGE_LABELS.get(stage, stage)} | " + " | ".join(f"{s.get(stage, 0):.3f}" for _, s in small) + " |")
    print("| **total** | " + " | ".join(f"**{t:.3f}**" for t, _ in small) + " |")
    print(f"\n## Freshness: produce -> visible in Feast online (SQLite), --follow, poll interval {poll_interval_s}s")
    print(f"| samples | p50 s | p95 s | max s |\n|---|---|---|---|\n| {len(fresh)} | "
          f"{percentile(fresh, 50):.2f} | {percentile(fresh, 95):.2f} | {max(fresh):.2f} | (target p95 < {FRESH_P95_TARGET_S:g} s)")
    print("\n## Online read of one entity (every user_features feature; the reads of each store interleaved call by call)")
    print("| read | calls | p50 ms | p99 ms |\n|---|---|---|---|")
    for name, values in reads.items():
        print(f"| {name} | {len(values)} | {percentile(values, 50):.2f} | {percentile(values, 99):.2f} |")
    for name in ("feast_redis", "reader_redis"):
        vs_raw = {q: percentile(reads[name], q) / percentile(reads["raw_redis_hgetall"], q) for q in (50, 99)}
        print(f"| **{name} / raw HGETALL** | | **{vs_raw[50]:.1f}x** | **{vs_raw[99]:.1f}x** |")
    print("(reader_* is features.online.OnlineReader, what serving reads with; feast_* is get_online_features;\n"
          f" the targets, p99 < {READ_P99_TARGET_MS:g} ms and <= {READ_VS_RAW_TARGET:g}x raw, are on reader_redis)")


def check_targets(verdict: Verdict, pairs: list[dict[str, Any]], fresh: list[float], reads: dict[str, list[float]]) -> None:
    """The docstring's targets (BENCHMARKS.md reports against the same ones)."""
    median = median_pair(pairs)
    verdict.check("throughput pipeline / raw consume (median pair)", ratio(median["raw"], median["batch"]), ">=",
                  RATIO_TARGET, "x", note="docstring")
    verdict.check("freshness p95, produce -> online", percentile(fresh, 95), "<", FRESH_P95_TARGET_S, "s", note="docstring")
    reader_p99 = percentile(reads["reader_redis"], 99)
    verdict.check("OnlineReader on Redis p99", reader_p99, "<", READ_P99_TARGET_MS, "ms", note="docstring")
    verdict.check("OnlineReader on Redis p99 / raw HGETALL p99", safe_ratio(reader_p99, percentile(reads["raw_redis_hgetall"], 99)),
                  "<=", READ_VS_RAW_TARGET, "x", note="docstring")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=None, help="first N users of the slice only (default: all)")
    parser.add_argument("--samples", type=int, default=30, help="freshness samples (>= 20 for a p95)")
    parser.add_argument("--reads", type=int, default=2000, help="timed online reads per store")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved throughput pairs (the median is reported)")
    add_verdict_argument(parser)
    args = parser.parse_args()
    verdict = Verdict.from_args(args)
    workdir = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    handle = start_broker(workdir / "broker")
    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)", flush=True)
    try:
        settings = pipeline_settings(handle.settings, workdir / "state")
        events = taobao_subset(None, users=args.users)
        produce(settings, events)
        pairs = throughput_pairs(settings, workdir, max(1, args.repeats))
        pipeline = pairs[0]["pipeline"]  # the one on ``settings``: the rest of the run uses its state
        head_ts = int(max(datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp() for e in events))
        small = small_batches(pipeline, settings, head_ts)
        pipeline.close()
        fresh = freshness(settings, workdir, head_ts, args.samples)
        print(f"freshness: {[round(x, 2) for x in fresh]}", flush=True)
        active = max(statistics.multimode(e["user_id"] for e in events))
        reads = online_reads(settings, workdir, active, args.reads)
        print_report(len(events), pairs, small, fresh, reads, settings.pipeline.poll_interval_s)
        print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
        check_targets(verdict, pairs, fresh, reads)
    finally:
        handle.broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return verdict.report()


if __name__ == "__main__":
    sys.exit(main())
