"""The parse of a Kafka record and the ``EventRow`` the keyed folds read, without Beam.

Its own module so that the Kafka reader process (``pipelines.kafka_reader``) can parse the records
it reads (``parse_ahead``) with the same code the Beam graph runs (``pipelines.transforms``), and
the state selection (``pipelines.state_subset``) parses without importing Beam.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from features.events import EventRejected, event_to_json, parse_event, valid_event_from_json
from pipelines.accumulators import bundle_signals, event_seconds, interactions, item_signals
from pipelines.records import DeadLetter, KafkaRecord, ParsedRecord, ParsedRow

__all__ = [
    "ATTRIBUTED_TYPES",
    "EventRow",
    "event_row",
    "parse_ahead",
    "parse_record",
    "parsed_or_dead_letter",
    "parsed_record_of",
]

# Event types attributed to an experiment variant through their request_id.
ATTRIBUTED_TYPES = ("impression", "click", "bundle_purchase")

# An event as the keyed folds read it, as plain values: made once per event where the lateness
# check reads it (``DropLateEvents(as_rows=True)``), or in the reader process (``parse_ahead``),
# then carried through the de-duplication shuffle and read by every family's keying. Why not the
# event model: it crosses that shuffle pickled and rebuilt by a Python call of its own each way
# (~9 us a round trip: 0.8 s of the 84k-event Taobao batch, measured), and each family read it
# again (type dispatch, ``str`` of its UUID); a tuple of strings, floats and tuples is pickled in C
# (~3.5 us with its JSON). A plain tuple, not a NamedTuple: that pickles through a Python call per
# row again (3x slower, measured).
ROW_ID, ROW_TS, ROW_TYPE, ROW_USER, ROW_SESSION, ROW_LINES, ROW_ITEMS, ROW_BUNDLES, ROW_EVENT, ROW_WIRE, ROW_JSON = range(11)
# (event_id, ts seconds, type, user_id, session_id, ``interactions``, ``item_signals``,
#  ``bundle_signals`` (as tuples), the event model where request attribution reads it
#  (``ATTRIBUTED_TYPES``) else None, the record's value where the strict parse took it else None,
#  the event's canonical JSON where asked for and there is no such value else None)
EventRow = tuple[str, float, str, str, str, tuple[Any, ...], tuple[Any, ...], tuple[Any, ...], Any, "bytes | None", "bytes | None"]


def event_row(event: Any, wire: bytes | None = None, canonical: bool = False) -> EventRow:
    """The ``EventRow`` of a contract event; ``wire``: the value the strict parse took it from;
    ``canonical``: keep its canonical JSON when there is no ``wire`` (de-duplication's tie-break)."""
    kind = event.type
    return (
        str(event.event_id), event_seconds(event), kind, event.user_id, event.session_id,
        tuple(interactions(event)), tuple(item_signals(event)), tuple(bundle_signals(event)),
        event if kind in ATTRIBUTED_TYPES else None,
        wire, event_to_json(event) if canonical and wire is None else None,
    )


# --- the parse ----------------------------------------------------------------------------------


def parse_record(record: KafkaRecord) -> ParsedRecord:
    """Decode and validate one Kafka record; raises ``EventRejected`` with a reason code."""
    if record.value is None:
        raise EventRejected("empty", "record has no value")
    event = valid_event_from_json(record.value)
    if event is not None:
        return ParsedRecord(record.partition, record.offset, event, record.value)
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
    """The dead letter of a record the parse refused."""
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


def parsed_or_dead_letter(record: KafkaRecord) -> ParsedRecord | DeadLetter:
    """The parsed record, or its dead letter where the contract refuses it."""
    # Dead letters of our own rather than with_exception_handling: its dead-letter output carries
    # only the exception's repr, and we need the reason code. Only contract violations are caught.
    try:
        return parse_record(record)
    except EventRejected as exc:
        return _dead_letter(record, exc)


# --- parsed ahead, in the reader process ----------------------------------------------------------


def parse_ahead(records: Sequence[KafkaRecord], share: float = 1.0) -> list[ParsedRow | KafkaRecord]:
    """The first ``share`` of the records parsed: each the strict parse takes as its ``ParsedRow``,
    any other as it is (the Beam run parses it again, with the lenient parse, and dead-letters it
    with its reason there); the rest as they are.

    Why: the reader process reads a large batch on the second core while the Beam run works on the
    chunks before (``pipelines.kafka_reader``). The parse and the rows were ~13 us of the driver's
    CPU per record (1.1-1.5 s of the 84k-event Taobao batch, py-spy), and a row crosses the pipe
    for ~3 us (pickled in C). ``share``: parsing everything there made the reader the slower side
    (the Beam run waited for it); the share balances the two.
    """
    cut = round(len(records) * min(1.0, max(0.0, share)))
    out: list[ParsedRow | KafkaRecord] = []
    for record in records[:cut]:
        event = valid_event_from_json(record.value) if record.value is not None else None
        if event is None:
            out.append(record)
        else:
            out.append(ParsedRow(record.partition, record.offset, event_row(event, record.value, canonical=True)))
    out.extend(records[cut:])
    return out


def parsed_record_of(parsed: ParsedRow) -> ParsedRecord:
    """The ``ParsedRecord`` of a row parsed ahead (its wire form parsed again: for the rare uses
    that need the event model, such as a late event's dead letter)."""
    wire = parsed.row[ROW_WIRE]
    return ParsedRecord(parsed.partition, parsed.offset, valid_event_from_json(wire), wire)
