"""The bundle candidates of a request: the bundle model's top bundles for the user first, then
those built around SASRec's predicted next items and the user's latest items, co-occurrence,
catalogue and popular; one candidate per item set; every candidate keeps its source and reason
and gets one row of arm features."""

from __future__ import annotations

import asyncio

import numpy as np

from serving.app.bundle_candidates import BundleCandidates
from serving.app.catalogue import BundleSpec
from serving.app.embeddings import EmbeddingTable, ReplicaEmbeddings
from serving.app.feature_reads import FeastReader, PopularItems
from serving.app.ranker import RankerSlot
from serving.app.replica_sources import ReplicaSources
from serving.recommend.bundle_features import ARM_DIM, ARM_FEATURES, USER_DIM, BundleSource
from streamrec.runtime.config import Settings


def _bundle_model(emb: ReplicaEmbeddings, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    users = rng.normal(size=(3, 8)).astype(np.float32)
    bundles = rng.normal(size=(6, 8)).astype(np.float32)
    items = [("a", "b"), ("b", "c"), ("c", "d"), ("a", "d", "e"), ("x", "y"), ("b", "y")]
    emb.bundle = EmbeddingTable("crosscbr", "7", [f"mb-{n}" for n in range(6)], bundles, extra={"bundle_items": items})
    emb.bundle_user = EmbeddingTable("crosscbr", "7", ["u0", "u1", "u2"], users)
    return users, bundles


def test_bundle_model_candidates_are_the_models_top_bundles_for_a_known_user(tmp_path) -> None:
    emb = ReplicaEmbeddings(Settings(data={"state_dir": tmp_path}))
    users, bundles = _bundle_model(emb, np.random.default_rng(3))
    rows, why = emb.bundle_rows_for("u1", "a", 4)
    expected = list(np.argsort(-(bundles @ users[1]), kind="stable")[:4])
    assert rows == expected and why == "for you"
    # a user the model does not know: the bundles that hold the seed item, in row order
    assert emb.bundle_rows_for("stranger", "b", 4) == ([0, 1, 5], "with b")
    assert emb.bundle_rows_for("stranger", "zzz", 4) == ([], "")
    assert emb.bundle_rows_for(None, None, 4) == ([], "")


class _Learner:  # the learner's popular items, as the deployment handle returns them
    class popular_items:  # noqa: N801 - mirrors handle.popular_items.remote
        @staticmethod
        async def remote(n: int) -> list:
            return [("p1", 5.0, "c1"), ("p2", 4.0, "c2"), ("p3", 3.0, "c3")]


def _candidates(tmp_path, emb: ReplicaEmbeddings, catalogue: list[BundleSpec], feast: FeastReader | None = None) -> BundleCandidates:
    settings = emb._settings
    emb.refresh = lambda: None  # the tables stand in for a registry
    sources = ReplicaSources(settings, feast or FeastReader(settings), emb, PopularItems(_Learner()),
                             RankerSlot(str(tmp_path / "no-registry"), "sasrec", 30.0))
    return BundleCandidates(sources, catalogue)


def test_bundle_candidates_put_the_personalised_bundles_first(tmp_path) -> None:
    emb = ReplicaEmbeddings(Settings(data={"state_dir": tmp_path}))
    users, bundles = _bundle_model(emb, np.random.default_rng(3))
    got = asyncio.run(_candidates(tmp_path, emb, [BundleSpec(id="starter-kit", items=("a", "x"))]).bundle_candidates("u2", None))
    top = [f"mb-{r}" for r in np.argsort(-(bundles @ users[2]), kind="stable")]
    assert got.ids[:6] == top and "starter-kit" in got.ids
    first = got.bundles[0]
    assert first.reason == "for you: model crosscbr@7" and first.source == BundleSource.BUNDLE_MODEL
    assert first.items == emb.bundle.extra["bundle_items"][int(top[0][3:])]
    assert got.features.shape == (len(got.bundles), ARM_DIM) and got.context.shape == (USER_DIM,)
    known = got.features[:, ARM_FEATURES.index("bundle_model_known")]
    assert known[:6].tolist() == [1.0] * 6 and known[6:].sum() == 0  # scored by the model: its own bundles only
    score = got.features[:6, ARM_FEATURES.index("bundle_model_score")]
    assert np.all(np.diff(score) <= 1e-12)  # standardised, in the model's order
    catalogue = got.bundles[got.ids.index("starter-kit")]
    assert catalogue.source == BundleSource.CATALOGUE
    assert got.features[got.ids.index("starter-kit"), ARM_FEATURES.index("from_catalogue")] == 1.0


class _Feast(FeastReader):
    """A Feast row for one user and one co-occurrence row, as the online store returns them."""

    def online(self, refs, key, value):
        if key == "user_id" and value == "shopper":
            return {"seq_item_ids": ["h1", "h2", "h3", "h2"], "view_count_24h": 4}
        if key == "item_id" and value == "seed":
            return {"co_item_ids": ["h3", "p1"], "co_scores": [2.0, 1.0]}
        return {}


def test_candidates_around_the_users_latest_items_and_one_per_item_set(tmp_path) -> None:
    settings = Settings(data={"state_dir": tmp_path})
    emb = ReplicaEmbeddings(settings)
    candidates = _candidates(tmp_path, emb, [BundleSpec(id="same-as-recent", items=("seed", "h2", "h3"))], _Feast(settings))
    got = asyncio.run(candidates.bundle_candidates("shopper", "seed"))
    recent = [b for b in got.bundles if b.source == BundleSource.RECENT]
    # latest distinct items first (h2, h3, h1) in disjoint runs, led by the seed, then without it
    assert [b.items for b in recent] == [("seed", "h2", "h3"), ("h2", "h3", "h1")]
    assert "same-as-recent" not in got.ids  # the same item set as a recent bundle: one candidate
    co = [b for b in got.bundles if b.source == BundleSource.COOCCURRENCE]
    assert co and all(b.items[0] == "seed" for b in co)
    assert len({frozenset(b.items) for b in got.bundles}) == len(got.bundles)
    row = got.features[got.ids.index(recent[0].bundle_id)]  # the seed is the newest item of the live sequence
    assert row[ARM_FEATURES.index("has_seed")] == 1.0 and row[ARM_FEATURES.index("in_history")] == 1.0
    assert row[ARM_FEATURES.index("history_recency")] == 1.0
    row = got.features[got.ids.index(recent[1].bundle_id)]  # h2, h3, h1: h2 was the item before the seed
    assert row[ARM_FEATURES.index("has_seed")] == 0.0 and row[ARM_FEATURES.index("history_recency")] == 0.5
