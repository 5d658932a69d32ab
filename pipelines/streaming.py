"""The feature pipeline as ONE unbounded streaming job (Flink, Dataflow): Kafka -> features -> Feast,
event lake, DLQ.

    python -m pipelines.streaming [extra Beam options]      (or: streamrec pipeline run --streaming)

The runner comes from ``pipeline.beam_args`` (``deploy/production/beam/streaming.yaml``) plus the
extra options; ``--streaming`` is always added. Locally ``--follow`` runs micro-batches instead
(``pipelines.runner``); both share parsing (``ParseEvents``), the accumulators that define every
feature (``pipelines.accumulators``), the feature rows and the sinks' formats. What differs is how
the as-of time and the carried state reach a key:

* As-of time T: the largest event time accepted so far. ``TrackEventTimeHead`` runs on one key,
  so every event sees the same T (a sequential step; one comparison per event). Lateness is judged
  against T before the event: the micro-batch rule with one record per batch.
* State: per-key Beam state (``ReadModifyWriteState``), checkpointed by the runner together with
  the Kafka positions, instead of the driver's pickle and the group's committed offsets.
* Keys whose event leaves the short or long window without a new event: an event-time timer at
  ``ts + window`` re-emits them (the micro-batch driver scans the state for those keys). The
  source's watermark is the event time read per partition (``ReadKafkaUnbounded(event_time=...)``),
  so the timers follow event time, not Kafka append time.
* Every change emits a row as of its own T (rows carry their as-of time as the Feast event
  timestamp); the latest row of a key with as-of <= T equals the micro-batch row as of T.

Sinks are at-least-once, as in the micro-batches: a retried bundle re-pushes the same rows online
(upserts), rewrites its offline and lake files (same names) and re-sends its dead letters (keyed
by topic/partition/offset). The job starts at the topic's beginning offsets: its state is rebuilt
from what the topic retains (it does not read the micro-batch checkpoint).
"""

from __future__ import annotations

import sys
import uuid
from typing import Any, Callable, Iterable, TYPE_CHECKING, Tuple

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import TimestampedValue

from pipelines.accumulators import (
    CooccurrenceState,
    CounterState,
    FeatureSpec,
    ItemState,
    LatenessPolicy,
    RequestState,
    SessionState,
    UserState,
    bundle_signals,
    event_seconds,
    item_signals,
)
from pipelines.kafka_source import ReadKafkaUnbounded
from pipelines.lake import append_event_lake, lake_row
from pipelines.metrics import count_dead_letters, count_records, set_newest_event
from pipelines.records import KafkaRecord, ParsedRecord
from pipelines.transforms import ATTRIBUTED_TYPES, ParseEvents, late_dead_letter, session_lines, variant_of

if TYPE_CHECKING:
    from streamrec.runtime.config import Settings

__all__ = [
    "ComputeFeaturesStreaming",
    "TrackEventTimeHead",
    "build_streaming_pipeline",
    "event_time_of",
    "main",
    "run_streaming",
]

# Stateful steps declare their key type: Beam needs a deterministic key coder for per-key state.
_KEYED = Tuple[str, Any]
_STATE = ReadModifyWriteStateSpec("state", PickleCoder())
# The as-of time of the key's last emitted row: a timer behind it must not emit an older row.
_EMITTED = ReadModifyWriteStateSpec("emitted_as_of", PickleCoder())


def event_time_of(record: KafkaRecord) -> float | None:
    """The event time of a record (unix seconds) for the source's watermark; None if unreadable."""
    import json
    from datetime import datetime

    try:
        return datetime.fromisoformat(json.loads(record.value)["ts"].replace("Z", "+00:00")).timestamp()
    except Exception:  # noqa: BLE001 - a bad record goes to the DLQ in ParseEvents; here it only has no time
        return None


# --- as-of time, lateness, de-duplication ------------------------------------------------------


