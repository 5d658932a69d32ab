"""Beam composites of the feature pipeline. No I/O here: sources and sinks live in ``runner``.

The micro-batch composites work on **batched elements**: every PCollection between them holds
lists (a chunk of records, the events of one shard), and per-key state travels as
``(shard, {key: state})``. Keys are spread over ``shards`` shards by a stable hash
(``shard_of``), a batch's values travel as ``(shard, {key: [value, ...]})`` (the items' signals as
``(shard, ItemSignalColumns)``: arrays), each composite groups a shard's values with that shard's
state and folds them with the accumulators of ``pipelines.accumulators``: key by key, the items by
columns (``fold_item_shard``). Why not one element per event: on the local DirectRunner each
element pays the runner's per-element work (windowed values, timestamps, coders at every
shuffle) at every step, which was two thirds of a batch's time (22 s of 84k events, profiled); a
shard is one element. On a cluster runner the shards are the keyed folds'
parallelism. The streaming job (``pipelines.streaming``) keeps one element per event with
per-key state; both fold with the same accumulators, and ``ParseEvents`` (per record) is shared.
Parse, lateness and de-duplication count their records in Beam counters (``pipelines.metrics``).

Each feature composite takes ``{"events": PCollection[list[EventRow]], "state":
PCollection[(shard, {key: State})]}`` (``EventRow``: an event's values as the folds read them,
made once per event; lists of events are taken too) and returns ``{"features":
PCollection[list[dict]], "state": PCollection[(shard, {key: State})]}``; the state carries what
later micro-batches need (see ``pipelines.accumulators`` for the exact feature definitions). A
feature row is emitted for every key the batch touched and for every key one of whose events left
the short or long window while the as-of time advanced (its counts changed); so the latest row of
every key always equals its features as of the latest as-of time.

Example:
    >>> import apache_beam as beam
    >>> from pipelines.transforms import ParseRecordBatches
    >>> with beam.Pipeline() as p:  # doctest: +SKIP
    ...     parsed = p | beam.Create([records]) | ParseRecordBatches()
    ...     parsed["parsed"], parsed["dead_letters"]  # lists of ParsedRecord / DeadLetter
"""

from __future__ import annotations

import json
import zlib
from typing import Any, Callable, Iterable, Iterator, TypeVar

import apache_beam as beam
from apache_beam.pvalue import AsSingleton, PCollection, TaggedOutput

from features.entities import experiment_variant_key
from features.events import event_to_json, valid_event_from_json
from pipelines.accumulators import (
    COOCCURRENCE_TYPES,
    CooccurrenceState,
    CounterState,
    FeatureSpec,
    ItemSignalColumns,
    ItemState,
    LatenessPolicy,
    RequestState,
    SessionState,
    UserState,
    UserUpdate,
    event_seconds,
    fold_item_shard,
    interactions,
)
from pipelines.event_rows import (  # noqa: F401  (ATTRIBUTED_TYPES, parse_record: re-exported for the graph's callers)
    ATTRIBUTED_TYPES,
    ROW_BUNDLES,
    ROW_EVENT,
    ROW_ID,
    ROW_ITEMS,
    ROW_JSON,
    ROW_LINES,
    ROW_SESSION,
    ROW_TS,
    ROW_TYPE,
    ROW_USER,
    ROW_WIRE,
    EventRow,
    event_row,
    parse_record,
    parsed_or_dead_letter,
    parsed_record_of,
)
from pipelines.metrics import count_dead_letters, count_records
from pipelines.packed import Packed
from pipelines.records import DeadLetter, KafkaRecord, ParsedRecord, ParsedRow

__all__ = [
    "ComputeBundleFeatures",
    "ComputeExperimentFeatures",
    "ComputeItemCooccurrence",
    "ComputeItemFeatures",
    "ComputeUserFeatures",
    "DEFAULT_SHARDS",
    "DeduplicateEvents",
    "DropLateEvents",
    "DropProcessedRecords",
    "EventTimeWatermark",
    "event_row",
    "ParseEvents",
    "ParseRecordBatches",
    "shard_of",
    "split_by_shard",
    "split_state_by_shard",
]

