"""Dropping deleted users from the registry: a new LATEST without their embedding rows, weights
with their rows zeroed, everything else identical; serving's loader no longer knows them. Training
applies the tombstones itself (``ray_jobs.registry.privacy``, on a real broker): once each, resuming
from its ledger's offsets, and on every registration, even without a broker for the users it knows."""

from __future__ import annotations

import logging
import uuid

import numpy as np
import pytest
import torch

from features.privacy import Tombstone, TombstoneLedger, publish_tombstone
from features.registry import ModelRegistry
from features.registry.privacy import drop_user_rows
from ray_jobs.registry.privacy import apply_registry_tombstones, ledger_path
from ray_jobs.train import register_outcome
from ray_jobs.trainers.checkpointing import BEST_FILE, save_final
from ray_jobs.trainers.config import JobConfig
from ray_jobs.trainers.launch import TrainingOutcome
from serving.app.embeddings import load_embeddings
from streamrec.runtime.config import Settings
from streamrec.runtime.kafka import ensure_topics, topic_end_offsets
from support import free_port, make_settings

USERS = ["u1", "u2", "u3", "u4"]


def _register(reg: ModelRegistry, tmp_path, artefacts: dict[str, bytes] | None = None,
              set_latest: bool = True) -> tuple[str, dict]:
    rng = np.random.default_rng(0)
    emb = {"user": rng.standard_normal((4, 3)).astype(np.float32), "item": rng.standard_normal((5, 3)).astype(np.float32)}
    weights = tmp_path / "w.pt"
    torch.save({"user_emb.weight": torch.from_numpy(emb["user"].copy()), "item_emb.weight": torch.from_numpy(emb["item"].copy()),
                "other": torch.ones(4, 3)}, weights)
    version = reg.register(
        "lightgcn", embeddings=emb, metrics={"test/recall@20": 0.2}, config={"model": "lightgcn"},
        data_snapshot_id="sha256:abc", code_version="deadbeef", weights_file=weights,
        extra={"model": "lightgcn", "ids": {"user": USERS, "item": [f"i{i}" for i in range(5)]}},
        artefacts=artefacts, set_latest=set_latest,
    )
    return version, emb


def test_a_copy_of_a_named_version_keeps_its_artefacts_and_becomes_latest(tmp_path) -> None:
    """What registration does: the version it wrote (not yet LATEST) is copied without the users."""
    reg = ModelRegistry(tmp_path / "reg")
    served, _ = _register(reg, tmp_path)
    fresh, _ = _register(reg, tmp_path, artefacts={"user_encoder.pt2": b"program"}, set_latest=False)
    assert reg.latest_version("lightgcn") == served

    copy = drop_user_rows(str(tmp_path / "reg"), "lightgcn", {"u3"}, version=fresh)

    latest = reg.load_latest("lightgcn")
    assert latest.version == copy and latest.manifest["derived_from"] == {"version": fresh, "dropped_users": 1}
    assert latest.artefacts == {"user_encoder.pt2": b"program"} and latest.manifest["ids"]["user"] == ["u1", "u2", "u4"]


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


# -- training's part of deletion: tombstones on a real broker, the ledger, registration ----------


def _settings(tmp_path, port: int, **kafka) -> Settings:
    """Settings on the test broker with a private tombstone topic (the broker is shared)."""
    topics = {"tombstones": f"privacy.tombstones-{uuid.uuid4().hex[:8]}"}
    return make_settings(tmp_path / "state", port, kafka={"topics": topics, **kafka})


def _users(settings: Settings) -> list[str]:
    return ModelRegistry(settings.data.state_dir / "registry").load_latest("lightgcn").manifest["ids"]["user"]


@pytest.mark.kafka
def test_registry_tombstones_are_applied_once_and_the_ledger_resumes_from_its_offsets(kafka_broker, tmp_path) -> None:
    settings = _settings(tmp_path, kafka_broker.settings.broker.port)
    ensure_topics(settings.kafka)
    reg = ModelRegistry(settings.data.state_dir / "registry")
    _register(reg, tmp_path)
    path = ledger_path(settings)
    assert path == settings.data.state_dir / "registry-privacy.json"
    first_tombstone = Tombstone.for_user("u2")
    publish_tombstone(settings, first_tombstone)

    first = apply_registry_tombstones(settings)
    assert first.users == {"u2"} and first.versions == {"lightgcn": reg.latest_version("lightgcn")}
    assert _users(settings) == ["u1", "u3", "u4"]
    ends = {p: o for p, o in topic_end_offsets(settings.kafka, settings.kafka.topics.tombstones).items() if o}
    assert TombstoneLedger.load(path) == first.ledger
    assert first.ledger.offsets == ends and first.ledger.deleted == {"u2": first_tombstone.request_id}
    versions = reg.list_versions("lightgcn")

    again = apply_registry_tombstones(settings)  # nothing new on the topic: nothing read, nothing written
    assert (again.users, again.versions, reg.list_versions("lightgcn")) == (frozenset(), {}, versions)

    publish_tombstone(settings, Tombstone.for_user("u3"))
    third = apply_registry_tombstones(settings)  # only the tombstone after the saved offsets
    assert third.users == {"u3"} and set(third.versions) == {"lightgcn"}
    assert _users(settings) == ["u1", "u4"] and set(TombstoneLedger.load(path).deleted) == {"u2", "u3"}
    versions = reg.list_versions("lightgcn")

    TombstoneLedger().save(path)  # as after a crash before the first save: everything is read again
    replay = apply_registry_tombstones(settings)
    assert replay.users == {"u2", "u3"} and replay.versions == {}  # idempotent: nothing left to drop
    assert reg.list_versions("lightgcn") == versions and TombstoneLedger.load(path) == third.ledger


