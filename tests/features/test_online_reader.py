"""OnlineReader's refs are checked before any store is touched (its reads are compared with
``get_online_features`` in tests/pipelines/test_feast_repo.py, on SQLite and on Redis)."""

from __future__ import annotations

import pytest

from features.online import OnlineReader


def test_a_ref_without_a_feature_name_is_refused():
    with pytest.raises(ValueError, match="is not 'view:feature'"):
        OnlineReader(store=None, refs=["user_features"])


def test_refs_of_two_entities_are_refused():
    with pytest.raises(ValueError, match="span entities"):
        OnlineReader(store=None, refs=["user_features:last_seen_unix", "item_features:trending_score"])


def test_an_unknown_view_is_refused():
    with pytest.raises(ValueError, match="unknown feature views"):
        OnlineReader(store=None, refs=["no_such_view:x"])