# Shards per keyed family when the caller does not say (``pipeline.key_shards`` in the config).
DEFAULT_SHARDS = 16

V = TypeVar("V")
S = TypeVar("S")


def shard_of(key: str, shards: int) -> int:
    """A key's shard: stable across processes and runs (unlike ``hash``), so carried state and new
    values of a key always meet in the same shard."""
    return zlib.crc32(key.encode("utf-8")) % shards


def _group_by_shard(pairs: Iterable[tuple[str, V]], shards: int) -> dict[int, dict[str, list[V]]]:
    """``(key, value)`` pairs -> shard -> key -> the key's values, in the pairs' order."""
    # Grouped by key here, where the pairs are made: a batch repeats keys (a user's events, an
    # item's views), so each key is hashed to its shard and pickled through the shuffle once, and
    # the fold gets its values without regrouping them (~270k pairs a Taobao batch).
    groups: list[dict[str, list[V]]] = [{} for _ in range(shards)]
    values_of: dict[str, list[V]] = {}
    for key, value in pairs:
        values = values_of.get(key)
        if values is None:
            values = values_of[key] = []
            groups[shard_of(key, shards)][key] = values
        values.append(value)
    return {shard: group for shard, group in enumerate(groups) if group}


def split_by_shard(pairs: Iterable[tuple[str, V]], shards: int) -> list[tuple[int, Packed[dict[str, list[V]]]]]:
    """``(key, value)`` pairs -> one ``(shard, Packed({key: [value, ...]}))`` per shard present."""
    return [(shard, Packed(group)) for shard, group in _group_by_shard(pairs, shards).items()]


def split_state_by_shard(state: dict[str, S], shards: int) -> list[tuple[int, Packed[dict[str, S]]]]:
    """A family's ``{key: state}`` -> one ``(shard, Packed({key: state}))`` per shard present."""
    groups: list[dict[str, S]] = [{} for _ in range(shards)]
    for key, value in state.items():
        groups[shard_of(key, shards)][key] = value
    return [(shard, Packed(group)) for shard, group in enumerate(groups) if group]


def _event_order(event: Any) -> tuple[float, str]:
    return (event_seconds(event), str(event.event_id))


def _per_batch(value: Any) -> Any:
    """A per-batch parameter (watermark, processed offsets) as a DoFn argument: a plain value as it
    is, a singleton PCollection as a side input. The micro-batch runner passes PCollections, so
    that one built graph serves every batch (``pipelines.batch_run``)."""
    return AsSingleton(value) if isinstance(value, PCollection) else value


# --- event rows (``pipelines.event_rows``) ------------------------------------------------


def _rows(values: list[Any]) -> list[EventRow]:
    """A batch as ``EventRow``s: rows as they are, events (a composite used on its own) converted."""
    if not values or type(values[0]) is tuple:
        return values
    return [event_row(e) for e in values]


def _row_json(row: EventRow) -> bytes:
    """The canonical JSON of a row's event (computed from its wire form only when a tie needs it)."""
    if row[ROW_JSON] is not None:
        return row[ROW_JSON]
    if row[ROW_WIRE] is None:
        raise ValueError(f"event row {row[ROW_ID]} carries no JSON to break a tie with")
    return event_to_json(valid_event_from_json(row[ROW_WIRE]))


def _time_of(value: Any) -> float:
    """Event time (unix seconds) of an ``EventRow`` or an event."""
    return value[ROW_TS] if type(value) is tuple else event_seconds(value)


def _id_of(value: Any) -> str:
    """Event id of an ``EventRow`` or an event."""
    return value[ROW_ID] if type(value) is tuple else str(value.event_id)


def _json_of(value: Any) -> bytes:
    """Canonical JSON of an ``EventRow``'s or an event's event."""
    return _row_json(value) if type(value) is tuple else event_to_json(value)


# --- parse, lateness, de-duplication ----------------------------------------------------------


def _parse_or_dead_letter(record: KafkaRecord):
    out = parsed_or_dead_letter(record)
    count_records("in")
    if isinstance(out, ParsedRecord):
        count_records("valid")
        yield out
    else:
        count_dead_letters((out.reason,))
        yield TaggedOutput("dead_letters", out)


