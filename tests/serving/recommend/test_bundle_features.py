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
    standardised_columns,
    standardised_scores,
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


# -- the columnar computation against the row-by-row one, on random requests ----------------------

def _row_by_row(bundles: list[CandidateBundle], signals: RequestSignals) -> np.ndarray:
    """The features one candidate and one item at a time (the per-row code the columnar one replaced)."""
    if not bundles:
        return np.zeros((0, ARM_DIM))
    last_seen = {item: pos for pos, item in enumerate(signals.history)}  # latest position of each item
    top_popularity = math.log1p(max(signals.popularity.values(), default=0.0))
    seed_category = signals.category_of.get(signals.seed) if signals.seed is not None else None
    rows = [_arm_row(bundle, signals, last_seen, top_popularity, seed_category) for bundle in bundles]
    out = np.array(rows, dtype=np.float64)
    for name in ("bundle_model_score", "next_item_max", "next_item_mean", "graph_affinity"):
        out[:, ARM_FEATURES.index(name)] = standardised_scores(out[:, ARM_FEATURES.index(name)])  # raw scores (NaN: none) until here
    return out


def _arm_row(bundle: CandidateBundle, signals: RequestSignals, last_seen: dict[str, int], top_popularity: float,
             seed_category: str | None) -> list[float]:
    """One candidate's features, model scores still raw (NaN where there is none). One pass over its
    items, plain Python floats: this runs for a few hundred candidates per request."""
    nan = math.nan
    n = len(bundle.items)
    next_max, next_sum, next_n, affinity = -math.inf, 0.0, 0, -math.inf
    co_sum, co_n, log_popularity, unpopular, seen, latest = 0.0, 0, 0.0, 0, 0, -1
    same_category, category_affinity, categories = 0, 0.0, set()
    for item in bundle.items:
        score = signals.next_item_score.get(item)
        if score is not None:
            next_max, next_sum, next_n = max(next_max, score), next_sum + score, next_n + 1
        aff = signals.graph_affinity.get(item)
        if aff is not None:
            affinity = max(affinity, aff)
        if item != signals.anchor:
            co_sum, co_n = co_sum + signals.cooccurrence.get(item, 0.0), co_n + 1
        count = signals.popularity.get(item)
        if count is None:
            unpopular += 1
        else:
            log_popularity += math.log1p(count)
        pos = last_seen.get(item)
        if pos is not None:
            seen, latest = seen + 1, max(latest, pos)
        category = signals.category_of.get(item)
        if category is not None:
            categories.add(category)
            same_category += category == seed_category
            category_affinity += signals.user_categories.get(category, 0.0)
    model_score = signals.bundle_model_score.get(bundle.bundle_id)
    row = [
        nan if model_score is None else model_score,
        0.0 if model_score is None else 1.0,
        next_max if next_n else nan,
        next_sum / next_n if next_n else nan,
        affinity if affinity > -math.inf else nan,
        co_sum / co_n if co_n else 0.0,
        log_popularity / (n * top_popularity) if top_popularity > 0 else 0.0,
        unpopular / n,
        seen / n,
        1.0 / (len(signals.history) - latest) if seen else 0.0,
        float(signals.seed is not None and signals.seed in bundle.items),
        same_category / n if seed_category is not None else 0.0,
        category_affinity / n,
        len(categories) / n,
        float(bundle.source == BundleSource.NEXT_ITEMS),
        float(bundle.source == BundleSource.CATALOGUE),
    ]
    return row




def _random_request(rng: np.random.Generator) -> tuple[list[CandidateBundle], RequestSignals]:
    pool = [f"i{k}" for k in range(40)]
    categories = ["c0", "c1", "c2", None]
    sources = [BundleSource.NEXT_ITEMS, BundleSource.CATALOGUE, BundleSource.POPULAR, BundleSource.BUNDLE_MODEL]

    def some(share: float) -> list[str]:
        return [i for i in pool if rng.random() < share]

    history = list(rng.choice(pool, size=int(rng.integers(0, 12))))
    seed = str(rng.choice(pool)) if rng.random() < 0.7 else None
    signals = RequestSignals(
        seed=seed, anchor=seed if seed is not None else (history[-1] if history else None), history=history,
        category_of={i: categories[int(rng.integers(4))] for i in some(0.8)},
        popularity={i: float(rng.integers(1, 500)) for i in some(0.5)},
        cooccurrence={i: float(rng.random()) for i in some(0.3)},
        user_categories={"c0": 1.0, "c2": float(rng.random())},
        next_item_score={i: float(rng.normal()) for i in some(0.4)},
        graph_affinity={i: float(rng.normal()) for i in some(0.4)},
        bundle_model_score={f"b{k}": float(rng.normal()) for k in range(0, 60, 3)},
    )
    bundles = [
        CandidateBundle(f"b{k}", tuple(rng.choice(pool, size=int(rng.integers(1, 5)), replace=False)),
                        sources[int(rng.integers(4))], "why")
        for k in range(int(rng.integers(1, 60)))
    ]
    return bundles, signals


@pytest.mark.parametrize("seed", range(40))
def test_columnar_features_equal_the_row_by_row_ones(seed: int) -> None:
    bundles, signals = _random_request(np.random.default_rng(seed))
    np.testing.assert_allclose(arm_feature_matrix(bundles, signals), _row_by_row(bundles, signals), rtol=1e-12, atol=1e-12)


def test_standardised_scores_by_hand_and_their_edge_cases() -> None:
    nan, inf = math.nan, math.inf
    np.testing.assert_allclose(standardised_scores(np.array([2.0, nan, 0.0, 1.0])), z([2.0, None, 0.0, 1.0]))
    np.testing.assert_allclose(standardised_scores(np.array([100.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])),
                               [3.0] + [-1 / math.sqrt(10)] * 10)  # z = sqrt(10) clipped to 3
    for no_spread in ([nan, nan], [nan, 4.0], [4.0, 4.0, nan], [inf, 1.0, -inf]):
        assert standardised_scores(np.array(no_spread)).tolist() == [0.0] * len(no_spread)
    assert standardised_scores(np.array([inf, 1.0, 3.0])).tolist() == [0.0, -1.0, 1.0]  # an infinite score is no score
    assert standardised_scores(np.zeros(0)).shape == (0,)


def test_standardised_columns_standardise_each_column_on_its_own() -> None:
    rng = np.random.default_rng(7)
    scores = rng.normal(size=(50, 5)) * [1.0, 10.0, 1e-3, 1.0, 1.0]
    scores[rng.random((50, 5)) < 0.3] = math.nan
    scores[:, 3] = math.nan  # no score at all
    scores[1:, 4] = math.nan  # one score: no spread
    got = standardised_columns(scores)
    for column in range(5):
        np.testing.assert_allclose(got[:, column], standardised_scores(scores[:, column]), rtol=1e-12, atol=1e-12)
        known = np.isfinite(scores[:, column])
        if known.sum() >= 2:
            np.testing.assert_allclose(got[:, column], z([v if k else None for v, k in zip(scores[:, column], known)]),
                                       rtol=1e-12, atol=1e-12)
    assert not got[:, 3].any() and not got[:, 4].any()