def _outcome(tmp_path) -> TrainingOutcome:
    """A finished run as rank 0 leaves it (final/ embeddings and data.json, best weights)."""
    rng = np.random.default_rng(2)
    emb = {"user": rng.standard_normal((4, 3)).astype(np.float32), "item": rng.standard_normal((5, 3)).astype(np.float32)}
    run = tmp_path / "run"
    save_final(run, emb, {"test/recall@20": 0.1},
               {"snapshot_id": "sha256:lake", "ids": {"user": USERS, "item": [f"i{i}" for i in range(5)]}})
    torch.save({"user_emb.weight": torch.from_numpy(emb["user"].copy()),
                "item_emb.weight": torch.from_numpy(emb["item"].copy())}, run / BEST_FILE)
    job = JobConfig(name="bprmf_lake", model="bprmf", dataset={"name": "lake"})
    return TrainingOutcome(metrics={"test/recall@20": 0.1}, artifacts_dir=run, job=job, run_name="r")


@pytest.mark.kafka
def test_a_model_registered_after_a_deletion_comes_without_the_user(kafka_broker, tmp_path) -> None:
    """The run read the lake before u2 was deleted: registering it must not bring u2 back."""
    settings = _settings(tmp_path, kafka_broker.settings.broker.port)
    ensure_topics(settings.kafka)
    tombstone = Tombstone.for_user("u2")
    publish_tombstone(settings, tombstone)
    root = settings.data.state_dir / "registry"

    version = register_outcome(_outcome(tmp_path), str(root), name="lightgcn", settings=settings)

    latest = ModelRegistry(root).load_latest("lightgcn")
    assert latest.version == version and latest.manifest["ids"]["user"] == ["u1", "u3", "u4"]
    assert latest.manifest["derived_from"]["dropped_users"] == 1
    assert "u2" not in load_embeddings(root, "lightgcn", "user").row_of
    assert torch.count_nonzero(latest.state_dict()["user_emb.weight"][1]) == 0
    assert len(ModelRegistry(root).list_versions("lightgcn")) == 2  # the registered one, then without u2
    assert TombstoneLedger.load(ledger_path(settings)).deleted == {"u2": tombstone.request_id}


def test_registration_without_a_broker_still_drops_the_users_already_in_the_ledger(tmp_path, caplog) -> None:
    settings = _settings(tmp_path, free_port(), metadata_timeout_s=0.5)  # nothing listens there
    ledger = TombstoneLedger(offsets={0: 1}, deleted={"u3": "0" * 32})
    ledger.save(ledger_path(settings))
    root = settings.data.state_dir / "registry"

    with caplog.at_level(logging.WARNING, logger="ray_jobs.registry.privacy"):
        version = register_outcome(_outcome(tmp_path), str(root), name="lightgcn", settings=settings)

    latest = ModelRegistry(root).load_latest("lightgcn")
    assert latest.version == version and latest.manifest["ids"]["user"] == ["u1", "u2", "u4"]
    assert "tombstones unreadable" in caplog.text
    assert TombstoneLedger.load(ledger_path(settings)) == ledger  # unchanged: read again next time


def test_a_registration_landing_during_the_copy_is_copied_instead_of_rolled_back(tmp_path, monkeypatch) -> None:
    """LATEST moves (a new model registered) while the purge copies the old one: the purge copies
    the new one, so the new model is neither rolled back nor served with the deleted user."""
    import features.registry.privacy as registry_privacy

    reg = ModelRegistry(tmp_path / "reg")
    _register(reg, tmp_path)
    copy_without = registry_privacy._copy_without
    landed: list[str] = []

    def registration_lands_meanwhile(registry, model, user_ids):
        copy = copy_without(registry, model, user_ids)
        if not landed:
            landed.append(_register(reg, tmp_path)[0])
        return copy

    monkeypatch.setattr(registry_privacy, "_copy_without", registration_lands_meanwhile)
    copy = drop_user_rows(str(tmp_path / "reg"), "lightgcn", {"u2"})

    latest = reg.load_latest("lightgcn")
    assert latest.version == copy and latest.manifest["derived_from"]["version"] == landed[0]
    assert "u2" not in latest.manifest["ids"]["user"]

    def always_moves(registry, model, user_ids):
        copy = copy_without(registry, model, user_ids)
        _register(reg, tmp_path)
        return copy

    monkeypatch.setattr(registry_privacy, "_copy_without", always_moves)
    with pytest.raises(RuntimeError, match="moved during each of 3 copies"):
        drop_user_rows(str(tmp_path / "reg"), "lightgcn", {"u3"})


def test_purge_reaches_a_registry_given_as_a_uri(tmp_path) -> None:
    """A registry root given as a filesystem URI (as an object store's would be) is purged through
    the registry's own filesystem, not skipped as a local path that does not exist."""
    from ray_jobs.registry.privacy import purge_registry

    root = tmp_path / "reg"
    old, _ = _register(ModelRegistry(root), tmp_path)
    settings = make_settings(tmp_path / "state", free_port(), serving={"registry_root": root.as_uri()})

    versions = purge_registry(settings, {"u2"})

    latest = ModelRegistry(root).load_latest("lightgcn")
    assert versions == {"lightgcn": latest.version} and latest.version != old
    assert latest.manifest["ids"]["user"] == ["u1", "u3", "u4"]
    assert purge_registry(settings, {"u2"}) == {}  # nothing left to drop