class ParseEvents(beam.PTransform):
    """Kafka records -> parsed contract events (with their Kafka coordinates), and dead letters.

    Records that are not UTF-8, not JSON or violate the contract go to the dead-letter output
    with the contract's reason code (``invalid_json``, ``missing_field``, ...). Other exceptions
    are bugs and fail the batch (nothing is committed).

    Returns:
        ``{"parsed": ParsedRecord, "dead_letters": DeadLetter}`` (timestamps as they came: the
        streaming source stamps records with their event time; the micro-batch composites need no
        element timestamps: their windows are computed from the events' own times).
    """

    def expand(self, records):
        out = records | "Validate" >> beam.FlatMap(_parse_or_dead_letter).with_outputs("dead_letters", main="parsed")
        return {"parsed": out.parsed, "dead_letters": out.dead_letters}


def _split_outputs(main: list[Any], tag: str, side: list[Any]) -> Iterator[Any]:
    """A batch split in two: the main list and the tagged one, packed; empty lists are not emitted."""
    if main:
        yield Packed(main)
    if side:
        yield TaggedOutput(tag, Packed(side))


class ParseRecordBatches(beam.PTransform):
    """Lists of Kafka records -> lists of parsed events and lists of dead letters (``ParseEvents``
    over batched elements: the same parse, reason codes and failure rule per record).

    Records the reader process parsed already (``ParsedRow``s, from ``pipelines.event_rows.parse_ahead``)
    pass as they are.

    Returns:
        ``{"parsed": Packed[list[ParsedRecord | ParsedRow]], "dead_letters": Packed[list[DeadLetter]]}``
        (empty lists are not emitted).
    """

    def expand(self, batches):
        def parse(records: Packed[list[KafkaRecord | ParsedRow]]):
            parsed: list[ParsedRecord | ParsedRow] = []
            dead: list[DeadLetter] = []
            for record in records.value:
                if type(record) is ParsedRow:
                    parsed.append(record)
                    continue
                out = parsed_or_dead_letter(record)
                (parsed if isinstance(out, ParsedRecord) else dead).append(out)
            count_records("in", len(records.value))
            count_records("valid", len(parsed))
            count_dead_letters(d.reason for d in dead)
            yield from _split_outputs(parsed, "dead_letters", dead)

        out = batches | "Validate" >> beam.FlatMap(parse).with_outputs("dead_letters", main="parsed")
        return {"parsed": out.parsed, "dead_letters": out.dead_letters}


class DropProcessedRecords(beam.PTransform):
    """Drops records at offsets the carried state already includes (a re-run after a crash between
    the state save and the offset commit); they are neither counted again nor sent to the DLQ again.
    Works on lists of anything with ``partition`` and ``offset`` (records, parsed records, dead letters).

    Args:
        processed: partition -> first offset not yet folded into the state (or a singleton
            PCollection of it).
    """

    def __init__(self, processed: dict[int, int] | PCollection):
        super().__init__()
        self.processed = processed if isinstance(processed, PCollection) else dict(processed)

    def expand(self, pcoll):
        def new(batch: Packed[list[Any]], processed: dict[int, int]):
            values = batch.value
            kept = [r for r in values if r.offset >= processed.get(r.partition, 0)]
            if len(kept) == len(values):
                yield batch  # the usual case: keeps its pickled form
            elif kept:
                yield Packed(kept)

        return pcoll | "New" >> beam.FlatMap(new, _per_batch(self.processed))


