"""Turning a request body into validated events and dead letters (no I/O here).

A body is one JSON event, a JSON array of events, or NDJSON (one event per line). A problem with
the whole body (not UTF-8, not JSON, too large, empty) rejects the body; a problem with one event
rejects that event only, and the rest of the batch is kept.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

from features.events import Event, EventRejected, ValidationContext, event_to_json, lone_surrogate_at, parse_event
from serving.request_body import BodyLimits, BodyRejected, check_json_depth, json_nesting_depth
from streamrec.runtime.config import CollectorLimits

NDJSON_CONTENT_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")
# text/plain too: navigator.sendBeacon sends it without a CORS preflight (the tracker's page-hide flush).
JSON_CONTENT_TYPES = ("application/json", "text/json", "text/plain")

DLQ_SOURCE = "collector"


__all__ = ["BodyRejected", "IngestResult", "body_limits", "dead_letter", "decode_body", "validate_elements"]


def body_limits(limits: CollectorLimits) -> BodyLimits:
    """The request-body bounds of the collector (size, read time, JSON depth)."""
    return BodyLimits(limits.max_body_bytes, limits.body_read_timeout_s, limits.max_json_depth)


@dataclass
class Accepted:
    index: int
    event: Event
    wire: bytes
    event_id: str  # canonical text (as str(UUID) writes it)


@dataclass
class Rejected:
    index: int
    reason: str
    detail: str
    raw: bytes
    errors: list[dict[str, Any]] = field(default_factory=list)
    user_id: str | None = None
    event_id: str | None = None


@dataclass
class IngestResult:
    accepted: list[Accepted]
    rejected: list[Rejected]
    is_batch: bool


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(f"duplicate key {key!r} in a JSON object")
        self.key = key


def _reject_constant(name: str) -> Any:
    raise _NonFiniteNumber(name)


class _NonFiniteNumber(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"{name} is not valid JSON (numbers must be finite)")


def _loads(text: str) -> Any:
    """Strict JSON: no duplicate keys, no NaN/Infinity (Python's json accepts both by default)."""
    return json.loads(text, object_pairs_hook=_reject_duplicate_keys, parse_constant=_reject_constant)


def _classify_json_error(exc: Exception) -> tuple[str, str]:
    if isinstance(exc, _DuplicateKey):
        return "duplicate_key", str(exc)
    if isinstance(exc, _NonFiniteNumber):
        return "not_a_finite_number", str(exc)
    if isinstance(exc, RecursionError):  # not reached: the depth is checked before parsing
        return "json_too_deep", "JSON nesting is too deep"
    return "invalid_json", f"not valid JSON: {exc}"


def decode_body(body: bytes, content_type: str, limits: CollectorLimits) -> tuple[list[Any], bool]:
    """Split a body into decoded JSON elements (or per-line errors for NDJSON).

    Returns:
        (elements, is_batch): each element is a decoded JSON value, or a `Rejected` placeholder
        for an NDJSON line that failed to decode.

    Raises:
        BodyRejected: the body as a whole cannot be used.
    """
    if len(body) > limits.max_body_bytes:
        raise BodyRejected(413, "body_too_large", f"body is {len(body)} bytes; the limit is {limits.max_body_bytes}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyRejected(400, "invalid_utf8", f"body is not UTF-8: {exc}") from None
    if not text.strip():
        raise BodyRejected(400, "empty_body", "the body is empty; send one event, a JSON array, or NDJSON")
    media_type = content_type.split(";")[0].strip().lower()
    if media_type in NDJSON_CONTENT_TYPES:
        return _decode_ndjson(text, limits), True
    if media_type and media_type not in JSON_CONTENT_TYPES:
        raise BodyRejected(415, "unsupported_media_type", f"Content-Type {media_type!r}; use application/json or application/x-ndjson")
    check_json_depth(body, limits.max_json_depth)
    try:
        value = _loads(text)
    except (ValueError, RecursionError) as exc:
        reason, detail = _classify_json_error(exc)
        raise BodyRejected(400, reason, detail) from None
    if isinstance(value, list):
        _check_batch_size(len(value), limits)
        return value, True
    return [value], False


def _decode_ndjson(text: str, limits: CollectorLimits) -> list[Any]:
    lines = [line for line in text.splitlines() if line.strip()]
    _check_batch_size(len(lines), limits)
    # One scan of the whole body; only if it is too deep somewhere, one per line to find where.
    too_deep = json_nesting_depth(text.encode("utf-8")) > limits.max_json_depth
    elements: list[Any] = []
    for index, line in enumerate(lines):
        if too_deep and (depth := json_nesting_depth(line.encode("utf-8"))) > limits.max_json_depth:
            detail = f"line {index + 1}: JSON is nested {depth} levels deep; the limit is {limits.max_json_depth}"
            elements.append(Rejected(index, "json_too_deep", detail, line.encode("utf-8")))
            continue
        try:
            elements.append(_loads(line))
        except (ValueError, RecursionError) as exc:
            reason, detail = _classify_json_error(exc)
            elements.append(Rejected(index, reason, f"line {index + 1}: {detail}", line.encode("utf-8", "replace")))
    return elements


def _check_batch_size(count: int, limits: CollectorLimits) -> None:
    if count == 0:
        raise BodyRejected(422, "empty_batch", "the batch holds no events")
    if count > limits.max_batch_events:
        raise BodyRejected(413, "batch_too_large", f"batch holds {count} events; the limit is {limits.max_batch_events}")


def validate_elements(elements: list[Any], is_batch: bool, limits: CollectorLimits, now: datetime,
                      surrogates_possible: bool = True) -> IngestResult:
    """Validate each decoded element against the event contract; stamp the receive time.
    ``surrogates_possible`` False (``serving.request_body.may_hold_surrogates`` of the body) skips the per-event walk."""
    context = ValidationContext(
        now=now,
        may_hold_surrogates=surrogates_possible,
        max_future_skew=timedelta(seconds=limits.max_future_skew_s),
        max_id_chars=limits.max_id_chars,
        max_text_chars=limits.max_text_chars,
        max_list_items=limits.max_list_items,
    )
    accepted: list[Accepted] = []
    rejected: list[Rejected] = []
    for index, element in enumerate(elements):
        if isinstance(element, Rejected):
            rejected.append(element)
            continue
        outcome = _validate_one(index, element, context, now)
        (accepted if isinstance(outcome, Accepted) else rejected).append(outcome)
    return IngestResult(accepted, rejected, is_batch)


def _validate_one(index: int, element: Any, context: ValidationContext, now: datetime) -> Accepted | Rejected:
    try:
        # The client may not set the receive time: ours replaces theirs before validating (validated
        # with the event rather than copied in after: a model copy per event cost ~20% of this).
        payload = {**element, "received_at": now} if isinstance(element, dict) else element
        event = parse_event(payload, context)
        wire = event_to_json(event)
    except EventRejected as exc:
        # The element as received goes to the dead-letter topic (serialised only for the rejected).
        return Rejected(index, exc.reason, exc.detail, _reserialize(element), exc.errors, *_identity(element))
    except UnicodeEncodeError as exc:
        return Rejected(index, "invalid_unicode", f"a string is not valid Unicode: {exc.reason}", _reserialize(element), [],
                        *_identity(element))
    return Accepted(index, event, wire, _canonical_id(element["event_id"], event.event_id))


def _canonical_id(sent: Any, parsed: UUID) -> str:
    """The event_id as ``str(parsed)`` writes it: the text the client sent where it already is that
    (lowercase, 8-4-4-4-12; pydantic parsed it as this UUID, so those are hex digits), as it almost
    always is. ``str(UUID)`` is Python code: ~1.7 of the ~3.7 us an event's line in a batch's response
    cost."""
    if (isinstance(sent, str) and len(sent) == 36 and sent[8] == sent[13] == sent[18] == sent[23] == "-"
            and sent.lower() == sent):
        return sent
    return str(parsed)


def _reserialize(element: Any) -> bytes:
    return json.dumps(element, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _identity(element: Any) -> tuple[str | None, str | None]:
    """user_id and event_id of a rejected element when they are usable strings (for the DLQ key)."""
    if not isinstance(element, dict):
        return None, None
    user_id, event_id = element.get("user_id"), element.get("event_id")
    # Only strings that can be encoded (a lone surrogate cannot): they become a Kafka key, and go
    # into the dead letter and the response.
    ok = lambda v: isinstance(v, str) and 0 < len(v) <= 256 and lone_surrogate_at(v) is None  # noqa: E731
    return (user_id if ok(user_id) else None), (event_id if ok(event_id) else None)


def dead_letter(
    reason: str,
    detail: str,
    raw: bytes,
    received_at: datetime,
    limits: CollectorLimits,
    *,
    errors: list[dict[str, Any]] | None = None,
    index: int | None = None,
    event_id: str | None = None,
    original_size: int | None = None,
    source: str = DLQ_SOURCE,
) -> bytes:
    """The dead-letter record: the raw payload (text if UTF-8, else base64), a reason, the receive time."""
    kept = raw[: limits.dlq_max_raw_bytes]
    try:
        raw_text, encoding = kept.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        raw_text, encoding = base64.b64encode(kept).decode("ascii"), "base64"
    record = {
        "reason": reason,
        "detail": detail,
        "errors": errors or [],
        "source": source,
        "received_at": received_at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z"),
        "batch_index": index,
        "event_id": event_id,
        "raw": raw_text,
        "raw_encoding": encoding,
        "raw_size": original_size if original_size is not None else len(raw),
        "truncated": len(kept) < (original_size if original_size is not None else len(raw)),
    }
    try:
        return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate in a detail: escaped, the record is still JSON
        return json.dumps(record, ensure_ascii=True, separators=(",", ":")).encode("ascii")
