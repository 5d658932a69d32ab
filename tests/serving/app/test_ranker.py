"""The sequential ranker without Ray or a broker: loading SASRec from a registry, scoring a raw-id
sequence as the model's own ``score`` does, hot reload, and refusing what it cannot serve."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ranker_support import SASREC_PARAMS, offline_sasrec_order, register, taobao, train

from features.registry import ModelRegistry
from serving.app.ranker import RankerSlot, load_ranker

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sasrec() -> torch.nn.Module:
    return train("sasrec", taobao(), SASREC_PARAMS, epochs=1, seed=0)


def _longest_history() -> list[str]:
    """The training sequence (raw ids, oldest first) of the user with the most interactions."""
    data = taobao()
    user = int(np.bincount(data.train[:, 0]).argmax())
    return [str(data.item_ids[i]) for i in data.train[data.train[:, 0] == user][:, 1]]


def test_registered_sasrec_ranks_like_the_models_own_score(sasrec, tmp_path) -> None:
    data = taobao()
    version = register(tmp_path / "reg", "sasrec", "sasrec", sasrec, data, SASREC_PARAMS, tmp_path)
    loaded = load_ranker(str(tmp_path / "reg"), "sasrec", version)
    assert loaded.label == f"sasrec@{version}" and loaded.ranker.max_len == sasrec.config.max_len
    # what serves is the exported encoder and the registered item table, not the training class
    assert loaded.ranker.model.encoder.max_len == sasrec.config.max_len
    assert np.array_equal(loaded.ranker.model.item_vectors, sasrec.item_emb.weight[1:].detach().numpy())
    history = _longest_history()
    assert len(history) > sasrec.config.max_len  # the window is cut to the last max_len items
    candidates = [str(i) for i in data.item_ids[::400].tolist()]
    ranked = loaded.ranker.rank([*history, "not-an-item"], [*candidates, "unknown", candidates[0]])
    expected, scores = offline_sasrec_order(sasrec, data, history, candidates)
    assert ranked.items == expected
    assert np.allclose(ranked.scores, [scores[i] for i in expected], rtol=1e-5, atol=1e-6)
    assert ranked.history == history[-sasrec.config.max_len :]
    assert ranked.history_positions == list(range(len(history) - sasrec.config.max_len, len(history)))
    # each item is explained by its most cosine-similar history item
    items = sasrec.item_emb.weight[1:].detach().numpy().astype(np.float64)
    row = {str(i): r for r, i in enumerate(data.item_ids.tolist())}
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    for item, b in zip(ranked.items[:5], ranked.because[:5]):
        sims = [float(unit(items[row[item]]) @ unit(items[row[h]])) for h in ranked.history]
        assert sims[b] == pytest.approx(max(sims))
    # nothing known in the sequence, or no known candidate: no ranking (the caller keeps its order)
    assert loaded.ranker.rank(["nope"], candidates) is None
    assert loaded.ranker.rank(history, ["nope"]) is None
    assert loaded.ranker.rank([], candidates) is None


def test_slot_reloads_on_new_latest_keeps_old_on_a_bad_version_and_drops_without_latest(sasrec, tmp_path) -> None:
    data = taobao()
    root = tmp_path / "reg"
    slot = RankerSlot(str(root), "sasrec", refresh_s=0.0)
    assert slot.refresh() is None and not root.exists()  # nothing registered: no ranker, no side effect
    v1 = register(root, "sasrec", "sasrec", sasrec, data, SASREC_PARAMS, tmp_path)
    assert slot.refresh().version == v1
    other = train("sasrec", data, SASREC_PARAMS, epochs=0, seed=1)
    v2 = register(root, "sasrec", "sasrec", other, data, SASREC_PARAMS, tmp_path)
    assert slot.refresh().version == v2
    # a version without raw item ids cannot be served: logged, the previous one stays
    registry = ModelRegistry(root)
    bad = registry.register("sasrec", embeddings={"item": np.zeros((3, 16), np.float32)}, metrics={},
                            config={"model": "sasrec", "model_params": SASREC_PARAMS}, data_snapshot_id="s",
                            extra={"model": "sasrec"})
    assert registry.latest_version("sasrec") == bad and slot.refresh().version == v2
    (root / "sasrec" / "LATEST").unlink()
    assert slot.refresh() is None


def test_refresh_interval_limits_registry_reads(sasrec, tmp_path) -> None:
    data = taobao()
    root = tmp_path / "reg"
    v1 = register(root, "sasrec", "sasrec", sasrec, data, SASREC_PARAMS, tmp_path)
    slot = RankerSlot(str(root), "sasrec", refresh_s=3600.0)
    assert slot.refresh().version == v1
    register(root, "sasrec", "sasrec", sasrec, data, SASREC_PARAMS, tmp_path)
    assert slot.refresh().version == v1  # not re-read within refresh_s


@pytest.mark.parametrize("model_name", ["srgnn", "gcegnn"])
def test_a_registered_session_gnn_serves_as_the_ranker(model_name, tmp_path) -> None:
    """A session GNN registered under the ranker's name is loaded (GCE-GNN with its global graph,
    which travels in the weights) and ranks as its own ``score`` does: which next-item model serves
    is configuration."""
    from ray_jobs.data import subsample_users

    data = subsample_users(taobao(), 60, seed=0)
    params = {"hidden_dim": 16, "max_len": 10, "batch_size": 256}
    srgnn = train(model_name, data, params, epochs=1, seed=0)
    version = register(tmp_path / "reg", "sasrec", model_name, srgnn, data, params, tmp_path)
    loaded = load_ranker(str(tmp_path / "reg"), "sasrec", version)
    assert ModelRegistry(tmp_path / "reg").load("sasrec", version).manifest["model"] == model_name
    assert loaded.ranker.max_len == 10
    user = int(np.bincount(data.train[:, 0]).argmax())
    history = [str(data.item_ids[i]) for i in data.train[data.train[:, 0] == user][:, 1]]
    candidates = [str(i) for i in data.item_ids[::25].tolist()]
    ranked = loaded.ranker.rank(history, candidates)
    expected, scores = offline_sasrec_order(srgnn, data, history, candidates)
    assert ranked.items == expected
    assert np.allclose(ranked.scores, [scores[i] for i in expected], rtol=1e-5, atol=1e-5)


def test_a_non_sequence_model_is_refused(tmp_path) -> None:
    ModelRegistry(tmp_path).register("sasrec", embeddings={"item": np.zeros((2, 4), np.float32)}, metrics={},
                                     config={"model": "lightgcn"}, data_snapshot_id="s",
                                     extra={"model": "lightgcn", "ids": {"item": ["a", "b"]}})
    with pytest.raises(ValueError, match="not a next-item"):
        load_ranker(str(tmp_path), "sasrec", ModelRegistry(tmp_path).latest_version("sasrec"))
