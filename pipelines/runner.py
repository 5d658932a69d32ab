"""The feature pipeline's driver: Kafka offset ranges -> Beam composites -> Feast, lake, DLQ.

One micro-batch (``FeaturePipeline.run_once``):

1. plan ``[committed, end)`` per partition (``kafka_source.plan_offset_ranges``) and read exactly
   those records (at the edge: the driver needs them to pick the state the batch can touch,
   ``state_subset``; a large batch whose state is passed whole is read instead by the Kafka reader
   process while the Beam run goes, ``kafka_reader``);
2. run the Beam pipeline (runner from ``pipeline.beam_args``; locally one graph per process, built
   once and run on each batch's inputs: ``pipelines.batch_run``) on them: parse, drop late events,
   de-duplicate, compute every feature family against that part of the carried state;
3. sinks, in this order: event lake (Parquet, replace by offset range), dead letters (Kafka,
   ``acks=all``), Feast offline files and online push, the state checkpoint;
4. only then commit the stops as the group's offsets.

A crash anywhere before 4 re-runs the batch from the same committed offsets: the lake and offline
files are replaced, the online rows re-upserted, and records already folded into a saved state
are dropped as duplicates (dead letters are at-least-once, keyed by topic/partition/offset).

``--follow`` loops micro-batches, a poll interval apart when there is nothing new.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import shutil
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterable, Iterator

import apache_beam as beam
from apache_beam.pvalue import AsSingleton

from pipelines.accumulators import FeatureSpec
from pipelines.batch_run import BatchInputs, BatchOutputs, CompiledBatch, batch_options, run_built, runs_in_process
from pipelines.kafka_reader import ReadAheadReader
from pipelines.kafka_source import (
    KafkaOffsetRange,
    commit_offsets,
    plan_offset_ranges,
    read_offset_ranges,
)
from pipelines.lake import lake_table, use_arrow_memory_pool, write_event_lake
from pipelines.metrics import PipelineMetrics, beam_counters
from pipelines.privacy import apply_new_tombstones, drop_deleted_users
from pipelines.packed import Packed
from pipelines.records import DeadLetter, KafkaRecord, ParsedRow
from pipelines.state_store import FAMILIES, PipelineState, load_state, save_state, state_path
from pipelines.state_subset import merge_state, passes_whole_state, relevant_state, whole_state
from pipelines.transforms import (
    ComputeBundleFeatures,
    ComputeExperimentFeatures,
    ComputeItemCooccurrence,
    ComputeItemFeatures,
    ComputeUserFeatures,
    DEFAULT_SHARDS,
    DeduplicateEvents,
    DropLateEvents,
    DropProcessedRecords,
    EventTimeWatermark,
    ParseRecordBatches,
    split_state_by_shard,
)
from streamrec.runtime.kafka import new_consumer, new_producer

if TYPE_CHECKING:
    from feast import FeatureStore

    from streamrec.runtime.config import Settings

logger = logging.getLogger(__name__)

# Feature family -> (view name, state attribute).
VIEW_OUTPUTS = {
    "user_features": "users",
    "item_features": "items",
    "item_cooccurrence": "cooccurrence",
    "bundle_features": "bundles",
    "experiment_variant_features": "variants",
}


@dataclass
class BatchResult:
    """What one Beam run produced (before any sink)."""

    as_of: float | None
    # The valid events as lake tables (``lake_table``: one per batch element).
    lake: list[Any]
    dead_letters: list[DeadLetter]
    duplicates: int
    reprocessed: int
    features: dict[str, list[dict[str, Any]]]
    state: PipelineState
    records: int
    # The run's Beam counters (``pipelines.metrics``): records per stage, dead letters per reason.
    counters: dict[str, int] = field(default_factory=dict)


@dataclass
class BatchSummary:
    """What a micro-batch did; ``as_text`` is the CLI's line."""

    ranges: list[KafkaOffsetRange] = field(default_factory=list)
    records: int = 0
    valid: int = 0
    duplicates: int = 0
    # Records the saved state already held (a re-run after a crash before the commit).
    reprocessed: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    features_written: dict[str, int] = field(default_factory=dict)
    watermark: float | None = None
    lag: int = 0
    elapsed_s: float = 0.0
    # Records of deleted users dropped before the Beam run (not sent to the DLQ: it would copy
    # their payload), and users purged from every store for tombstones seen at this batch.
    deleted_user_records: int = 0
    users_purged: int = 0
    # The Beam run's counters (``BatchResult.counters``); empty when nothing ran.
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def ran(self) -> bool:
        """Whether the batch had records to run (an empty poll does not)."""
        return any(r.size for r in self.ranges)

    def as_text(self) -> str:
        wm = datetime.fromtimestamp(self.watermark, tz=timezone.utc).isoformat() if self.watermark else "-"
        dlq = sum(self.dead_letters.values())
        reasons = ", ".join(f"{r}={n}" for r, n in self.dead_letters.most_common()) or "none"
        written = sum(self.features_written.values())
        return (
            f"events in {self.records} (valid {self.valid}, duplicates {self.duplicates}, "
            f"already processed {self.reprocessed}), "
            f"features written {written} {dict(self.features_written)}, DLQ {dlq} ({reasons}), "
            f"watermark {wm}, lag {self.lag} records, {self.elapsed_s:.1f}s"
            + (f", deleted users: {self.users_purged} purged, {self.deleted_user_records} records dropped"
               if self.users_purged or self.deleted_user_records else "")
        )


