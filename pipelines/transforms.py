"""Beam composites of the feature pipeline. No I/O here: sources and sinks live in ``runner``.

Each feature composite takes ``{"events": PCollection[Event], "state": PCollection[(key, State)]}``
and returns ``{"features": PCollection[dict], "state": PCollection[(key, State)]}``; the state
carries what later micro-batches need (see ``pipelines.accumulators`` for the exact feature
definitions). A feature row is emitted for every key the batch touched and for every key one of
whose events left the short or long window while the as-of time advanced (its counts changed);
so the latest row of every key always equals its features as of the latest as-of time.

Example:
    >>> import apache_beam as beam
    >>> from pipelines.transforms import ParseEvents
    >>> with beam.Pipeline() as p:  # doctest: +SKIP
    ...     parsed = p | beam.Create(records) | ParseEvents()
    ...     parsed["parsed"], parsed["dead_letters"]
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import apache_beam as beam
from apache_beam.pvalue import AsDict, AsSingleton, TaggedOutput
from apache_beam.transforms.window import TimestampedValue

from features.entities import experiment_variant_key
from features.events import EventRejected, parse_event
from pipelines.accumulators import (
    COOCCURRENCE_TYPES,
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
    interactions,
    item_signals,
    user_update,
)
from pipelines.records import DeadLetter, KafkaRecord, ParsedRecord

__all__ = [
    "ComputeBundleFeatures",
    "ComputeExperimentFeatures",
    "ComputeItemCooccurrence",
    "ComputeItemFeatures",
    "ComputeUserFeatures",
    "DeduplicateEvents",
    "DropLateEvents",
    "DropProcessedRecords",
    "EventTimeWatermark",
    "ParseEvents",
]


def _event_order(event: Any) -> tuple[float, str]:
    return (event_seconds(event), str(event.event_id))


# --- parse, lateness, de-duplication ----------------------------------------------------------


def parse_record(record: KafkaRecord) -> ParsedRecord:
    """Decode and validate one Kafka record; raises ``EventRejected`` with a reason code."""
    if record.value is None:
        raise EventRejected("empty", "record has no value")
    try:
        text = record.value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventRejected("invalid_utf8", str(exc)) from None
    try:
        payload = _JSON.decode(text)
    except ValueError as exc:
        raise EventRejected("invalid_json", str(exc)) from None
    return ParsedRecord(record.partition, record.offset, parse_event(payload))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every record: ``json.loads`` with an option builds a new decoder (and scanner)
# per call.
_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def _dead_letter(record: KafkaRecord, exc: EventRejected) -> DeadLetter:
    event_id = None
    try:
        event_id = str(json.loads(record.value or b"").get("event_id"))  # best effort, for the DLQ reader
    except Exception:  # noqa: BLE001 - the record is already known to be bad
        pass
    return DeadLetter(
        reason=exc.reason,
        detail=exc.detail,
        raw=record.value or b"",
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        event_id=event_id,
    )


def _parse_or_dead_letter(record: KafkaRecord):
    # Tagged outputs rather than with_exception_handling: its dead-letter output carries only the
    # exception's repr, and we need the reason code. Only contract violations are caught.
    try:
        yield parse_record(record)
    except EventRejected as exc:
        yield TaggedOutput("dead_letters", _dead_letter(record, exc))


class ParseEvents(beam.PTransform):
    """Kafka records -> parsed contract events (with their Kafka coordinates), and dead letters.

    Records that are not UTF-8, not JSON or violate the contract go to the dead-letter output
    with the contract's reason code (``invalid_json``, ``missing_field``, ...). Other exceptions
    are bugs and fail the batch (nothing is committed).

    Returns:
        ``{"parsed": ParsedRecord, "dead_letters": DeadLetter}`` (timestamps as they came: the
        streaming source stamps records with their event time, ``DropLateEvents`` stamps events).
    """

    def expand(self, records):
        out = records | "Validate" >> beam.FlatMap(_parse_or_dead_letter).with_outputs("dead_letters", main="parsed")
        return {"parsed": out.parsed, "dead_letters": out.dead_letters}


class DropProcessedRecords(beam.PTransform):
    """Drops records at offsets the carried state already includes (a re-run after a crash between
    the state save and the offset commit); they are neither counted again nor sent to the DLQ again.

    Args:
        processed: partition -> first offset not yet folded into the state.
    """

    def __init__(self, processed: dict[int, int]):
        super().__init__()
        self.processed = dict(processed)

    def expand(self, pcoll):
        processed = self.processed
        return pcoll | "New" >> beam.Filter(lambda r: r.offset >= processed.get(r.partition, 0))


class DropLateEvents(beam.PTransform):
    """Splits off events behind the watermark by more than the allowed lateness (``LatenessPolicy``).

    Args:
        watermark_s: the watermark before this batch (None: nothing is late).
        allowed_lateness_s: how far behind it an event may be.

    Returns:
        ``{"events": on-time events, "dead_letters": DeadLetter(reason="late_event")}``.
    """

    def __init__(self, watermark_s: float | None, allowed_lateness_s: int, topic: str = ""):
        super().__init__()
        self.policy = LatenessPolicy(allowed_lateness_s)
        self.watermark_s = watermark_s
        self.topic = topic

    def expand(self, parsed):
        policy, watermark, topic = self.policy, self.watermark_s, self.topic

        def split(record: ParsedRecord):
            ts = event_seconds(record.event)
            if policy.is_late(ts, watermark):
                yield TaggedOutput("late", late_dead_letter(record, policy, topic))
            else:
                yield TimestampedValue(record.event, ts)

        out = parsed | "Split" >> beam.FlatMap(split).with_outputs("late", main="events")
        return {"events": out.events, "dead_letters": out.late}


def late_dead_letter(record: ParsedRecord, policy: LatenessPolicy, topic: str) -> DeadLetter:
    """The dead letter of an event the lateness policy refused."""
    return DeadLetter(
        "late_event",
        f"event time {record.event.ts.isoformat()} is more than {policy.allowed_lateness_s}s behind the watermark",
        _canonical(record.event),
        topic,
        record.partition,
        record.offset,
        str(record.event.event_id),
    )


def _canonical(event: Any) -> bytes:
    from features.events import event_to_json

    return event_to_json(event)


class EventTimeWatermark(beam.PTransform):
    """The as-of time T: max(previous watermark, largest event time in the batch); a singleton.

    Args:
        floor_s: the watermark before this batch (None: none yet).
    """

    def __init__(self, floor_s: float | None):
        super().__init__()
        self.floor_s = floor_s

    def expand(self, events):
        floor = self.floor_s

        def largest(times: Iterable[float]) -> float | None:
            values = [t for t in times if t is not None]
            if floor is not None:
                values.append(floor)
            return max(values) if values else None

        return events | "EventTime" >> beam.Map(event_seconds) | "Max" >> beam.CombineGlobally(largest)


class _FirstCopy(beam.CombineFn):
    """Per event id: ``(the winning copy, number of copies)``; the winner is the copy with the
    smallest canonical JSON, so it does not depend on arrival order."""

    def create_accumulator(self) -> tuple[Any, int]:
        return (None, 0)

    def add_input(self, accumulator: tuple[Any, int], event: Any) -> tuple[Any, int]:
        winner, copies = accumulator
        if winner is None:  # the usual case: the first copy
            return (event, copies + 1)
        return self.merge_accumulators([accumulator, (event, 1)])

    def merge_accumulators(self, accumulators: Iterable[tuple[Any, int]]) -> tuple[Any, int]:
        winner, copies = None, 0
        for event, n in accumulators:
            copies += n
            if event is not None and (winner is None or _canonical(event) < _canonical(winner)):
                winner = event
        return (winner, copies)

    def extract_output(self, accumulator: tuple[Any, int]) -> tuple[Any, int]:
        return accumulator


class DeduplicateEvents(beam.PTransform):
    """Keeps the first copy of each ``event_id`` across this and earlier batches.

    Input ``{"events": Event, "seen": (event_id, ts)}``; ids are remembered while their event time is
    within ``allowed_lateness_s`` of the as-of time (older copies are late anyway).

    The copies of an id meet in a combine (lifted: each bundle pre-combines its own, so mostly one
    event per id crosses the shuffle, once), and the ids seen before come in as a side input:
    not a CoGroupByKey with the seen ids, whose Flatten the portable runner materializes, so every
    event was encoded and decoded twice.

    Returns:
        ``{"events": new unique events, "seen": remembered ids, "duplicates": event ids dropped}``.
    """

    def __init__(self, as_of, allowed_lateness_s: int):
        super().__init__()
        self.as_of = as_of
        self.allowed_lateness_s = allowed_lateness_s

    def expand(self, inputs):
        lateness = self.allowed_lateness_s

        def remembered(ts: float, as_of: float | None) -> bool:
            return as_of is not None and ts >= as_of - lateness

        def pick(kv, seen, as_of):
            event_id, (event, copies) = kv
            if event_id in seen:  # processed in an earlier batch: every copy is a duplicate
                duplicates = copies
            else:
                ts = event_seconds(event)
                yield TimestampedValue(event, ts)
                duplicates = copies - 1
                if remembered(ts, as_of):
                    yield TaggedOutput("seen", (event_id, ts))
            for _ in range(duplicates):
                yield TaggedOutput("duplicates", event_id)

        out = (
            inputs["events"]
            | "ById" >> beam.Map(lambda e: (str(e.event_id), e))
            | "FirstCopy" >> beam.CombinePerKey(_FirstCopy())
            | "Pick" >> beam.FlatMap(pick, seen=AsDict(inputs["seen"]), as_of=AsSingleton(self.as_of)).with_outputs(
                "seen", "duplicates", main="events"
            )
        )
        # Ids seen before stay remembered (with their first time) whether or not they came again.
        still_seen = inputs["seen"] | "StillSeen" >> beam.Filter(
            lambda kv, as_of: remembered(kv[1], as_of), as_of=AsSingleton(self.as_of)
        )
        seen = (out.seen, still_seen) | "Seen" >> beam.Flatten()
        return {"events": out.events, "seen": seen, "duplicates": out.duplicates}


# --- features ---------------------------------------------------------------------------------


def _grouped(inputs, keyed_events, label: str):
    return {"events": keyed_events, "state": inputs["state"]} | f"{label}Group" >> beam.CoGroupByKey()


class _FoldUserEvents(beam.DoFn):
    def __init__(self, spec: FeatureSpec, watermark_s: float | None):
        self.spec, self.watermark_s = spec, watermark_s

    def process(self, kv, as_of):
        user_id, groups = kv
        updates = sorted(groups["events"])
        states = list(groups["state"])
        state: UserState = states[0] if states else UserState()
        if as_of is None:
            return
        emit = bool(updates) or state.window_changed(self.watermark_s, as_of, self.spec)
        for update in updates:
            state.add_update(update, self.spec)
        if emit:
            yield state.features(user_id, as_of, self.spec)
        state.prune(as_of, self.spec)
        yield TaggedOutput("state", (user_id, state))


class ComputeUserFeatures(beam.PTransform):
    """Per user: last-seen, last-N interaction sequence, counts per type over the short and long
    windows, top categories by time-decayed affinity (definitions in ``pipelines.accumulators``).

    Args:
        as_of: singleton PCollection with the as-of time T (``EventTimeWatermark``).
        spec: windows and sizes.
        watermark_s: the watermark before this batch.
    """

    def __init__(self, as_of, spec: FeatureSpec, watermark_s: float | None):
        super().__init__()
        self.as_of, self.spec, self.watermark_s = as_of, spec, watermark_s

    def expand(self, inputs):
        keyed = inputs["events"] | "ByUser" >> beam.Map(lambda e: (e.user_id, user_update(e)))
        out = _grouped(inputs, keyed, "User") | "Fold" >> beam.ParDo(
            _FoldUserEvents(self.spec, self.watermark_s), as_of=AsSingleton(self.as_of)
        ).with_outputs("state", main="features")
        return {"features": out.features, "state": out.state}


class _FoldItemSignals(beam.DoFn):
    def __init__(self, spec: FeatureSpec, watermark_s: float | None):
        self.spec, self.watermark_s = spec, watermark_s

    def process(self, kv, as_of):
        item_id, groups = kv
        signals = list(groups["events"])
        states = list(groups["state"])
        state: ItemState = states[0] if states else ItemState()
        if as_of is None:
            return
        emit = bool(signals) or state.window_changed(self.watermark_s, as_of, self.spec)
        for ts, kind, quantity in signals:
            state.add_signal(ts, kind, quantity)
        if emit:
            yield state.features(item_id, as_of, self.spec)
        state.prune(as_of, self.spec)
        if state.recent or state.rec_impressions or state.rec_clicks:
            yield TaggedOutput("state", (item_id, state))


class ComputeItemFeatures(beam.PTransform):
    """Per item: views, carts, purchases over the short and long windows; recommendation
    impressions, clicks and CTR with a prior; trending score (``pipelines.accumulators``)."""

    def __init__(self, as_of, spec: FeatureSpec, watermark_s: float | None):
        super().__init__()
        self.as_of, self.spec, self.watermark_s = as_of, spec, watermark_s

    def expand(self, inputs):
        keyed = inputs["events"] | "Signals" >> beam.FlatMap(
            lambda e: [(item, (event_seconds(e), kind, qty)) for item, kind, qty in item_signals(e)]
        )
        out = _grouped(inputs, keyed, "Item") | "Fold" >> beam.ParDo(
            _FoldItemSignals(self.spec, self.watermark_s), as_of=AsSingleton(self.as_of)
        ).with_outputs("state", main="features")
        return {"features": out.features, "state": out.state}


def session_lines(event: Any) -> list[tuple[str, tuple[float, str, int, str, str | None]]]:
    """``(session_id, (ts, event_id, line index, item_id, category_id))`` per cart/purchase line."""
    if event.type not in COOCCURRENCE_TYPES:
        return []
    ts, event_id = event_seconds(event), str(event.event_id)
    return [
        (event.session_id, (ts, event_id, index, item_id, category_id))
        for index, (item_id, category_id, _kind, _qty) in enumerate(interactions(event))
    ]


class ComputeItemCooccurrence(beam.PTransform):
    """Per item: top-k items carted or bought in the same sessions, with a cross-category flag
    and score (``pipelines.accumulators``). Input state is a dict of two state collections:
    ``{"events", "sessions": (session_id, SessionState), "state": (item_id, CooccurrenceState)}``.

    Returns:
        ``{"features", "state", "sessions"}``.
    """

    def __init__(self, as_of, spec: FeatureSpec):
        super().__init__()
        self.as_of, self.spec = as_of, spec

    def expand(self, inputs):
        retention = self.spec.state_retention_s

        def fold_session(kv, as_of):
            session_id, groups = kv
            lines = sorted(groups["lines"])
            states = list(groups["state"])
            state: SessionState = states[0] if states else SessionState()
            for ts, _event_id, _index, item_id, category_id in lines:
                yield from state.add(ts, item_id, category_id)
            if as_of is not None and state.last_ts >= as_of - retention:
                yield TaggedOutput("sessions", (session_id, state))

        lines = inputs["events"] | "SessionLines" >> beam.FlatMap(session_lines)
        updates = (
            {"lines": lines, "state": inputs["sessions"]}
            | "SessionGroup" >> beam.CoGroupByKey()
            | "FoldSession" >> beam.FlatMap(fold_session, as_of=AsSingleton(self.as_of)).with_outputs(
                "sessions", main="updates"
            )
        )
        spec = self.spec

        def fold_item(kv):
            item_id, groups = kv
            changes = list(groups["events"])
            states = list(groups["state"])
            state: CooccurrenceState = states[0] if states else CooccurrenceState()
            for partner, dcount, cats in changes:
                state.add(partner, dcount, cats)
            if changes:
                yield state.features(item_id, spec)
            yield TaggedOutput("state", (item_id, state))

        out = _grouped(inputs, updates.updates, "Item") | "FoldItem" >> beam.FlatMap(fold_item).with_outputs(
            "state", main="features"
        )
        return {"features": out.features, "state": out.state, "sessions": updates.sessions}


def _fold_counters(key_name: str, spec: FeatureSpec):
    def fold(kv):
        key, groups = kv
        increments = list(groups["events"])
        states = list(groups["state"])
        state: CounterState = states[0] if states else CounterState()
        for impressions, clicks, purchases in increments:
            state.add(impressions, clicks, purchases)
        if increments:
            yield state.features(key_name, key, spec)
        yield TaggedOutput("state", (key, state))

    return fold


class ComputeBundleFeatures(beam.PTransform):
    """Per bundle: all-time impressions, clicks, purchases and CTR with a prior."""

    def __init__(self, spec: FeatureSpec):
        super().__init__()
        self.spec = spec

    def expand(self, inputs):
        keyed = inputs["events"] | "Signals" >> beam.FlatMap(bundle_signals)
        out = _grouped(inputs, keyed, "Bundle") | "Fold" >> beam.FlatMap(
            _fold_counters("bundle_id", self.spec)
        ).with_outputs("state", main="features")
        return {"features": out.features, "state": out.state}


# Event types attributed to an experiment variant through their request_id.
ATTRIBUTED_TYPES = ("impression", "click", "bundle_purchase")


def variant_of(event: Any) -> str | None:
    """The experiment-variant key of an event (None without both experiment and variant)."""
    return experiment_variant_key(event.experiment, event.variant)


class ComputeExperimentFeatures(beam.PTransform):
    """Per (experiment, variant): impressions, and clicks / bundle purchases attributed through
    ``request_id``. Input ``{"events", "requests": (request_id, RequestState), "state"}``.

    Returns:
        ``{"features", "state", "requests"}``.
    """

    def __init__(self, as_of, spec: FeatureSpec):
        super().__init__()
        self.as_of, self.spec = as_of, spec

    def expand(self, inputs):
        retention = self.spec.state_retention_s

        def fold_request(kv, as_of):
            request_id, groups = kv
            events = sorted(groups["events"], key=lambda e: (0 if e.type == "impression" else 1, *_event_order(e)))
            states = list(groups["state"])
            state: RequestState = states[0] if states else RequestState()
            for event in events:
                yield from state.add(event, variant_of)
            if as_of is not None and state.last_ts >= as_of - retention:
                yield TaggedOutput("requests", (request_id, state))

        keyed = (
            inputs["events"]
            | "Attributed" >> beam.Filter(lambda e: e.type in ATTRIBUTED_TYPES)
            | "ByRequest" >> beam.Map(lambda e: (e.request_id, e))
        )
        attributed = (
            {"events": keyed, "state": inputs["requests"]}
            | "RequestGroup" >> beam.CoGroupByKey()
            | "FoldRequest" >> beam.FlatMap(fold_request, as_of=AsSingleton(self.as_of)).with_outputs(
                "requests", main="increments"
            )
        )
        out = _grouped(inputs, attributed.increments, "Variant") | "Fold" >> beam.FlatMap(
            _fold_counters("experiment_variant", self.spec)
        ).with_outputs("state", main="features")
        return {"features": out.features, "state": out.state, "requests": attributed.requests}