class DropLateEvents(beam.PTransform):
    """Splits off events behind the watermark by more than the allowed lateness (``LatenessPolicy``).

    Args:
        watermark_s: the watermark before this batch (None: nothing is late), or a singleton
            PCollection of it.
        allowed_lateness_s: how far behind it an event may be.
        as_rows: on-time events as ``EventRow``s (what the micro-batch graph folds), not models.

    Returns:
        ``{"events": lists of on-time events, "dead_letters": lists of DeadLetter(reason="late_event")}``.
    """

    def __init__(self, watermark_s: float | None | PCollection, allowed_lateness_s: int, topic: str = "",
                 as_rows: bool = False):
        super().__init__()
        self.policy = LatenessPolicy(allowed_lateness_s)
        self.watermark_s = watermark_s
        self.topic = topic
        self.as_rows = as_rows

    def expand(self, parsed):
        policy, topic, as_rows = self.policy, self.topic, self.as_rows

        def split(batch: Packed[list[ParsedRecord | ParsedRow]], watermark: float | None):
            on_time, late = [], []
            for record in batch.value:
                if type(record) is ParsedRow:
                    if as_rows:
                        event = record.row
                    else:
                        record = parsed_record_of(record)
                        event = record.event
                else:
                    # A row here, where the record's wire form is at hand (de-duplication's tie-break).
                    event = event_row(record.event, record.wire, canonical=True) if as_rows else record.event
                if policy.is_late(_time_of(event), watermark):
                    late.append(late_dead_letter(record, policy, topic))
                else:
                    on_time.append(event)
            count_records("on_time", len(on_time))
            count_dead_letters(d.reason for d in late)
            yield from _split_outputs(on_time, "late", late)

        out = parsed | "Split" >> beam.FlatMap(split, _per_batch(self.watermark_s)).with_outputs("late", main="events")
        return {"events": out.events, "dead_letters": out.late}


def late_dead_letter(record: ParsedRecord | ParsedRow, policy: LatenessPolicy, topic: str) -> DeadLetter:
    """The dead letter of an event the lateness policy refused."""
    if type(record) is ParsedRow:
        record = parsed_record_of(record)
    return DeadLetter(
        "late_event",
        f"event time {record.event.ts.isoformat()} is more than {policy.allowed_lateness_s}s behind the watermark",
        event_to_json(record.event),
        topic,
        record.partition,
        record.offset,
        str(record.event.event_id),
    )


class EventTimeWatermark(beam.PTransform):
    """The as-of time T: max(previous watermark, largest event time in the batch); a singleton.

    Args:
        floor_s: the watermark before this batch (None: none yet), or a singleton PCollection of it.
    """

    def __init__(self, floor_s: float | None | PCollection):
        super().__init__()
        self.floor_s = floor_s

    def expand(self, events):
        # The floor is applied after the combine: the FnApiRunner runs no CombineFn with a side input.
        return (
            events
            | "EventTime" >> beam.Map(lambda batch: max(_time_of(e) for e in batch.value))
            | "Max" >> beam.CombineGlobally(_largest)
            | "Floor" >> beam.Map(_largest_pair, _per_batch(self.floor_s))
        )


def _largest(times: Iterable[float | None]) -> float | None:
    values = [t for t in times if t is not None]
    return max(values) if values else None


def _largest_pair(a: float | None, b: float | None) -> float | None:
    return _largest((a, b))


# --- keyed folds over shards ------------------------------------------------------------------


def _merged_values(parts: list[dict[str, list[Any]]]) -> dict[str, list[Any]]:
    """A shard's values per key from its parts (``split_by_shard``'s ``{key: [value, ...]}``, one
    per input batch)."""
    values: dict[str, list[Any]] = {}
    for part in parts:
        for key, batch_values in part.items():
            known = values.get(key)
            if known is None:
                values[key] = list(batch_values)
            else:
                known.extend(batch_values)
    return values


# A per-key fold: (key, the batch's values of the key, its carried state or None, as-of time, the
# watermark before the batch) -> (outputs, new state or None to forget the key).
KeyFold = Callable[[str, list[Any], Any, Any, Any], tuple[list[Any], Any]]
# A shard's fold: (the shard's parts, one per input batch, its carried {key: state}, as-of time,
# the watermark before the batch) -> (outputs, {key: state} to keep).
ShardFold = Callable[[list[Any], dict[str, Any], Any, Any], tuple[list[Any], dict[str, Any]]]
# A batch's values by shard: (the batch, shards) -> one (shard, Packed(part)) per shard present.
ShardSplit = Callable[[list[Any], int], list[tuple[int, Packed[Any]]]]


def _key_by_key(fold: KeyFold) -> ShardFold:
    """The ``ShardFold`` that folds every key of a shard with ``fold``: the keys with new values,
    and the keys with only carried state (their windows may have moved)."""

    def fold_shard(parts: list[dict[str, list[Any]]], states: dict[str, Any], as_of: Any, watermark: Any):
        values = _merged_values(parts)
        outputs: list[Any] = []
        kept: dict[str, Any] = {}
        for key in values.keys() | states.keys():
            produced, state = fold(key, values.get(key, []), states.get(key), as_of, watermark)
            outputs.extend(produced)
            if state is not None:
                kept[key] = state
        return outputs, kept

    return fold_shard