class _TrackHead(beam.DoFn):
    HEAD = ReadModifyWriteStateSpec("head", PickleCoder())

    def __init__(self, policy: LatenessPolicy, topic: str):
        self.policy, self.topic = policy, topic

    def process(self, kv, head=beam.DoFn.StateParam(HEAD)):
        _, record = kv
        ts = event_seconds(record.event)
        before = head.read()
        if self.policy.is_late(ts, before):
            count_dead_letters(("late_event",))
            yield TaggedOutput("dead_letters", late_dead_letter(record, self.policy, self.topic))
            return
        count_records("on_time")
        after = ts if before is None else max(before, ts)
        head.write(after)
        yield TimestampedValue((record, after), ts)


class TrackEventTimeHead(beam.PTransform):
    """ParsedRecord -> ``(ParsedRecord, T)`` with T the largest accepted event time so far; events
    more than ``allowed_lateness_s`` behind T go to the ``dead_letters`` output (``late_event``)."""

    def __init__(self, allowed_lateness_s: int, topic: str = ""):
        super().__init__()
        self.policy, self.topic = LatenessPolicy(allowed_lateness_s), topic

    def expand(self, parsed):
        out = (
            parsed
            | "OneKey" >> beam.Map(lambda r: (0, r))
            | "Head" >> beam.ParDo(_TrackHead(self.policy, self.topic))
            .with_input_types(Tuple[int, Any])
            .with_outputs("dead_letters", main="events")
        )
        return {"events": out.events, "dead_letters": out.dead_letters}


class _FirstCopy(beam.DoFn):
    SEEN = ReadModifyWriteStateSpec("seen", PickleCoder())
    FORGET = TimerSpec("forget", TimeDomain.WATERMARK)

    def __init__(self, allowed_lateness_s: int):
        self.allowed_lateness_s = allowed_lateness_s

    def process(self, kv, seen=beam.DoFn.StateParam(SEEN), forget=beam.DoFn.TimerParam(FORGET)):
        event_id, (record, head) = kv
        if seen.read():
            yield TaggedOutput("duplicates", event_id)
            return
        seen.write(True)
        count_records("out")
        # Remembered while a copy could still be on time (the watermark never passes T); +1 s
        # because a copy exactly allowed_lateness_s behind T is still on time.
        forget.set(event_seconds(record.event) + self.allowed_lateness_s + 1)
        yield record, head

    @on_timer(FORGET)
    def expire(self, seen=beam.DoFn.StateParam(SEEN)):
        seen.clear()


# --- per-key folds ---------------------------------------------------------------------------


def _next_leaving(times: Iterable[float], as_of: float, spec: FeatureSpec) -> float | None:
    """When the next of these events leaves the short or long window after ``as_of``."""
    later = [ts + w for ts in times for w in (spec.window_short_s, spec.window_long_s) if ts + w > as_of]
    return min(later) if later else None


class _WindowedFold(beam.DoFn):
    """A user's or an item's state: a row per change, and per window exit (event-time timer)."""

    WINDOW = TimerSpec("window", TimeDomain.WATERMARK)

    def __init__(self, view: str, spec: FeatureSpec, new: Callable[[], Any], add: Callable[[Any, Any, FeatureSpec], None],
                 times: Callable[[Any], Iterable[float]], keep: Callable[[Any], bool]):
        self.view, self.spec, self.new, self.add, self.times, self.keep = view, spec, new, add, times, keep

    def _emit_and_arm(self, key, state, as_of, store, emitted, timer):
        yield self.view, as_of, state.features(key, as_of, self.spec)
        emitted.write(as_of)
        state.prune(as_of, self.spec)
        if self.keep(state):
            store.write(state)
        else:
            store.clear()
        leaving = _next_leaving(self.times(state), as_of, self.spec)
        if leaving is not None:
            timer.set(leaving)

    def process(self, kv, store=beam.DoFn.StateParam(_STATE), emitted=beam.DoFn.StateParam(_EMITTED),
                timer=beam.DoFn.TimerParam(WINDOW), key=beam.DoFn.KeyParam):
        _, (payload, head) = kv
        state = store.read() or self.new()
        self.add(state, payload, self.spec)
        as_of = max(head, emitted.read() or head)
        yield from self._emit_and_arm(key, state, as_of, store, emitted, timer)

    @on_timer(WINDOW)
    def window_exit(self, fired=beam.DoFn.TimestampParam, store=beam.DoFn.StateParam(_STATE),
                    emitted=beam.DoFn.StateParam(_EMITTED), timer=beam.DoFn.TimerParam(WINDOW), key=beam.DoFn.KeyParam):
        state, as_of = store.read(), float(fired.micros) / 1e6
        if state is None:
            return
        last = emitted.read()
        if last is not None and as_of <= last:
            # A row as of a later time was already emitted (a newer event came first): no older
            # row, but the next exit after that time still needs its timer.
            leaving = _next_leaving(self.times(state), last, self.spec)
            if leaving is not None:
                timer.set(leaving)
            return
        yield from self._emit_and_arm(key, state, as_of, store, emitted, timer)


