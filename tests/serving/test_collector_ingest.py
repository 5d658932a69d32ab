"""Body decoding and per-event validation of the collector, without HTTP or Kafka."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone

import pytest

from support import make_event
from serving.collector.ingest import BodyRejected, dead_letter, decode_body, validate_elements
from serving.request_body import may_hold_surrogates
from streamrec.runtime.config import CollectorLimits

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
        (b"[" * 2000 + b"]" * 2000, "application/json", 400, "json_too_deep"),
        (b"[" * 33 + b"]" * 33, "application/json", 400, "json_too_deep"),  # one past the limit
        (b'{"a": [' * 20 + b"1" + b"]}" * 20, "application/json", 400, "json_too_deep"),  # objects count too
        (b"[]", "application/json", 422, "empty_batch"),
        (b"[{}, {}, {}, {}]", "application/json", 413, "batch_too_large"),
        (b"{}\n{}\n{}\n{}", "application/x-ndjson", 413, "batch_too_large"),
        (b"{}", "application/xml", 415, "unsupported_media_type"),
    ],
)
def test_unusable_bodies_are_rejected_whole(body: bytes, content_type: str, status: int, reason: str) -> None:
    with pytest.raises(BodyRejected) as info:
        decode_body(body, content_type, LIMITS)
    assert (info.value.status, info.value.reason) == (status, reason)


def test_nesting_up_to_the_limit_is_parsed_and_brackets_in_strings_do_not_count() -> None:
    assert LIMITS.max_json_depth == 32
    elements, is_batch = decode_body(b"[" * 32 + b"]" * 32, "application/json", LIMITS)
    assert is_batch and len(elements) == 1
    deep_text = json.dumps(make_event(page="[[[[" * 40 + '\\"' + "{" * 40)).encode()
    elements, is_batch = decode_body(deep_text, "application/json", LIMITS)
    assert not is_batch and elements[0]["page"].startswith("[[[[")


def test_ndjson_too_deep_line_rejects_only_that_line() -> None:
    good = [make_event(), make_event()]
    body = "\n".join([json.dumps(good[0]), "[" * 1000 + "]" * 1000, json.dumps(good[1])]).encode()
    elements, is_batch = decode_body(body, "application/x-ndjson", LIMITS)
    result = validate_elements(elements, is_batch, LIMITS, NOW)
    assert [a.index for a in result.accepted] == [0, 2]
    assert [(r.index, r.reason) for r in result.rejected] == [(1, "json_too_deep")]


def test_surrogates_in_ids_reject_only_their_events_with_a_dead_letter_that_encodes() -> None:
    good = [make_event(), make_event()]
    bad_user = make_event(user_id="u\ud800")
    bad_event_id = make_event(event_id="x\udc00")  # a lone low surrogate (a pair would be a character)
    body = json.dumps([good[0], bad_user, bad_event_id, good[1]]).encode()  # ASCII, "\ud800" escapes
    assert b"\\ud800" in body
    elements, is_batch = decode_body(body, "application/json", LIMITS.model_copy(update={"max_batch_events": 4}))
    result = validate_elements(elements, is_batch, LIMITS, NOW)
    assert [a.index for a in result.accepted] == [0, 3]
    assert [(r.index, r.reason) for r in result.rejected] == [(1, "invalid_unicode"), (2, "invalid_unicode")]
    by_index = {r.index: r for r in result.rejected}
    assert by_index[1].detail.startswith("user_id:") and by_index[2].detail.startswith("event_id:")
    # Unusable ids are not used as the DLQ key or named in the record; the other id still is.
    assert (by_index[1].user_id, by_index[1].event_id) == (None, bad_user["event_id"])
    assert (by_index[2].user_id, by_index[2].event_id) == (bad_event_id["user_id"], None)
    for r in result.rejected:
        record = json.loads(dead_letter(r.reason, r.detail, r.raw, NOW, LIMITS, errors=r.errors, index=r.index, event_id=r.event_id))
        assert record["reason"] == "invalid_unicode" and record["batch_index"] == r.index
        assert "\\ud800" in record["raw"] or "\\udc00" in record["raw"]  # the payload as sent, escaped


def test_numeric_event_time_is_a_wrong_type() -> None:
    result = validate_elements([make_event(ts=1511604000), make_event(ts="1511604000")], True, LIMITS, NOW)
    assert [r.reason for r in result.rejected] == ["wrong_type", "wrong_type"]
    assert all("ISO-8601" in r.detail for r in result.rejected)


def test_dead_letter_of_a_detail_with_a_lone_surrogate_is_still_json() -> None:
    record = json.loads(dead_letter("x", "bad \ud800", b"{}", NOW, LIMITS))
    assert record["detail"] == "bad \ud800"


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


def test_a_beacon_body_in_text_plain_is_read_as_json() -> None:
    # navigator.sendBeacon (the tracker's flush when the page is hidden) sends text/plain to avoid a
    # CORS preflight: the same JSON batch must be decoded exactly as an application/json one.
    body = json.dumps([make_event(), make_event("add_to_cart")]).encode()
    as_json = decode_body(body, "application/json", LIMITS)
    assert decode_body(body, "text/plain;charset=UTF-8", LIMITS) == as_json
    assert as_json[1] is True and len(as_json[0]) == 2


def test_the_surrogate_walk_is_skipped_only_for_bodies_that_cannot_hold_one() -> None:
    # Only JSON's \uD800-\uDFFF escapes make a lone surrogate (strict UTF-8 refuses encoded ones).
    assert may_hold_surrogates(b'{"a": "\\ud800"}') and may_hold_surrogates(b'{"a": "\\uDFFF"}')
    assert may_hold_surrogates(b'{"a": "\\ud83d\\ude00"}')  # a valid pair still gets the walk
    assert not may_hold_surrogates(b'{"a": "\\u00e9"}') and not may_hold_surrogates("{\"a\": \"é😀\"}".encode())
    now = datetime.now(timezone.utc)
    good, bad = make_event(), make_event()
    body = json.dumps([good, bad]).replace(bad["user_id"], bad["user_id"] + "\\ud800").encode()
    elements, is_batch = decode_body(body, "application/json", LIMITS)
    result = validate_elements(elements, is_batch, LIMITS, now, surrogates_possible=may_hold_surrogates(body))
    assert [a.index for a in result.accepted] == [0]
    assert [(r.index, r.reason) for r in result.rejected] == [(1, "invalid_unicode")]
    clean = json.dumps([good]).encode()
    elements, is_batch = decode_body(clean, "application/json", LIMITS)
    (accepted,) = validate_elements(elements, is_batch, LIMITS, now, surrogates_possible=may_hold_surrogates(clean)).accepted
    assert accepted.event.received_at == now  # the server's receive time, validated with the event


@pytest.mark.parametrize("form", ["hyphenated", "upper", "braces", "urn", "hex", "digits"])
def test_accepted_event_ids_come_back_canonical_whatever_form_was_sent(form: str) -> None:
    import uuid

    parsed = uuid.UUID(int=0x1234567890) if form == "digits" else uuid.uuid4()  # "digits": no hex letter to lower
    sent = {"hyphenated": str(parsed), "upper": str(parsed).upper(), "braces": "{" + str(parsed) + "}",
            "urn": parsed.urn, "hex": parsed.hex, "digits": str(parsed)}[form]
    result = validate_elements([make_event("view", event_id=sent)], True, CollectorLimits(), datetime.now(timezone.utc))
    if not result.accepted:  # a form the contract refuses: nothing to answer for it
        assert form in ("braces", "urn"), result.rejected
        return
    assert result.accepted[0].event_id == str(parsed) == str(result.accepted[0].event.event_id)