def _pairs_by_shard(key_values: Callable[[list[Any]], Iterable[tuple[str, Any]]]) -> ShardSplit:
    """The ``ShardSplit`` of ``(key, value)`` pairs: ``split_by_shard`` of ``key_values(batch)``."""
    return lambda batch, shards: split_by_shard(key_values(batch), shards)


class _FoldShard(beam.DoFn):
    """Folds one shard (its parts and its carried states) with a ``ShardFold``; one list of
    outputs and one ``(shard, {key: state})`` per shard."""

    def __init__(self, fold_shard: ShardFold):
        self.fold_shard = fold_shard

    def process(self, kv, as_of=None, watermark=None):
        shard, groups = kv
        states: dict[str, Any] = {}
        for part in groups["state"]:
            states.update(part.value)
        outputs, kept = self.fold_shard([part.value for part in groups["events"]], states, as_of, watermark)
        if outputs:
            yield Packed(outputs)
        yield TaggedOutput("state", (shard, Packed(kept)))


class _KeyedFold(beam.PTransform):
    """Split each batch by shard with ``split``, meet the carried state per shard, fold each shard
    with ``fold_shard`` (``_key_by_key`` of a per-key fold, or a fold of its own by columns).

    Returns:
        ``{"outputs": lists of what the fold produced, "state": (shard, {key: state})}``.
    """

    def __init__(self, split: ShardSplit, fold_shard: ShardFold, shards: int, as_of=None, watermark=None):
        super().__init__()
        self.split, self.fold_shard, self.shards, self.as_of, self.watermark = split, fold_shard, shards, as_of, watermark

    def expand(self, inputs):
        split, shards = self.split, self.shards
        keyed = inputs["events"] | "ByShard" >> beam.FlatMap(lambda batch: split(batch.value, shards))
        side = {"as_of": AsSingleton(self.as_of)} if self.as_of is not None else {}
        side["watermark"] = _per_batch(self.watermark)
        out = (
            {"events": keyed, "state": inputs["state"]}
            | "Group" >> beam.CoGroupByKey()
            | "Fold" >> beam.ParDo(_FoldShard(self.fold_shard), **side).with_outputs("state", main="outputs")
        )
        return {"outputs": out.outputs, "state": out.state}


# --- de-duplication ---------------------------------------------------------------------------


def _first_copy(copies: list[Any]) -> Any:
    """The copy of an event id that wins: the one with the smallest canonical JSON, so the choice
    does not depend on arrival order."""
    return copies[0] if len(copies) == 1 else min(copies, key=_json_of)


def _split_copies_by_shard(events: list[Any], shards: int) -> list[tuple[int, Packed[list[Any]]]]:
    """Each event (or row) in its id's shard, one list per shard present. Not ``split_by_shard``'s
    ``{id: [copy, ...]}``: ids are nearly all distinct, and a list per event made the shuffle
    slower to pickle and rebuild (0.1 s of the 84k-event Taobao batch, measured)."""
    groups: list[list[Any]] = [[] for _ in range(shards)]
    for event in events:
        groups[shard_of(_id_of(event), shards)].append(event)
    return [(shard, Packed(group)) for shard, group in enumerate(groups) if group]


