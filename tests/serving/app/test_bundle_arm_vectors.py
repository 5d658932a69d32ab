"""Bundle arm vectors: the bundle model's row when it knows the bundle, else the mean of its items'
vectors (the item model's rows, hashed vectors for unknown items), unit-normed."""

from __future__ import annotations

import numpy as np

from serving.app.candidates import EmbeddingTable, hashed_vector, normalize_rows
from serving.app.ranking import _Embeddings
from streamrec.config import Settings


def _reference(emb: _Embeddings, bundles: list[tuple[str, tuple[str, ...]]], dim: int) -> np.ndarray:
    out = np.zeros((len(bundles), dim))
    for n, (bundle_id, items) in enumerate(bundles):
        if bundle_id in emb.bundle.row_of:
            out[n] = emb.bundle.arm_matrix(dim)[emb.bundle.row_of[bundle_id]]
            continue
        for item in items:
            row = emb.item.row_of.get(item)
            out[n] += emb.item.arm_matrix(dim)[row] if row is not None else hashed_vector(f"item:{item}", dim)
        out[n] /= max(len(items), 1)
    return normalize_rows(out)


def test_arm_vectors_mix_bundle_rows_item_means_and_hashed_items(tmp_path) -> None:
    settings = Settings(data={"state_dir": tmp_path})
    dim = settings.serving.arm_dim
    rng = np.random.default_rng(0)
    emb = _Embeddings(settings)
    emb.item = EmbeddingTable("lightgcn", "1", [f"i{n}" for n in range(40)], rng.normal(size=(40, 24)).astype(np.float32))
    emb.bundle = EmbeddingTable("crosscbr", "1", ["b0", "b1", "b2"], rng.normal(size=(3, 24)).astype(np.float32))
    bundles = [
        ("b1", ("i1", "i2")),  # the bundle model's row, whatever its items
        ("co-x", ("i3", "i4", "i5")),  # known items
        ("co-y", ("i6", "new-item", "i7")),  # one item no model knows
        ("pop-z", ("only-new", "also-new")),
        ("empty", ()),
        ("b0", ()),
    ]
    got = emb.bundle_arm_vectors(bundles)
    assert got.shape == (len(bundles), dim)
    np.testing.assert_allclose(got, _reference(emb, bundles, dim), atol=1e-12)
    assert np.allclose(np.linalg.norm(got[:4], axis=1), 1.0)


def test_arm_vectors_without_any_model_are_hashed_item_means(tmp_path) -> None:
    settings = Settings(data={"state_dir": tmp_path})
    emb = _Embeddings(settings)
    got = emb.bundle_arm_vectors([("pop-a", ("x", "y")), ("pop-b", ("y", "x"))])
    np.testing.assert_allclose(got[0], got[1])  # the same items in another order
    mean = hashed_vector("item:x", settings.serving.arm_dim) + hashed_vector("item:y", settings.serving.arm_dim)
    np.testing.assert_allclose(got[0], mean / np.linalg.norm(mean))


def test_cached_arm_vectors_follow_a_model_reload(tmp_path) -> None:
    """Vectors are cached per bundle id, but a reloaded item or bundle model replaces them."""
    settings = Settings(data={"state_dir": tmp_path})
    dim = settings.serving.arm_dim
    rng = np.random.default_rng(1)
    emb = _Embeddings(settings)
    emb.item = EmbeddingTable("lightgcn", "1", ["i0", "i1"], rng.normal(size=(2, 24)).astype(np.float32))
    emb.bundle = EmbeddingTable("crosscbr", "1", ["b0"], rng.normal(size=(1, 24)).astype(np.float32))
    bundles = [("co-a", ("i0", "i1")), ("b0", ()), ("co-a", ("i0", "i1"))]
    first = emb.bundle_arm_vectors(bundles)
    np.testing.assert_allclose(first, _reference(emb, bundles, dim), atol=1e-12)
    first[:] = 0.0  # the caller's copy: the cache is not exposed
    np.testing.assert_allclose(emb.bundle_arm_vectors(bundles), _reference(emb, bundles, dim), atol=1e-12)
    emb.item = EmbeddingTable("lightgcn", "2", ["i0", "i1"], rng.normal(size=(2, 24)).astype(np.float32))
    emb.bundle = EmbeddingTable("crosscbr", "2", ["b0"], rng.normal(size=(1, 24)).astype(np.float32))
    np.testing.assert_allclose(emb.bundle_arm_vectors(bundles), _reference(emb, bundles, dim), atol=1e-12)
    assert emb.bundle_arm_vectors([]).shape == (0, dim)


