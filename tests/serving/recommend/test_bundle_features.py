"""The bandit's features of a (user, bundle) pair against a request computed by hand."""

import math

import numpy as np
import pytest

from serving.recommend.bundle_features import (
    ARM_DIM,
    ARM_FEATURES,
    USER_FEATURES,
    BundleSource,
    CandidateBundle,
    RequestSignals,
    arm_feature_matrix,
    user_feature_vector,
)

SIGNALS = RequestSignals(
    seed="s",
    anchor="s",
    history=["a", "b", "a", "s"],  # oldest first; "a" was last touched 2 steps before the end
    category_of={"s": "shoes", "a": "shoes", "b": "bags", "p": "hats"},
    popularity={"p": 99.0, "a": 9.0},
    cooccurrence={"b": 1.0, "p": 0.5},
    user_categories={"shoes": 1.0, "bags": 0.5},
    next_item_score={"a": 2.0, "b": 0.0, "p": 1.0},
    graph_affinity={"p": 3.0, "b": 1.0},
    bundle_model_score={"mb-1": 5.0, "mb-2": 1.0},
)
BUNDLES = [
    CandidateBundle("nx-1", ("s", "a", "b"), BundleSource.NEXT_ITEMS, "next"),
    CandidateBundle("mb-1", ("p", "b"), BundleSource.BUNDLE_MODEL, "for you"),
    CandidateBundle("mb-2", ("x", "y"), BundleSource.BUNDLE_MODEL, "for you"),
    CandidateBundle("kit", ("p", "s"), BundleSource.CATALOGUE, "catalogue"),
]


def z(values: list[float | None]) -> list[float]:
    known = np.array([v for v in values if v is not None])
    mean, std = known.mean(), known.std()
    return [0.0 if v is None else float(np.clip((v - mean) / std, -3, 3)) for v in values]


def test_features_of_a_hand_computed_request() -> None:
    got = arm_feature_matrix(BUNDLES, SIGNALS)
    assert got.shape == (4, ARM_DIM)
    col = {name: got[:, i] for i, name in enumerate(ARM_FEATURES)}
    np.testing.assert_allclose(col["bundle_model_score"], z([None, 5.0, 1.0, None]))
    assert col["bundle_model_known"].tolist() == [0, 1, 1, 0]
    np.testing.assert_allclose(col["next_item_max"], z([2.0, 1.0, None, 1.0]))
    np.testing.assert_allclose(col["next_item_mean"], z([1.0, 0.5, None, 1.0]))
    np.testing.assert_allclose(col["graph_affinity"], z([1.0, 3.0, None, 3.0]))
    # co-occurrence with the anchor "s": mean over the bundle's other items
    np.testing.assert_allclose(col["cooccurrence"], [(0 + 1.0) / 2, (0.5 + 1.0) / 2, 0.0, 0.5])
    top = math.log1p(99.0)
    np.testing.assert_allclose(col["popularity"], [math.log1p(9) / (3 * top), 1 / 2, 0.0, 1 / 2])
    np.testing.assert_allclose(col["novelty"], [2 / 3, 1 / 2, 1.0, 1 / 2])
    np.testing.assert_allclose(col["in_history"], [1.0, 1 / 2, 0.0, 1 / 2])
    np.testing.assert_allclose(col["history_recency"], [1.0, 1 / (1 + 2), 0.0, 1.0])
    assert col["has_seed"].tolist() == [1, 0, 0, 1]
    np.testing.assert_allclose(col["seed_category"], [2 / 3, 0.0, 0.0, 1 / 2])
    np.testing.assert_allclose(col["category_affinity"], [(1 + 1 + 0.5) / 3, 0.5 / 2, 0.0, 1 / 2])
    np.testing.assert_allclose(col["cross_category"], [2 / 3, 1.0, 0.0, 1.0])
    assert col["from_next_items"].tolist() == [1, 0, 0, 0]
    assert col["from_catalogue"].tolist() == [0, 0, 0, 1]


def test_a_cold_start_request_has_only_its_structural_features() -> None:
    got = arm_feature_matrix(BUNDLES[:1], RequestSignals())
    nonzero = {ARM_FEATURES[i] for i in np.flatnonzero(got[0])}
    assert nonzero == {"novelty", "from_next_items"}
    assert arm_feature_matrix([], RequestSignals()).shape == (0, ARM_DIM)


def test_standardised_scores_do_not_depend_on_the_models_scale() -> None:
    """A retrained model that scores everything 10x higher yields the same features."""
    scaled = RequestSignals(**{**SIGNALS.__dict__, "next_item_score": {k: 10 * v + 3 for k, v in SIGNALS.next_item_score.items()}})
    np.testing.assert_allclose(arm_feature_matrix(BUNDLES, scaled), arm_feature_matrix(BUNDLES, SIGNALS))


def test_user_features() -> None:
    now = 1_700_000_000.0
    row = {"view_count_24h": 10, "purchase_count_24h": 0, "last_seen_unix": int(now - 3 * 3600),
           "seq_item_ids": ["a"] * 50}
    got = dict(zip(USER_FEATURES, user_feature_vector(row, now)))
    assert got["views_24h"] == pytest.approx(math.log1p(10) / 5) and got["purchases_24h"] == 0.0
    assert got["recency"] == pytest.approx(1 / (1 + math.log1p(3.0)))
    assert got["sequence_length"] == pytest.approx(1.0) and got["known_user"] == 1.0
    assert not user_feature_vector({}, now).any()


def test_next_items_top_is_the_best_n_in_order_without_the_excluded() -> None:
    from serving.recommend.sequential import NextItems

    scores = np.array([0.1, 0.9, 0.5, 0.9, -1.0, 0.7])
    next_items = NextItems([f"i{r}" for r in range(6)], {f"i{r}": r for r in range(6)}, scores)
    assert next_items.top(3) == ["i1", "i3", "i5"]  # ties keep the catalogue order
    assert next_items.top(3, exclude={"i3"}) == ["i1", "i5", "i2"]
    assert next_items.top(10) == ["i1", "i3", "i5", "i2", "i0", "i4"]
    assert next_items.of(["i2", "nope"]) == {"i2": 0.5}
