"""Dropping deleted users from the registry: a new LATEST without their embedding rows, weights
with their rows zeroed, everything else identical; serving's loader no longer knows them."""

from __future__ import annotations

import numpy as np
import torch

from features.registry import ModelRegistry
from features.registry.privacy import drop_user_rows
from serving.app.embeddings import load_embeddings

USERS = ["u1", "u2", "u3", "u4"]


def _register(reg: ModelRegistry, tmp_path) -> tuple[str, dict]:
    rng = np.random.default_rng(0)
    emb = {"user": rng.standard_normal((4, 3)).astype(np.float32), "item": rng.standard_normal((5, 3)).astype(np.float32)}
    weights = tmp_path / "w.pt"
    torch.save({"user_emb.weight": torch.from_numpy(emb["user"].copy()), "item_emb.weight": torch.from_numpy(emb["item"].copy()),
                "other": torch.ones(4, 3)}, weights)
    version = reg.register(
        "lightgcn", embeddings=emb, metrics={"test/recall@20": 0.2}, config={"model": "lightgcn"},
        data_snapshot_id="sha256:abc", code_version="deadbeef", weights_file=weights,
        extra={"model": "lightgcn", "ids": {"user": USERS, "item": [f"i{i}" for i in range(5)]}},
    )
    return version, emb


def test_drop_user_rows_registers_a_version_without_them(tmp_path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    old_version, emb = _register(reg, tmp_path)

    new_version = drop_user_rows(str(tmp_path / "reg"), "lightgcn", {"u2", "not-a-user"})

    assert new_version is not None and reg.latest_version("lightgcn") == new_version != old_version
    new = reg.load_latest("lightgcn")
    np.testing.assert_array_equal(new.embeddings["user"], emb["user"][[0, 2, 3]])
    np.testing.assert_array_equal(new.embeddings["item"], emb["item"])
    assert new.manifest["ids"]["user"] == ["u1", "u3", "u4"] and new.manifest["ids"]["item"] == [f"i{i}" for i in range(5)]
    assert new.manifest["metrics"] == {"test/recall@20": 0.2} and new.manifest["data_snapshot_id"] == "sha256:abc"
    assert new.manifest["derived_from"] == {"version": old_version, "dropped_users": 1}
    state = new.state_dict()
    assert torch.count_nonzero(state["user_emb.weight"][1]) == 0
    torch.testing.assert_close(state["user_emb.weight"][[0, 2, 3]], torch.from_numpy(emb["user"][[0, 2, 3]]))
    torch.testing.assert_close(state["item_emb.weight"], torch.from_numpy(emb["item"]))
    torch.testing.assert_close(state["other"], torch.ones(4, 3))  # not named for users: untouched
    # The old version is the rollback history and stays as it was.
    np.testing.assert_array_equal(reg.load("lightgcn", old_version).embeddings["user"], emb["user"])

    users = load_embeddings(tmp_path / "reg", "lightgcn", "user")
    assert users is not None and "u2" not in users.row_of and set(users.row_of) == {"u1", "u3", "u4"}
    assert drop_user_rows(str(tmp_path / "reg"), "lightgcn", {"u2"}) is None  # nothing left to drop


def test_models_without_raw_user_ids_are_left_alone(tmp_path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    reg.register("popularity", embeddings={"item": np.ones((2, 2), np.float32)}, metrics={}, config={},
                 data_snapshot_id="sha256:x")
    assert drop_user_rows(str(tmp_path / "reg"), "popularity", {"u1"}) is None
