"""The privacy contract: features hold no raw personal data; the tombstone record's shape."""

from __future__ import annotations

import json
from datetime import timezone

import pytest
from pydantic import ValidationError

from features.entities import ALL_ENTITIES
from features.privacy import (
    ALLOWED_FEATURE_CLASSES,
    FEATURE_DATA_CLASS,
    NON_FEATURE_EVENT_FIELDS,
    Tombstone,
)
from features.views import ALL_FEATURE_VIEWS, feature_names


def test_every_feature_column_is_classified_and_none_is_raw_personal_data() -> None:
    """No feature column carries anything but pseudonymous ids, counts, unix times, event types,
    catalogue category ids, scores or flags; free text, prices, currencies, order ids and receive
    times of the event contract are never features."""
    columns = {name for view in ALL_FEATURE_VIEWS for name in feature_names(view)}
    unclassified = columns - FEATURE_DATA_CLASS.keys()
    assert not unclassified, f"classify these feature columns in features/privacy.py: {sorted(unclassified)}"
    assert set(FEATURE_DATA_CLASS.values()) <= ALLOWED_FEATURE_CLASSES
    assert not columns & NON_FEATURE_EVENT_FIELDS
    assert not {c for c in columns if any(bad in c for bad in ("query", "page", "price", "email", "name", "ip"))}
    # Stale entries would hide a removed column's class from review.
    assert FEATURE_DATA_CLASS.keys() == columns


def test_string_features_are_ids_types_or_categories() -> None:
    """Every string-valued feature holds contract ids, event types or category ids (no text)."""
    from feast.types import Array, String

    for view in ALL_FEATURE_VIEWS:
        for feature in view.features:
            if feature.dtype in (String, Array(String)):
                assert FEATURE_DATA_CLASS[feature.name] in {"pseudonymous_id", "event_type", "category_id"}, feature.name
    assert {k for k, v in FEATURE_DATA_CLASS.items() if v == "event_type"} == {"seq_event_types"}
    # Entities are keyed by contract ids (the experiment-variant key is two config names).
    assert {e.join_key for e in ALL_ENTITIES} == {"user_id", "item_id", "bundle_id", "experiment_variant"}


def test_tombstone_round_trip_and_limits() -> None:
    t = Tombstone.for_user("1000001", reason="gdpr art. 17", source="admin_api")
    back = Tombstone.from_json(t.to_json())
    assert back == t and back.key == b"1000001" and back.requested_at.tzinfo is not None
    assert set(json.loads(t.to_json())) == {"schema_version", "user_id", "requested_at", "request_id", "reason", "source"}
    assert t.requested_at.utcoffset() == timezone.utc.utcoffset(None)
    assert Tombstone.for_user("u1").request_id != Tombstone.for_user("u1").request_id
    for bad in ("", "has space", "x" * 65):
        with pytest.raises(ValidationError):
            Tombstone.for_user(bad)
    with pytest.raises(ValidationError):
        Tombstone.from_json(json.dumps({**json.loads(t.to_json()), "email": "a@b.c"}))
    with pytest.raises(ValidationError):
        Tombstone.for_user("u1", source="Admin Person")