def _copies_by_id(parts: Iterable[Packed[list[Any]]]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """A shard's events by id: the first copy of each id, in arrival order, and every copy (in
    arrival order) of the ids that came more than once."""
    first: dict[str, Any] = {}
    more: dict[str, list[Any]] = {}
    for part in parts:
        for event in part.value:
            event_id = _id_of(event)
            known = first.get(event_id)
            if known is None:
                first[event_id] = event
            else:
                more.setdefault(event_id, [known]).append(event)
    return first, more


class DeduplicateEvents(beam.PTransform):
    """Keeps the first copy of each ``event_id`` across this and earlier batches.

    Input ``{"events": lists of ``EventRow`` (or of events), "seen": (shard, {event_id: ts})}``;
    ids are remembered while their event time is within ``allowed_lateness_s`` of the as-of time
    (older copies are late anyway). An id's copies and its memory meet in the id's shard.

    Returns:
        ``{"events": lists of new unique events (rows where rows came in), "seen": (shard,
        {event_id: ts}), "duplicates": lists of the event ids dropped}``.
    """

    def __init__(self, as_of, allowed_lateness_s: int, shards: int = DEFAULT_SHARDS):
        super().__init__()
        self.as_of = as_of
        self.allowed_lateness_s = allowed_lateness_s
        self.shards = shards

    def expand(self, inputs):
        lateness, shards = self.allowed_lateness_s, self.shards

        def pick(kv, as_of):
            shard, groups = kv
            first, more = _copies_by_id(groups["events"])
            seen: dict[str, float] = {}
            for part in groups["state"]:
                seen.update(part.value)
            unique, duplicates = [], []
            # Ids are remembered while their event time is within the lateness of the as-of time.
            floor = None if as_of is None else as_of - lateness
            remembered = {} if floor is None else {k: ts for k, ts in seen.items() if ts >= floor}
            for event_id, event in first.items():
                copies = more.get(event_id)
                if event_id in seen:  # processed in an earlier batch: every copy is a duplicate
                    duplicates.extend([event_id] * (len(copies) if copies else 1))
                    continue
                if copies:
                    duplicates.extend([event_id] * (len(copies) - 1))
                    event = _first_copy(copies)
                unique.append(event)
                if floor is not None:
                    ts = _time_of(event)
                    if ts >= floor:
                        remembered[event_id] = ts
            count_records("out", len(unique))
            yield from _split_outputs(unique, "duplicates", duplicates)
            yield TaggedOutput("seen", (shard, Packed(remembered)))

        out = (
            {
                "events": inputs["events"] | "ByShard" >> beam.FlatMap(lambda batch: _split_copies_by_shard(batch.value, shards)),
                "state": inputs["seen"],
            }
            | "Group" >> beam.CoGroupByKey()
            | "Pick" >> beam.FlatMap(pick, as_of=AsSingleton(self.as_of)).with_outputs("seen", "duplicates", main="events")
        )
        return {"events": out.events, "seen": out.seen, "duplicates": out.duplicates}


# --- features ---------------------------------------------------------------------------------


def _user_fold(spec: FeatureSpec) -> KeyFold:
    def fold(user_id: str, updates: list[Any], state: UserState | None, as_of: float | None, watermark_s: float | None):
        if as_of is None:
            return [], state
        state = state or UserState()
        emit = bool(updates) or state.window_changed(watermark_s, as_of, spec)
        state.add_updates(sorted(updates), spec)
        rows = [state.features(user_id, as_of, spec)] if emit else []
        state.prune(as_of, spec)
        return rows, state

    return fold


def _user_update_values(batch: list[Any]) -> Iterator[tuple[str, UserUpdate]]:
    """``(user_id, user_update)`` of each event of a batch (``user_update``'s form, from its row)."""
    for row in _rows(batch):
        yield row[ROW_USER], (row[ROW_TS], row[ROW_ID], row[ROW_TYPE], row[ROW_LINES])


class ComputeUserFeatures(beam.PTransform):
    """Per user: last-seen, last-N interaction sequence, counts per type over the short and long
    windows, top categories by time-decayed affinity (definitions in ``pipelines.accumulators``).

    Args:
        as_of: singleton PCollection with the as-of time T (``EventTimeWatermark``).
        spec: windows and sizes.
        watermark_s: the watermark before this batch, or a singleton PCollection of it.
        shards: how many shards the users are spread over.
    """

    def __init__(self, as_of, spec: FeatureSpec, watermark_s: float | None | PCollection, shards: int = DEFAULT_SHARDS):
        super().__init__()
        self.as_of, self.spec, self.watermark_s, self.shards = as_of, spec, watermark_s, shards

    def expand(self, inputs):
        out = inputs | "Fold" >> _KeyedFold(_pairs_by_shard(_user_update_values), _key_by_key(_user_fold(self.spec)),
                                            self.shards, self.as_of, self.watermark_s)
        return {"features": out["outputs"], "state": out["state"]}


def _item_shard_fold(spec: FeatureSpec) -> ShardFold:
    def fold_shard(parts: list[ItemSignalColumns], states: dict[str, ItemState], as_of: float | None,
                   watermark_s: float | None):
        return fold_item_shard(parts, states, as_of, watermark_s, spec)

    return fold_shard


def _item_signal_values(batch: list[Any]) -> list[tuple[str, float, str, int]]:
    """``(item_id, ts, kind, quantity)`` of each item signal of a batch's rows."""
    return [(item, row[ROW_TS], kind, quantity) for row in _rows(batch) for item, kind, quantity in row[ROW_ITEMS]]


def _item_signals_by_shard(batch: list[Any], shards: int) -> list[tuple[int, Packed[ItemSignalColumns]]]:
    """A batch's item signals by columns (``ItemSignalColumns``), split by their item's shard.
    Why columns: the items' fold sums them in numpy (``fold_item_shard``), and a shard's signals
    cross the shuffle as a few arrays instead of a list per item."""
    columns = ItemSignalColumns.of(_item_signal_values(batch))
    return [(shard, Packed(part)) for shard, part in columns.by_group((shard_of(item, shards) for item in columns.items), shards)]


class ComputeItemFeatures(beam.PTransform):
    """Per item: views, carts, purchases over the short and long windows; recommendation
    impressions, clicks and CTR with a prior; trending score (``pipelines.accumulators``)."""

    def __init__(self, as_of, spec: FeatureSpec, watermark_s: float | None | PCollection, shards: int = DEFAULT_SHARDS):
        super().__init__()
        self.as_of, self.spec, self.watermark_s, self.shards = as_of, spec, watermark_s, shards

    def expand(self, inputs):
        out = inputs | "Fold" >> _KeyedFold(
            _item_signals_by_shard, _item_shard_fold(self.spec), self.shards, self.as_of, self.watermark_s
        )
        return {"features": out["outputs"], "state": out["state"]}


def session_lines(event: Any) -> list[tuple[str, tuple[float, str, int, str, str | None]]]:
    """``(session_id, (ts, event_id, line index, item_id, category_id))`` per cart/purchase line."""
    if event.type not in COOCCURRENCE_TYPES:
        return []
    ts, event_id = event_seconds(event), str(event.event_id)
    return [
        (event.session_id, (ts, event_id, index, item_id, category_id))
        for index, (item_id, category_id, _kind, _qty) in enumerate(interactions(event))
    ]


def _session_line_values(batch: list[Any]) -> Iterator[tuple[str, tuple[float, str, int, str, str | None]]]:
    """``session_lines`` of each event of a batch, from its row."""
    for row in _rows(batch):
        if row[ROW_TYPE] in COOCCURRENCE_TYPES:
            ts, event_id, session_id = row[ROW_TS], row[ROW_ID], row[ROW_SESSION]
            for index, (item_id, category_id, _kind, _qty) in enumerate(row[ROW_LINES]):
                yield session_id, (ts, event_id, index, item_id, category_id)


def _session_fold(retention_s: int) -> KeyFold:
    def fold(session_id: str, lines: list[Any], state: SessionState | None, as_of: float | None, _watermark: Any):
        state = state or SessionState()
        updates = [u for ts, _id, _index, item_id, category_id in sorted(lines) for u in state.add(ts, item_id, category_id)]
        keep = as_of is not None and state.last_ts >= as_of - retention_s
        return updates, (state if keep else None)

    return fold


def _cooccurrence_fold(spec: FeatureSpec) -> KeyFold:
    def fold(item_id: str, changes: list[Any], state: CooccurrenceState | None, _as_of: Any, _watermark: Any):
        state = state or CooccurrenceState()
        for partner, dcount, cats in changes:
            state.add(partner, dcount, cats)
        return ([state.features(item_id, spec)] if changes else []), state

    return fold


class ComputeItemCooccurrence(beam.PTransform):
    """Per item: top-k items carted or bought in the same sessions, with a cross-category flag
    and score (``pipelines.accumulators``). Input state is a dict of two state collections:
    ``{"events", "sessions": (shard, {session_id: SessionState}), "state": (shard, {item_id:
    CooccurrenceState})}``.

    Returns:
        ``{"features", "state", "sessions"}``.
    """

    def __init__(self, as_of, spec: FeatureSpec, shards: int = DEFAULT_SHARDS):
        super().__init__()
        self.as_of, self.spec, self.shards = as_of, spec, shards

    def expand(self, inputs):
        sessions = {"events": inputs["events"], "state": inputs["sessions"]} | "Sessions" >> _KeyedFold(
            _pairs_by_shard(_session_line_values),
            _key_by_key(_session_fold(self.spec.state_retention_s)), self.shards, self.as_of,
        )
        items = {"events": sessions["outputs"], "state": inputs["state"]} | "Items" >> _KeyedFold(
            _pairs_by_shard(lambda updates: updates), _key_by_key(_cooccurrence_fold(self.spec)), self.shards,
        )
        return {"features": items["outputs"], "state": items["state"], "sessions": sessions["state"]}


def _counter_fold(key_name: str, spec: FeatureSpec) -> KeyFold:
    def fold(key: str, increments: list[tuple[int, int, int]], state: CounterState | None, _as_of: Any, _watermark: Any):
        state = state or CounterState()
        for impressions, clicks, purchases in increments:
            state.add(impressions, clicks, purchases)
        return ([state.features(key_name, key, spec)] if increments else []), state

    return fold


class ComputeBundleFeatures(beam.PTransform):
    """Per bundle: all-time impressions, clicks, purchases and CTR with a prior."""

    def __init__(self, spec: FeatureSpec, shards: int = DEFAULT_SHARDS):
        super().__init__()
        self.spec, self.shards = spec, shards

    def expand(self, inputs):
        out = inputs | "Fold" >> _KeyedFold(
            _pairs_by_shard(lambda batch: (signal for row in _rows(batch) for signal in row[ROW_BUNDLES])),
            _key_by_key(_counter_fold("bundle_id", self.spec)), self.shards,
        )
        return {"features": out["outputs"], "state": out["state"]}


def variant_of(event: Any) -> str | None:
    """The experiment-variant key of an event (None without both experiment and variant)."""
    return experiment_variant_key(event.experiment, event.variant)


def _request_order(event: Any) -> tuple[int, float, str]:
    # The impression first, so a click in the same batch is attributed at once.
    return (0 if event.type == "impression" else 1, *_event_order(event))


def _request_fold(retention_s: int) -> KeyFold:
    def fold(request_id: str, events: list[Any], state: RequestState | None, as_of: float | None, _watermark: Any):
        state = state or RequestState()
        increments = [i for event in sorted(events, key=_request_order) for i in state.add(event, variant_of)]
        keep = as_of is not None and state.last_ts >= as_of - retention_s
        return increments, (state if keep else None)

    return fold


class ComputeExperimentFeatures(beam.PTransform):
    """Per (experiment, variant): impressions, and clicks / bundle purchases attributed through
    ``request_id``. Input ``{"events", "requests": (shard, {request_id: RequestState}), "state"}``.

    Returns:
        ``{"features", "state", "requests"}``.
    """

    def __init__(self, as_of, spec: FeatureSpec, shards: int = DEFAULT_SHARDS):
        super().__init__()
        self.as_of, self.spec, self.shards = as_of, spec, shards

    def expand(self, inputs):
        requests = {"events": inputs["events"], "state": inputs["requests"]} | "Requests" >> _KeyedFold(
            # The row keeps the event model of exactly the ATTRIBUTED_TYPES.
            _pairs_by_shard(lambda batch: ((row[ROW_EVENT].request_id, row[ROW_EVENT])
                                           for row in _rows(batch) if row[ROW_EVENT] is not None)),
            _key_by_key(_request_fold(self.spec.state_retention_s)), self.shards, self.as_of,
        )
        variants = {"events": requests["outputs"], "state": inputs["state"]} | "Variants" >> _KeyedFold(
            _pairs_by_shard(lambda increments: increments), _key_by_key(_counter_fold("experiment_variant", self.spec)),
            self.shards,
        )
        return {"features": variants["outputs"], "state": variants["state"], "requests": requests["state"]}