def _add_user_event(state: UserState, event: Any, spec: FeatureSpec) -> None:
    state.add(event, spec)


def _add_item_signal(state: ItemState, signal: tuple[float, str, int], spec: FeatureSpec) -> None:
    state.add_signal(*signal)


def _user_times(state: UserState) -> list[float]:
    return [ts for ts, _ in state.recent]


def _item_times(state: ItemState) -> list[float]:
    return [ts for ts, _, _ in state.recent]


def _always(state: Any) -> bool:
    return True  # user state is kept for good, as in the micro-batches


class _ExpiringFold(beam.DoFn):
    """A session's or a request's state: folds its events, emits what they change downstream, and
    is dropped ``retention_s`` of event time after its last event (as the micro-batches prune)."""

    EXPIRE = TimerSpec("expire", TimeDomain.WATERMARK)

    def __init__(self, new: Callable[[], Any], fold: Callable[[Any, Any], Iterable[Any]], retention_s: int):
        self.new, self.fold, self.retention_s = new, fold, retention_s

    def process(self, kv, store=beam.DoFn.StateParam(_STATE), expire=beam.DoFn.TimerParam(EXPIRE)):
        _, (payload, head) = kv
        state = store.read() or self.new()
        for key, change in self.fold(state, payload):
            yield key, (change, head)
        store.write(state)
        expire.set(state.last_ts + self.retention_s + 1)

    @on_timer(EXPIRE)
    def forget(self, store=beam.DoFn.StateParam(_STATE)):
        store.clear()


def _fold_session_line(state: SessionState, line: tuple[float, str, int, str, str | None]):
    ts, _event_id, _index, item_id, category_id = line
    return state.add(ts, item_id, category_id)


def _fold_request_event(state: RequestState, event: Any):
    return state.add(event, variant_of)


class _CountingFold(beam.DoFn):
    """All-time state (co-occurrence, bundle and variant counters): a row per change."""

    def __init__(self, view: str, spec: FeatureSpec, new: Callable[[], Any], add: Callable[[Any, Any], None],
                 features: Callable[[Any, Any, FeatureSpec], dict[str, Any]]):
        self.view, self.spec, self.new, self.add, self.features = view, spec, new, add, features

    def process(self, kv, store=beam.DoFn.StateParam(_STATE), key=beam.DoFn.KeyParam):
        _, (change, head) = kv
        state = store.read() or self.new()
        self.add(state, change)
        store.write(state)
        yield self.view, head, self.features(key, state, self.spec)


def _add_cooccurrence(state: CooccurrenceState, change: tuple[Any, int, Any]) -> None:
    state.add(*change)


def _cooccurrence_row(key: str, state: CooccurrenceState, spec: FeatureSpec) -> dict[str, Any]:
    return state.features(key, spec)


def _add_counts(state: CounterState, change: tuple[int, int, int]) -> None:
    state.add(*change)


def _counter_row(key_name: str):
    def row(key: str, state: CounterState, spec: FeatureSpec) -> dict[str, Any]:
        return state.features(key_name, key, spec)

    return row