# Batches of at least this many records are read in the reader process, ahead of their Beam run
# (when their state is passed whole): below it, reading in this process costs less than handing
# the records over.
READ_AHEAD_MIN_RECORDS = 20_000
# The share of a read-ahead batch's records that the reader process parses (``parse_ahead``); the
# Beam run parses the rest. Measured on the 84k-event Taobao batch, 2 cores shared with the broker.
PARSE_AHEAD_SHARE = 0.5

# Records per element of the Beam run (see ``pipelines.transforms``): large enough that the
# runner's per-element work vanishes, small enough that a batch still splits over workers.
RECORDS_PER_ELEMENT = 4096


def _batch_graph(spec: FeatureSpec, topic: str, shards: int, read: beam.PTransform | None = None):
    """The micro-batch's graph over ``BatchInputs`` (``pipelines.batch_run``); with ``read`` the
    records come from that transform (one record per element) instead of the staged ones."""

    def graph(p: beam.Pipeline, inputs: BatchInputs) -> dict[str, Any]:
        if read is not None:
            records = (p | "Read" >> read
                       | "Batch" >> beam.BatchElements(min_batch_size=RECORDS_PER_ELEMENT,
                                                       max_batch_size=RECORDS_PER_ELEMENT)
                       | "Pack" >> beam.Map(Packed))
        else:
            records = inputs.records
        watermark, processed, carried = inputs.watermark, inputs.processed, inputs.state
        parsed = records | "Parse" >> ParseRecordBatches()
        fresh = parsed["parsed"] | "SkipProcessed" >> DropProcessedRecords(processed)
        fresh_dead = parsed["dead_letters"] | "SkipProcessedDeadLetters" >> DropProcessedRecords(processed)
        on_time = fresh | "Lateness" >> DropLateEvents(watermark, spec.allowed_lateness_s, topic, as_rows=True)
        as_of = on_time["events"] | "AsOf" >> EventTimeWatermark(watermark)

        unique = {"events": on_time["events"], "seen": carried["seen"]} | "Dedupe" >> DeduplicateEvents(
            as_of, spec.allowed_lateness_s, shards
        )
        events = unique["events"]
        users = {"events": events, "state": carried["users"]} | "Users" >> ComputeUserFeatures(
            as_of, spec, watermark, shards)
        items = {"events": events, "state": carried["items"]} | "Items" >> ComputeItemFeatures(
            as_of, spec, watermark, shards)
        cooc = {
            "events": events,
            "sessions": carried["sessions"],
            "state": carried["cooccurrence"],
        } | "Cooccurrence" >> ComputeItemCooccurrence(as_of, spec, shards)
        bundles = {"events": events, "state": carried["bundles"]} | "Bundles" >> ComputeBundleFeatures(spec, shards)
        variants = {
            "events": events,
            "requests": carried["requests"],
            "state": carried["variants"],
        } | "Experiments" >> ComputeExperimentFeatures(as_of, spec, shards)

        return {
            "records": records | "Count" >> beam.Map(lambda batch: len(batch.value)),
            # By columns, one table per element (``lake_table``); Packed: not encoded for Beam's size sampling.
            "lake": parsed["parsed"] | "LakeRows" >> beam.Map(lambda batch: Packed(lake_table(batch.value))),
            "dead_letters": (fresh_dead, on_time["dead_letters"]) | "AllDeadLetters" >> beam.Flatten(),
            "reprocessed": records | "Reprocessed" >> beam.Map(_reprocessed, AsSingleton(processed)),
            "duplicates": unique["duplicates"] | "CountDuplicates" >> beam.Map(lambda batch: len(batch.value)),
            "as_of": as_of,
            "user_features": users["features"],
            "item_features": items["features"],
            "item_cooccurrence": cooc["features"],
            "bundle_features": bundles["features"],
            "experiment_variant_features": variants["features"],
            "state_seen": unique["seen"],
            "state_users": users["state"],
            "state_items": items["state"],
            "state_sessions": cooc["sessions"],
            "state_cooccurrence": cooc["state"],
            "state_bundles": bundles["state"],
            "state_requests": variants["requests"],
            "state_variants": variants["state"],
        }

    return graph


