"""The event contract: what it accepts, what it rejects and why, and its published JSON Schema."""

from __future__ import annotations

import json
import pickle
from datetime import datetime, timedelta, timezone

import pytest

from support import make_event
from features.events import (
    EVENT_TYPES,
    EventRejected,
    ValidationContext,
    event_from_json,
    event_json_schema,
    event_to_json,
    lone_surrogate_at,
    parse_event,
    valid_event_from_json,
)
from features.schema import SCHEMA_FILE, render_schema

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
CTX = ValidationContext(now=NOW)

VALID_BY_TYPE = {
    "view": make_event("view", category_id="c1", price=9.5),
    "add_to_cart": make_event("add_to_cart", quantity=2),
    "remove_from_cart": make_event("remove_from_cart"),
    "favorite": make_event("favorite"),
    "purchase": make_event("purchase", items=[{"item_id": "a", "quantity": 2, "price": 3.0}], currency="EUR"),
    "search": make_event("search", query="red shoes", result_item_ids=["a", "b"]),
    "impression": make_event(
        "impression",
        request_id="r1",
        surface="bundles",
        slots=[{"id": "b1", "position": 0, "propensity": 0.6}, {"id": "b2", "position": 1, "propensity": 0.4}],
        policy="linucb",
        experiment="exp1",
        variant="treatment",
    ),
    "click": make_event("click", request_id="r1", bundle_id="b1", position=0),
    "bundle_purchase": make_event("bundle_purchase", request_id="r1", bundle_id="b1", items=[{"item_id": "a"}]),
}


def test_every_event_type_has_a_valid_example() -> None:
    assert set(VALID_BY_TYPE) == set(EVENT_TYPES)


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_valid_events_round_trip_through_the_wire_form(event_type: str) -> None:
    event = parse_event(VALID_BY_TYPE[event_type], CTX)
    assert event.type == event_type
    again = event_from_json(event_to_json(event))
    assert again == event
    # The wire form is what the client sent: no defaults injected.
    assert json.loads(event_to_json(event)) == VALID_BY_TYPE[event_type]


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_events_survive_pickling_exactly(event_type: str) -> None:
    # The pipeline's shuffles pickle events through a compact form of their own (_Strict.__reduce__).
    payload = {**VALID_BY_TYPE[event_type], "ts": "2017-11-25T18:00:00.123457+08:00"}
    event = parse_event(payload, CTX)
    again = pickle.loads(pickle.dumps(event, protocol=pickle.HIGHEST_PROTOCOL))
    assert type(again) is type(event)
    assert again == event and again.__dict__ == event.__dict__
    assert again.ts.tzinfo is timezone.utc and again.ts.microsecond == 123457
    assert again.__pydantic_fields_set__ == event.__pydantic_fields_set__
    assert event_to_json(again) == event_to_json(event)
    assert pickle.loads(pickle.dumps(again)) == event


def test_event_time_is_normalised_to_utc() -> None:
    event = parse_event(make_event(ts="2017-11-25T18:00:00+08:00"), CTX)
    assert event.ts == datetime(2017, 11, 25, 10, 0, tzinfo=timezone.utc)
    assert json.loads(event_to_json(event))["ts"] == "2017-11-25T10:00:00Z"


REJECTIONS = [
    ("missing item_id", make_event("view", item_id=None), "wrong_type"),
    ("missing user_id", {k: v for k, v in make_event().items() if k != "user_id"}, "missing_field"),
    ("missing schema_version", {k: v for k, v in make_event().items() if k != "schema_version"}, "missing_field"),
    ("int id", make_event(item_id=5), "wrong_type"),
    ("string quantity", make_event("add_to_cart", quantity="3"), "wrong_type"),
    ("bool quantity", make_event("add_to_cart", quantity=True), "wrong_type"),
    ("zero quantity", make_event("add_to_cart", quantity=0), "out_of_range"),
    ("negative price", make_event(price=-1.0), "out_of_range"),
    ("nan price", make_event(price=float("nan")), "not_a_finite_number"),
    ("future ts", make_event(ts=(NOW + timedelta(days=1)).isoformat()), "timestamp_out_of_range"),
    ("ts before 2000", make_event(ts="1999-12-31T23:59:59Z"), "timestamp_out_of_range"),
    ("naive ts", make_event(ts="2017-11-25T10:00:00"), "timestamp_without_timezone"),
    ("oversize id", make_event(item_id="x" * 65), "field_too_large"),
    ("id with spaces", make_event(item_id="a b"), "invalid_field"),
    ("unknown field", make_event(extra={"nested": [1, 2]}), "unknown_field"),
    ("unknown type", make_event("teleport"), "unknown_event_type"),
    ("schema v2", make_event(schema_version=2), "unsupported_schema_version"),
    ("schema as string", make_event(schema_version="1"), "unsupported_schema_version"),
    ("bad uuid", make_event(event_id="not-a-uuid"), "wrong_type"),
    ("not an object", [1, 2], "not_an_object"),
    ("empty purchase", make_event("purchase", items=[]), "invalid_field"),
    ("propensity > 1", make_event("impression", request_id="r", surface="bundles", slots=[{"id": "b", "position": 0, "propensity": 1.5}]), "out_of_range"),
    ("duplicate slot positions", make_event("impression", request_id="r", surface="bundles", slots=[{"id": "a", "position": 0}, {"id": "b", "position": 0}]), "invalid_field"),
    ("click on nothing", make_event("click", request_id="r"), "invalid_field"),
    ("bad currency", make_event("purchase", items=[{"item_id": "a"}], currency="euro"), "invalid_field"),
    # Times are ISO-8601 strings only: pydantic alone would read epoch seconds, even in a string.
    ("epoch ts", make_event(ts=1511604000), "wrong_type"),
    ("epoch ts in a string", make_event(ts="1511604000"), "wrong_type"),
    ("fractional epoch ts", make_event(ts=1511604000.5), "wrong_type"),
    ("epoch received_at", make_event(received_at=1511604000), "wrong_type"),
    ("date without a time", make_event(ts="2017-11-25"), "wrong_type"),
    ("impossible date", make_event(ts="2017-13-25T10:00:00Z"), "wrong_type"),
    # A lone surrogate ("\ud800" in JSON) anywhere: never encodable, so refused before anything else.
    ("surrogate in user_id", make_event(user_id="u\ud800"), "invalid_unicode"),
    ("surrogate in event_id", make_event(event_id="\udc00"), "invalid_unicode"),
    ("surrogate in a line item", make_event("purchase", items=[{"item_id": "a\ud800"}]), "invalid_unicode"),
    ("surrogate in a key", {**make_event(), "x\ud800": 1}, "invalid_unicode"),
    ("surrogate in an unknown type", make_event("\ud800"), "invalid_unicode"),
]


