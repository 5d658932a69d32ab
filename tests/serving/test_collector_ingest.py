"""Body decoding and per-event validation of the collector, without HTTP or Kafka."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone

import pytest

from support import make_event
from serving.collector.ingest import BodyRejected, dead_letter, decode_body, validate_elements
from streamrec.config import CollectorLimits

LIMITS = CollectorLimits(max_body_bytes=4096, max_batch_events=3)
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("body", "content_type", "status", "reason"),
    [
        (b"", "application/json", 400, "empty_body"),
        (b"  \n", "application/json", 400, "empty_body"),
        (b"\xff\xfe{}", "application/json", 400, "invalid_utf8"),
        (b'{"a":', "application/json", 400, "invalid_json"),
        (b'{"a": 1, "a": 2}', "application/json", 400, "duplicate_key"),
        (b'{"price": NaN}', "application/json", 400, "not_a_finite_number"),
        (b'{"price": Infinity}', "application/json", 400, "not_a_finite_number"),
        (b"[" * 3000 + b"]" * 3000, "application/json", 413, "body_too_large"),
        (b"[" * 2000 + b"]" * 2000, "application/json", 400, "invalid_json"),
        (b"[]", "application/json", 422, "empty_batch"),
        (b"[{}, {}, {}, {}]", "application/json", 413, "batch_too_large"),
        (b"{}\n{}\n{}\n{}", "application/x-ndjson", 413, "batch_too_large"),
        (b"{}", "text/plain", 415, "unsupported_media_type"),
    ],
)
def test_unusable_bodies_are_rejected_whole(body: bytes, content_type: str, status: int, reason: str) -> None:
    with pytest.raises(BodyRejected) as info:
        decode_body(body, content_type, LIMITS)
    assert (info.value.status, info.value.reason) == (status, reason)


def test_missing_content_type_is_read_as_json() -> None:
    elements, is_batch = decode_body(json.dumps(make_event()).encode(), "", LIMITS)
    assert len(elements) == 1 and not is_batch


def test_ndjson_bad_line_rejects_only_that_line() -> None:
    good = [make_event(), make_event()]
    body = "\n".join([json.dumps(good[0]), '{"broken":', json.dumps(good[1])]).encode()
    elements, is_batch = decode_body(body, "application/x-ndjson", LIMITS)
    result = validate_elements(elements, is_batch, LIMITS, NOW)
    assert [a.index for a in result.accepted] == [0, 2]
    assert [(r.index, r.reason) for r in result.rejected] == [(1, "invalid_json")]


def test_client_receive_time_is_replaced_by_the_server_time() -> None:
    event = make_event(received_at="2001-01-01T00:00:00Z")
    result = validate_elements([event], False, LIMITS, NOW)
    assert result.accepted[0].event.received_at == NOW


def test_lone_surrogate_is_rejected_not_crashing() -> None:
    elements, _ = decode_body(b'{"page": "\\ud800"}', "application/json", LIMITS)
    event = {**make_event(), **elements[0]}
    result = validate_elements([event], False, LIMITS, NOW)
    assert result.rejected[0].reason == "invalid_unicode"


def test_dead_letter_keeps_binary_payloads_as_base64_and_marks_truncation() -> None:
    raw = b"\xff" * 300
    small = CollectorLimits(dlq_max_raw_bytes=256)
    record = json.loads(dead_letter("invalid_utf8", "x", raw, NOW, small))
    assert record["raw_encoding"] == "base64"
    assert base64.b64decode(record["raw"]) == raw[:256]
    assert record["truncated"] is True and record["raw_size"] == 300
    assert record["received_at"] == "2026-01-01T00:00:00Z"