def _reprocessed(batch: Packed[list[KafkaRecord | ParsedRow]], processed: dict[int, int]) -> int:
    return sum(1 for r in batch.value if r.offset < processed.get(r.partition, 0))


# Compiled graphs of this process, by (spec, beam args, topic, shards, staging root).
_COMPILED: dict[tuple[Any, ...], CompiledBatch] = {}


def compiled_folders() -> set[Path]:
    """The staging folders of this process's compiled graphs (in use: not stale)."""
    return {compiled.folder for compiled in _COMPILED.values()}


def compute_batch(
    read: beam.PTransform | Iterable[KafkaRecord | ParsedRow],
    state: PipelineState,
    spec: FeatureSpec,
    beam_args: list[str],
    topic: str = "",
    staging_root: Path | None = None,
    shards: int = DEFAULT_SHARDS,
) -> BatchResult:
    """Run the composites once over the records ``read`` produces, against ``state``.

    Args:
        read: the batch's ``KafkaRecord``s, or ``ParsedRow``s where the reader process parsed
            them (any iterable: on the in-process runner the run takes them as they come, so a
            generator may still be reading them), or a PTransform from the pipeline root to
            ``KafkaRecord``s (one record per element; they are batched here).
        state: the state after the previous batch. Its dicts are not changed, but on the
            in-process runner the states in them are folded in place (``Packed`` elements pass
            by reference): callers hand over a copy the batch may change, as ``merge_state``
            and ``FeaturePipeline._saved_state(keep=False)`` already assume.
        spec: feature windows and sizes.
        beam_args: Beam pipeline options (the runner).
        staging_root: where the run's inputs and outputs are staged (default: the system temp dir).
        shards: shards per keyed family (``pipeline.key_shards``).

    Returns:
        The batch's outputs and the new state (offsets and batch count are left to the caller).
    """
    watermark = state.watermark
    in_process = runs_in_process(batch_options(beam_args))
    records = [] if isinstance(read, beam.PTransform) else _batched(read)
    values = {
        # In process the run pulls the batches as it goes (records still being read included).
        "records": records if in_process else list(records),
        "state": {name: split_state_by_shard(getattr(state, name), shards) for name in FAMILIES},
        "context": {"watermark": watermark, "processed": dict(state.offsets)},
    }
    if isinstance(read, beam.PTransform) or not in_process:
        graph = _batch_graph(spec, topic, shards, read if isinstance(read, beam.PTransform) else None)
        outputs = run_built(graph, values, beam_args, staging_root, FAMILIES)
    else:
        key = (spec, tuple(beam_args), topic, shards, str(staging_root))
        if key not in _COMPILED:
            _COMPILED[key] = CompiledBatch(_batch_graph(spec, topic, shards), beam_args, staging_root, FAMILIES)
        outputs = _COMPILED[key].run(values)
    return _batch_result(outputs, state)