def test_a_full_cache_is_refilled_with_every_bundle_of_the_request(tmp_path, monkeypatch) -> None:
    """Issue 24: the cache overflowed, was cleared, and the request's bundles cached before it
    (a catalogue bundle) were then read from the empty cache: KeyError, a 500 on /v1/bundles."""
    import serving.app.ranking as ranking

    monkeypatch.setattr(ranking, "ARM_VECTOR_CACHE_SIZE", 4)
    settings = Settings(data={"state_dir": tmp_path})
    emb = _Embeddings(settings)
    catalogue = ("starter-kit", ("a", "b"))
    emb.bundle_arm_vectors([catalogue, ("p1", ("c",)), ("p2", ("d",))])
    request = [catalogue, ("p3", ("e",)), ("p4", ("f",)), ("p5", ("g",))]  # 3 + 3 new > 4: the cache is cleared
    got = emb.bundle_arm_vectors(request)
    np.testing.assert_allclose(got, _reference_without_models(request, settings.serving.arm_dim))
    assert set(emb._arm_vectors) == {b for b, _ in request}


def _reference_without_models(bundles: list[tuple[str, tuple[str, ...]]], dim: int) -> np.ndarray:
    out = np.stack([np.mean([hashed_vector(f"item:{i}", dim) for i in items], axis=0) for _, items in bundles])
    return normalize_rows(out)


def _bundle_model(emb: _Embeddings, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    users = rng.normal(size=(3, 8)).astype(np.float32)
    bundles = rng.normal(size=(6, 8)).astype(np.float32)
    items = [("a", "b"), ("b", "c"), ("c", "d"), ("a", "d", "e"), ("x", "y"), ("b", "y")]
    emb.bundle = EmbeddingTable("crosscbr", "7", [f"mb-{n}" for n in range(6)], bundles, extra={"bundle_items": items})
    emb.bundle_user = EmbeddingTable("crosscbr", "7", ["u0", "u1", "u2"], users)
    return users, bundles


def test_bundle_model_candidates_are_the_models_top_bundles_for_a_known_user(tmp_path) -> None:
    emb = _Embeddings(Settings(data={"state_dir": tmp_path}))
    users, bundles = _bundle_model(emb, np.random.default_rng(3))
    rows, why = emb.bundle_rows_for("u1", "a", 4)
    expected = list(np.argsort(-(bundles @ users[1]), kind="stable")[:4])
    assert rows == expected and why == "for you"
    # a user the model does not know: the bundles that hold the seed item, in row order
    assert emb.bundle_rows_for("stranger", "b", 4) == ([0, 1, 5], "with b")
    assert emb.bundle_rows_for("stranger", "zzz", 4) == ([], "")
    assert emb.bundle_rows_for(None, None, 4) == ([], "")


def test_bundle_candidates_put_the_personalised_bundles_first(tmp_path) -> None:
    import asyncio

    from serving.app.candidates import BundleSpec
    from serving.app.ranking import BundleCandidates, FeastReader, ReplicaSources, _PopularItems

    class _Learner:  # the learner's popular items, as the deployment handle returns them
        class popular_items:  # noqa: N801 - mirrors handle.popular_items.remote
            @staticmethod
            async def remote(n: int) -> list:
                return [("p1", 5.0, "c1"), ("p2", 4.0, "c2"), ("p3", 3.0, "c3")]

    settings = Settings(data={"state_dir": tmp_path})
    emb = _Embeddings(settings)
    users, bundles = _bundle_model(emb, np.random.default_rng(3))
    emb.refresh = lambda: None  # the tables above stand in for a registry
    sources = ReplicaSources(settings, FeastReader(settings), emb, _PopularItems(_Learner()))
    candidates = BundleCandidates(sources, [BundleSpec(id="starter-kit", items=("a", "x"))])
    got = asyncio.run(candidates.bundle_candidates("u2", None))
    top = [f"mb-{r}" for r in np.argsort(-(bundles @ users[2]), kind="stable")]
    assert got["ids"][:6] == top and "starter-kit" in got["ids"]
    assert got["reasons"][0] == "for you: model crosscbr@7"
    assert got["items"][0] == list(emb.bundle.extra["bundle_items"][int(top[0][3:])])