class ComputeFeaturesStreaming(beam.PTransform):
    """``(ParsedRecord, T)`` (after ``TrackEventTimeHead``) -> ``(view, as_of, row)`` for every view,
    and the ids of dropped duplicates (output ``duplicates``); definitions as in ``pipelines.transforms``.

    Args:
        spec: windows and sizes.
    """

    def __init__(self, spec: FeatureSpec):
        super().__init__()
        self.spec = spec

    def expand(self, heads):
        spec = self.spec
        unique = (
            heads
            | "ById" >> beam.Map(lambda rh: (str(rh[0].event.event_id), rh))
            | "Dedupe" >> beam.ParDo(_FirstCopy(spec.allowed_lateness_s))
            .with_input_types(_KEYED)
            .with_outputs("duplicates", main="events")
        )
        events = unique.events | "Event" >> beam.Map(lambda rh: (rh[0].event, rh[1]))

        users = (
            events
            | "ByUser" >> beam.Map(lambda eh: (eh[0].user_id, eh))
            | "Users" >> beam.ParDo(
                _WindowedFold("user_features", spec, UserState, _add_user_event, _user_times, _always)
            ).with_input_types(_KEYED)
        )
        items = (
            events
            | "ItemSignals" >> beam.FlatMap(
                lambda eh: [(item, ((event_seconds(eh[0]), kind, qty), eh[1])) for item, kind, qty in item_signals(eh[0])]
            )
            | "Items" >> beam.ParDo(
                _WindowedFold("item_features", spec, ItemState, _add_item_signal, _item_times, ItemState.has_signals)
            ).with_input_types(_KEYED)
        )
        cooccurrence = (
            events
            | "SessionLines" >> beam.FlatMap(lambda eh: [(s, (line, eh[1])) for s, line in session_lines(eh[0])])
            | "Sessions" >> beam.ParDo(
                _ExpiringFold(SessionState, _fold_session_line, spec.state_retention_s)
            ).with_input_types(_KEYED)
            | "Cooccurrence" >> beam.ParDo(
                _CountingFold("item_cooccurrence", spec, CooccurrenceState, _add_cooccurrence, _cooccurrence_row)
            ).with_input_types(_KEYED)
        )
        bundles = (
            events
            | "BundleSignals" >> beam.FlatMap(lambda eh: [(b, (inc, eh[1])) for b, inc in bundle_signals(eh[0])])
            | "Bundles" >> beam.ParDo(
                _CountingFold("bundle_features", spec, CounterState, _add_counts, _counter_row("bundle_id"))
            ).with_input_types(_KEYED)
        )
        variants = (
            events
            | "Attributed" >> beam.Filter(lambda eh: eh[0].type in ATTRIBUTED_TYPES)
            | "ByRequest" >> beam.Map(lambda eh: (eh[0].request_id, eh))
            | "Requests" >> beam.ParDo(
                _ExpiringFold(RequestState, _fold_request_event, spec.state_retention_s)
            ).with_input_types(_KEYED)
            | "Variants" >> beam.ParDo(
                _CountingFold("experiment_variant_features", spec, CounterState, _add_counts, _counter_row("experiment_variant"))
            ).with_input_types(_KEYED)
        )
        rows = (users, items, cooccurrence, bundles, variants) | "AllRows" >> beam.Flatten()
        return {"rows": rows, "duplicates": unique.duplicates}


# --- sinks (the job's edge) -------------------------------------------------------------------


class _WriteFeatures(beam.DoFn):
    """Per bundle: one offline Parquet file per view, and an online push of each key's latest row."""

    def __init__(self, settings: Settings, push_online: bool = True):
        self.settings, self.push = settings, push_online

    def setup(self):
        from features.repo import get_feature_store

        self.store = get_feature_store(self.settings) if self.push else None

    def start_bundle(self):
        self.rows: dict[str, list[tuple[float, dict[str, Any]]]] = {}

    def process(self, element):
        view, as_of, row = element
        self.rows.setdefault(view, []).append((as_of, row))

    def finish_bundle(self):
        from features.views import JOIN_KEY_OF_VIEW
        from pipelines.feast_sink import feature_frame_at, push_online, write_offline

        tag = "stream-" + uuid.uuid4().hex[:16]
        for view, stamped in self.rows.items():
            frame = feature_frame_at(view, [r for _, r in stamped], [t for t, _ in stamped])
            write_offline(self.settings, view, frame, tag, min(t for t, _ in stamped))
            if self.store is not None:
                key = JOIN_KEY_OF_VIEW[view]
                # Rows of a key leave its fold in as-of order; keep the last for the upsert.
                latest = frame.drop_duplicates(key, keep="last")
                push_online(self.store, view, latest)