def _batched(records: Iterable[KafkaRecord | ParsedRow]) -> Iterator[Packed[list[KafkaRecord | ParsedRow]]]:
    """The records in elements of ``RECORDS_PER_ELEMENT``, made as the records come."""
    batch: list[KafkaRecord | ParsedRow] = []
    for record in records:
        batch.append(record)
        if len(batch) == RECORDS_PER_ELEMENT:
            yield Packed(batch)
            batch = []
    if batch:
        yield Packed(batch)


def _batch_result(outputs: BatchOutputs, state: PipelineState) -> BatchResult:
    """The collected outputs and metrics of a batch's run as its ``BatchResult``."""
    watermark = state.watermark
    collected = outputs.collected

    def flat(name: str) -> list[Any]:
        return [value for batch in collected.get(name, []) for value in batch.value]

    def family(name: str) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for _shard, part in collected.get(f"state_{name}", []):
            merged.update(part.value)
        return merged

    as_of_values = [v for v in collected.get("as_of", []) if v is not None]
    new_state = PipelineState(
        watermark=max(as_of_values) if as_of_values else watermark,
        offsets=dict(state.offsets),
        batches=state.batches,
        **{name: family(name) for name in FAMILIES},
    )
    return BatchResult(
        as_of=new_state.watermark,
        lake=[batch.value for batch in collected.get("lake", [])],
        dead_letters=flat("dead_letters"),
        duplicates=sum(collected.get("duplicates", [])),
        reprocessed=sum(collected.get("reprocessed", [])),
        features={name: flat(name) for name in VIEW_OUTPUTS},
        state=new_state,
        records=sum(collected.get("records", [])),
        counters=beam_counters(outputs.metrics),
    )


@contextmanager
def _batch_gc_thresholds() -> Iterator[None]:
    """Young-generation collections ~140x less often while a batch runs.

    A batch allocates millions of objects that live until its end (events, feature rows, state,
    protos), and CPython's default thresholds (700, 10, 10) walk them again and again, full passes
    included: 2-3 s of a 20 s Beam run and 0.5 s of the state selection over 84k events
    (measured). Cyclic garbage is still collected, in larger steps; the thresholds come back after.
    """
    previous = gc.get_threshold()
    gc.set_threshold(100_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*previous)