@pytest.mark.parametrize(("case", "payload", "reason"), REJECTIONS, ids=[c[0] for c in REJECTIONS])
def test_invalid_events_are_rejected_with_a_reason(case: str, payload: object, reason: str) -> None:
    with pytest.raises(EventRejected) as info:
        parse_event(payload, CTX)
    assert info.value.reason == reason, info.value.detail
    assert info.value.detail


# Forms JSON allows that the contract's checks before validation refuse or decide.
RAW_EDGE_CASES = [
    make_event(schema_version=True),
    make_event(schema_version=1.0),
    make_event(ts=1511604000),
    {**make_event(), "event_id": make_event()["event_id"].upper()},
    make_event(price=3),
    make_event(ts="2017-11-25T18:00:00.5+08:00"),
]


@pytest.mark.parametrize(
    "payload",
    [*VALID_BY_TYPE.values(), *(c[1] for c in REJECTIONS), *RAW_EDGE_CASES],
    ids=[*VALID_BY_TYPE, *(c[0] for c in REJECTIONS), *(f"edge{i}" for i in range(len(RAW_EDGE_CASES)))],
)
def test_json_validation_takes_only_what_parse_event_takes_and_gives_the_same_event(payload: object) -> None:
    """The pipeline's one-call parse of a raw record (valid_event_from_json) may refuse more than
    parse_event (the record then goes through parse_event), never less, and agrees where both take it."""
    fast = valid_event_from_json(json.dumps(payload).encode())
    try:
        slow = parse_event(payload)
    except EventRejected:
        assert fast is None
        return
    if fast is not None:
        assert fast == slow and fast.__pydantic_fields_set__ == slow.__pydantic_fields_set__
        assert event_to_json(fast) == event_to_json(slow)


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"user_id": "u\ud800"}, "user_id"),
        ({"items": [{"item_id": "ok"}, {"item_id": "\udfff"}]}, "items.1.item_id"),
        ({"\ud800": 1}, "'\\ud800'"),
        ("\ud800", "(value)"),
        ({"page": "caf\u00e9 \U0001f600", "n": 1, "x": None}, None),  # real non-ASCII text is fine
    ],
)
def test_lone_surrogates_are_found_anywhere_with_a_printable_path(value: object, where: str | None) -> None:
    found = lone_surrogate_at(value)
    assert found == where
    if found is not None:
        found.encode("utf-8")  # the path can go into a response and a dead letter


def test_a_surrogate_rejection_can_be_encoded() -> None:
    with pytest.raises(EventRejected) as info:
        parse_event({**make_event(), "k\ud800": ["\ud800"]}, CTX)
    assert info.value.reason == "invalid_unicode"
    json.dumps({"detail": info.value.detail, "errors": info.value.errors}, ensure_ascii=False).encode("utf-8")


def test_iso_times_in_every_usual_form_are_taken() -> None:
    for ts in ("2017-11-25T10:00:00Z", "2017-11-25t10:00:00z", "2017-11-25 10:00:00+00:00",
               "2017-11-25T11:00:00.000000001+01:00", "2017-11-25T10:00Z"):
        assert parse_event(make_event(ts=ts), CTX).ts == datetime(2017, 11, 25, 10, 0, tzinfo=timezone.utc), ts
        assert valid_event_from_json(json.dumps(make_event(ts=ts)).encode()) is not None, ts


def test_json_validation_takes_every_valid_example() -> None:
    for payload in VALID_BY_TYPE.values():
        assert valid_event_from_json(json.dumps(payload).encode()) == parse_event(payload)


def test_context_limits_tighten_the_defaults() -> None:
    ctx = ValidationContext(now=NOW, max_id_chars=8, max_list_items=1)
    with pytest.raises(EventRejected) as info:
        parse_event(make_event(item_id="123456789"), ctx)
    assert info.value.reason == "field_too_large"
    with pytest.raises(EventRejected):
        parse_event(VALID_BY_TYPE["impression"], ctx)


def test_published_json_schema_is_generated_from_the_models() -> None:
    assert SCHEMA_FILE.read_text() == render_schema(), "run `streamrec schema export` and commit the file"
    schema = event_json_schema()
    assert set(schema["discriminator"]["mapping"]) == set(EVENT_TYPES)