class _WriteLake(beam.DoFn):
    def __init__(self, root: str, topic: str):
        self.root, self.topic = root, topic

    def start_bundle(self):
        self.rows: list[Any] = []
        self.newest: float | None = None

    def process(self, parsed: ParsedRecord):
        self.rows.append(lake_row(parsed))
        ts = event_seconds(parsed.event)
        self.newest = ts if self.newest is None else max(self.newest, ts)

    def finish_bundle(self):
        from pathlib import Path

        if self.rows:
            append_event_lake(Path(self.root), self.topic, self.rows)
        if self.newest is not None:  # written: freshness is now minus this (Flink's reporter exports it)
            set_newest_event(self.newest)


class _SendDeadLetters(beam.DoFn):
    def __init__(self, settings: Settings):
        self.settings = settings

    def setup(self):
        from streamrec.runtime.kafka import new_producer

        self.producer = new_producer(self.settings.kafka, acks="all", linger_ms=5)

    def process(self, dead):
        limit = self.settings.collector.limits.dlq_max_raw_bytes
        self.producer.send(self.settings.kafka.topics.dlq, key=dead.dlq_key, value=dead.to_json(limit))

    def finish_bundle(self):
        self.producer.flush()

    def teardown(self):
        self.producer.close()


def build_streaming_pipeline(
    p: beam.Pipeline,
    settings: Settings,
    start_offsets: dict[int, int],
    stop_offsets: dict[int, int] | None = None,
    push_online: bool = True,
) -> None:
    """Add the whole job to ``p``: unbounded read (bounded by ``stop_offsets`` in tests), parse,
    as-of time and lateness, de-duplication, features, and the Feast / lake / DLQ sinks."""
    topic = settings.kafka.topics.events
    spec = FeatureSpec.from_config(settings.pipeline)
    records = p | "Read" >> ReadKafkaUnbounded(
        settings.kafka.client_options(), topic, start_offsets, stop_offsets, event_time=event_time_of
    )
    parsed = records | "Parse" >> ParseEvents()
    on_time = parsed["parsed"] | "AsOf" >> TrackEventTimeHead(spec.allowed_lateness_s, topic)
    features = on_time["events"] | "Features" >> ComputeFeaturesStreaming(spec)
    features["rows"] | "WriteFeatures" >> beam.ParDo(_WriteFeatures(settings, push_online))
    lake_root = str(settings.data.lake_dir)
    parsed["parsed"] | "WriteLake" >> beam.ParDo(_WriteLake(lake_root, topic))
    (
        (parsed["dead_letters"], on_time["dead_letters"])
        | "AllDeadLetters" >> beam.Flatten()
        | "SendDeadLetters" >> beam.ParDo(_SendDeadLetters(settings))
    )


def run_streaming(settings: Settings, extra_beam_args: list[str] | None = None, stop_offsets: dict[int, int] | None = None) -> Any:
    """Submit the job (from the topic's beginning offsets) and wait for it; returns the result.

    Args:
        settings: ``streamrec.runtime.config.Settings``; ``pipeline.beam_args`` name the runner.
        extra_beam_args: more Beam options (they win over ``beam_args``).
        stop_offsets: partition -> offset to stop at (a bounded run: tests); None runs forever.
    """
    from features.repo import apply_feature_repo
    from pipelines.kafka_source import beginning_offsets

    apply_feature_repo(settings)
    options = PipelineOptions([*settings.pipeline.beam_args, *(extra_beam_args or [])])
    options.view_as(StandardOptions).streaming = True
    start = beginning_offsets(settings.kafka, settings.kafka.topics.events)
    p = beam.Pipeline(options=options)
    build_streaming_pipeline(p, settings, start, stop_offsets)
    result = p.run()
    result.wait_until_finish()
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.streaming [Beam options]``: settings from ``STREAMREC_*`` / ``STREAMREC_CONFIG``."""
    from streamrec.runtime.config import get_settings
    from streamrec.runtime.logging_config import configure_logging

    settings = get_settings()
    configure_logging(settings.logging)
    run_streaming(settings, list(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