def _file_identity(path: Path) -> tuple[int, int, int]:
    """Inode, mtime and size: a save (write + rename) or another writer changes it."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return (0, 0, 0)
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


def batch_tag(ranges: Iterable[KafkaOffsetRange], state_batches: int) -> str:
    """A stable name for a batch: the same offsets on the same prior state (a re-run after a crash
    before the state was saved) get the same tag, so their offline files replace each other;
    a re-run on a newer state (crash after the save) writes new files beside the old ones."""
    key = ";".join(f"{r.topic}/{r.partition}/{r.start}-{r.stop}" for r in sorted(ranges)) + f"@{state_batches}"
    return "batch-" + hashlib.sha1(key.encode()).hexdigest()[:16]


class FeaturePipeline:
    """Micro-batches from Kafka into Feast (online + offline), the event lake and the DLQ.

    Example:
        >>> pipeline = FeaturePipeline(get_settings())  # doctest: +SKIP
        >>> print(pipeline.run_once().as_text())
    """

    def __init__(self, settings: Settings, store: FeatureStore | None = None, push_online: bool = True,
                 metrics: PipelineMetrics | None = None):
        from features.repo import apply_feature_repo

        use_arrow_memory_pool()
        self.settings = settings
        self.spec = FeatureSpec.from_config(settings.pipeline)
        self.topic = settings.kafka.topics.events
        self.group_id = settings.pipeline.group_id
        self.state_file = state_path(settings)
        self.lake_root = settings.data.lake_dir
        self.push_online = push_online
        self.store = store if store is not None else apply_feature_repo(settings)
        self._producer = None
        self._wake = None  # the idle long-poll consumer of follow(); see _wait_for_records
        self._reader: ReadAheadReader | None = None  # reads large batches ahead of their Beam run
        # (file identity, state) of the checkpoint this process saved last; see _saved_state.
        self._state: tuple[tuple[int, int, int], PipelineState] | None = None
        # Test hook: called between sinks with the step's name (the kill test stops here).
        self.on_step: Callable[[str], None] = lambda step: None
        # Every batch is recorded here; `pipeline run` serves its registry on /metrics when configured.
        self.metrics = metrics if metrics is not None else PipelineMetrics()

    @property
    def _staging_root(self) -> Path:
        return self.state_file.parent / "staging"

    def _compute(self, records: list[KafkaRecord], state: PipelineState) -> BatchResult:
        return compute_batch(records, state, self.spec, self.settings.pipeline.beam_args, self.topic,
                             self._staging_root, self.settings.pipeline.key_shards)

    def _remove_stale_staging(self) -> None:
        """Staging folders left by killed runs (this process's compiled graphs keep theirs)."""
        in_use = compiled_folders()
        root = self._staging_root
        for stale in [*root.glob("streamrec-batch-*"), *root.glob(f"{CompiledBatch.FOLDER_PREFIX}*")]:
            if stale not in in_use:
                shutil.rmtree(stale, ignore_errors=True)

    def prepare(self) -> float:
        """Build and translate the batch graph now, start-up work the first batch would otherwise
        do (~1.2 s), by running it on an empty batch: no sink, offset or state is touched; and
        start the Kafka reader process of large batches (``pipelines.kafka_reader``). ``follow``
        calls it, so the first event after start is not the one that waits for it.

        Returns:
            The seconds it took.
        """
        started = time.monotonic()
        self._remove_stale_staging()
        self._compute([], PipelineState())
        self._start_reader()
        return time.monotonic() - started

    def _saved_state(self, keep: bool) -> PipelineState:
        """The saved checkpoint: the copy this process saved last while the file is still that one
        (unpickling a long history's state each micro-batch cost more than the batch), else read.

        ``keep=False`` hands the copy to a batch that will change it: until that batch saves, a
        failure leaves no cached copy, and the retry reads the file.
        """
        cached = self._state
        if not keep:
            self._state = None
        if cached is not None and cached[0] == _file_identity(self.state_file):
            return cached[1]
        state = load_state(self.state_file)
        if keep and self.state_file.exists():
            self._state = (_file_identity(self.state_file), state)
        return state

    def _dlq_producer(self):
        if self._producer is None:
            self._producer = new_producer(self.settings.kafka, acks="all", linger_ms=5)
        return self._producer

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._producer is not None:
            self._producer.close()
            self._producer = None
        if self._wake is not None:
            self._wake.close()
            self._wake = None

    def _wait_for_records(self, ranges: list[KafkaOffsetRange], timeout_s: float, stopping: Callable[[], bool]) -> None:
        """Return when a record lands past the ``ranges``' stops, after ``timeout_s``, or on a stop.

        A long poll on a consumer kept open between batches: an idle pipeline starts the next
        batch as soon as an event arrives, instead of up to a whole poll interval later (the
        largest part of the produce-to-online time after the batch itself).
        """
        from kafka import TopicPartition
        from kafka.errors import KafkaError

        deadline = time.monotonic() + timeout_s
        try:
            if self._wake is None:
                # fetch_max_wait_ms: the longest a fetch may sit at the broker (caps the wake-up delay).
                self._wake = new_consumer(self.settings.kafka, group_id=None, fetch_max_wait_ms=100)
            partitions = {TopicPartition(r.topic, r.partition): r.stop for r in ranges}
            if set(self._wake.assignment()) != set(partitions):
                self._wake.assign(list(partitions))
            for tp, stop in partitions.items():
                self._wake.seek(tp, stop)
            while not stopping() and time.monotonic() < deadline:
                if self._wake.poll(timeout_ms=200, max_records=1):
                    return
        except KafkaError as exc:  # the next batch reports a broker that is away; just wait here
            logger.warning("waiting for records failed (%s: %s)", type(exc).__name__, exc)
            while not stopping() and time.monotonic() < deadline:
                time.sleep(0.1)

    def run_once(self, start_offsets: dict[int, int] | None = None, max_records_per_partition: int | None = None) -> BatchSummary:
        """One bounded micro-batch from the committed (or given) offsets to the end offsets now."""
        try:
            with _batch_gc_thresholds():
                summary = self._run_once(start_offsets, max_records_per_partition)
        except Exception:
            self.metrics.observe_failure()
            raise
        self.metrics.observe_batch(
            summary.counters, summary.elapsed_s if summary.ran else None, summary.lag, summary.watermark
        )
        if summary.ran and logger.isEnabledFor(logging.DEBUG):  # as_text formats every field: only when it is read
            logger.debug("micro-batch done: %s", summary.as_text(),
                         extra={"records": summary.records, "lag": summary.lag, "elapsed_s": summary.elapsed_s})
        return summary

    def _run_once(self, start_offsets: dict[int, int] | None, max_records_per_partition: int | None) -> BatchSummary:
        started = time.monotonic()
        # Tombstones first: a deletion seen now applies to this batch's records already.
        self.on_step("tombstones")
        ledger, purged = apply_new_tombstones(self.settings)
        ranges = plan_offset_ranges(
            self.settings.kafka,
            self.topic,
            self.group_id,
            start_offsets,
            max_records_per_partition or self.settings.pipeline.max_records_per_partition,
        )
        summary = BatchSummary(ranges=ranges, users_purged=len(purged.users) if purged else 0)
        if sum(r.size for r in ranges) == 0:
            summary.watermark = self._saved_state(keep=True).watermark
            summary.elapsed_s = time.monotonic() - started
            return summary
        state = self._saved_state(keep=False)
        self.on_step("beam")
        size = sum(r.size for r in ranges)
        if size >= READ_AHEAD_MIN_RECORDS and passes_whole_state(state, size):
            # Nothing to select: the records reach the Beam run as the reader process decodes them.
            records: Iterable[KafkaRecord | ParsedRow] = self._read_ahead(ranges, ledger.deleted, summary)
            passed = whole_state(state)
            self.on_step("select_state")
        else:
            # Read here, at the edge: the driver needs them to pick the part of the state this
            # batch can touch (``state_subset``); the Beam job gets them as its input.
            records, summary.deleted_user_records = drop_deleted_users(
                read_offset_ranges(self.settings.kafka, ranges), ledger.deleted
            )
            self.on_step("select_state")
            passed = relevant_state(state, records, self.spec)
        self.on_step("compute")
        self._remove_stale_staging()
        result = self._compute(records, passed)
        result.state = merge_state(state, passed, result.state, self.spec)
        self._sink(result, ranges, summary)
        summary.elapsed_s = time.monotonic() - started
        return summary

    def _read_ahead(self, ranges: list[KafkaOffsetRange], deleted: Collection[str],
                    summary: BatchSummary) -> Iterator[KafkaRecord | ParsedRow]:
        """The batch's records from the reader process as they come: deleted users' records
        dropped there, and ``PARSE_AHEAD_SHARE`` of them parsed there (``ParsedRow``s). The process
        is started here, before the Beam run and its threads, if ``prepare`` did not."""
        reader = self._start_reader()
        chunks = reader.read(ranges, deleted, PARSE_AHEAD_SHARE)  # the reader starts now

        def records() -> Iterator[KafkaRecord | ParsedRow]:
            for chunk in chunks:
                summary.deleted_user_records += chunk.deleted_user_records
                yield from chunk.records

        return records()

    def _start_reader(self) -> ReadAheadReader:
        if self._reader is None:
            self._reader = ReadAheadReader(self.settings.kafka.client_options())
        self._reader.start()
        return self._reader

    def _sink(self, result: BatchResult, ranges: list[KafkaOffsetRange], summary: BatchSummary) -> None:
        from pipelines.feast_sink import feature_frame

        self.on_step("dlq")
        if result.dead_letters:
            producer = self._dlq_producer()
            limit = self.settings.collector.limits.dlq_max_raw_bytes
            futures = [
                producer.send(self.settings.kafka.topics.dlq, key=d.dlq_key, value=d.to_json(limit))
                for d in result.dead_letters
            ]
            producer.flush()
            for future in futures:
                future.get(timeout=self.settings.kafka.produce_timeout_s)
        self.on_step("features")
        # The three writes at once, each in a thread of its own: Arrow's sort and Parquet writes and
        # SQLite's inserts release the GIL, so they overlap with the Python parts of the others
        # (they were 1.4 s one after the other for the 84k-event Taobao batch); the lake's starts
        # while the feature frames are built. All of them end before the state is saved: a batch
        # whose state is saved is never written again.
        with ThreadPoolExecutor(max_workers=3, thread_name_prefix="streamrec-sink") as pool:
            writes = [pool.submit(write_event_lake, self.lake_root, ranges, result.lake)]
            frames = {}
            for view_name, rows in result.features.items():
                summary.features_written[view_name] = len(rows)
                if rows and result.as_of is not None:
                    frames[view_name] = feature_frame(view_name, rows, result.as_of)
            writes.append(pool.submit(self._write_offline, frames, batch_tag(ranges, result.state.batches), result.as_of))
            if self.push_online:
                writes.append(pool.submit(self._push_online, frames))
        for write in writes:
            write.result()  # the first failure fails the batch (nothing saved or committed)
        self.on_step("state")
        new_state = result.state
        new_state.offsets = {**new_state.offsets, **{r.partition: r.stop for r in ranges}}
        new_state.batches += 1
        save_state(self.state_file, new_state)
        self._state = (_file_identity(self.state_file), new_state)
        self.on_step("commit")
        commit_offsets(self.settings.kafka, self.group_id, ranges)
        summary.records = result.records
        summary.valid = sum(table.num_rows for table in result.lake)
        summary.duplicates = result.duplicates
        summary.reprocessed = result.reprocessed
        summary.dead_letters = Counter(d.reason for d in result.dead_letters)
        summary.counters = result.counters
        summary.watermark = result.as_of
        self.on_step("lag")
        summary.lag = self.lag()

    def _write_offline(self, frames: dict[str, Any], tag: str, as_of: float | None) -> None:
        from pipelines.feast_sink import write_offline

        for view_name, frame in frames.items():
            write_offline(self.settings, view_name, frame, tag, as_of)

    def _push_online(self, frames: dict[str, Any]) -> None:
        from pipelines.feast_sink import push_online

        for view_name, frame in frames.items():  # one view after the other: one SQLite connection
            push_online(self.store, view_name, frame)

    def lag(self) -> int:
        """Records in the topic not yet committed by the group."""
        ranges = plan_offset_ranges(self.settings.kafka, self.topic, self.group_id)
        return sum(r.size for r in ranges)

    def follow(
        self,
        max_batches: int | None = None,
        stop_when_idle: bool = False,
        on_batch: Callable[[BatchSummary], None] = lambda s: None,
        max_consecutive_failures: int = 10,
    ) -> list[BatchSummary]:
        """Micro-batches in a loop until SIGINT/SIGTERM (or ``max_batches`` / idle when asked).

        A failed batch (broker away, a sink down) committed nothing, so it is retried with
        exponential back-off; after ``max_consecutive_failures`` in a row the error is raised.
        """
        stopping = {"flag": False}

        def stop(signum, frame):
            stopping["flag"] = True

        def pause(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and not stopping["flag"]:
                time.sleep(0.1)

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        summaries: list[BatchSummary] = []
        failures = 0
        try:
            self.prepare()
            while not stopping["flag"]:
                try:
                    summary = self.run_once()
                    failures = 0
                except Exception as exc:  # noqa: BLE001 - retried, then re-raised
                    failures += 1
                    if failures >= max_consecutive_failures:
                        raise
                    backoff = min(60.0, self.settings.pipeline.poll_interval_s * 2**failures)
                    logger.warning("batch failed (%s: %s); retrying in %.0fs", type(exc).__name__, exc, backoff,
                                   extra={"failures": failures})
                    pause(backoff)
                    continue
                if summary.records:
                    summaries.append(summary)
                    on_batch(summary)
                    if max_batches is not None and len(summaries) >= max_batches:
                        break
                    continue
                if stop_when_idle:
                    break
                self._wait_for_records(summary.ranges, self.settings.pipeline.poll_interval_s, lambda: stopping["flag"])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return summaries


def records_from_lake(frame: Any, topic: str) -> list[KafkaRecord]:
    """Lake rows back as Kafka records (for backfills through the same composites)."""
    return [
        KafkaRecord(topic, int(p), int(o), 0, None, j.encode("utf-8"))
        for p, o, j in zip(frame["kafka_partition"], frame["kafka_offset"], frame["event_json"])
    ]
