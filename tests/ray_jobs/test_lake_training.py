"""Training on the event lake, and the SASRec ranker that serving loads from the registry.

* A lake-trained LightGCN beats popularity on the held-out split (in-process, the worker loop's batches).
* What a SASRec run registers (weights, model config, raw item ids, lake snapshot, the exported user
  encoder) is enough for serving's loader (``features.registry.next_item``, no training code) to
  score a raw-id sequence exactly as the trained model does;
  unit-level through the checkpoint writer + ``register_outcome``, and end to end through
  ``streamrec train sasrec --config ray_jobs/configs/sasrec_lake.yaml`` on Ray.
"""

from __future__ import annotations

import argparse

import dataclasses

import numpy as np
import pytest
import torch

from ray_jobs.cli import cmd_train, registry_name
from ray_jobs.data import load_dataset
from ray_jobs.models import SEQ, build_model
from features.registry.next_item import encode_history, load_next_item_model
from ray_jobs.registry import ModelRegistry, describe_data
from ray_jobs.train import register_outcome
from ray_jobs.trainers.checkpointing import BEST_FILE, save_final
from ray_jobs.trainers.config import JobConfig, TrainConfig
from ray_jobs.trainers.evaluate import evaluate
from ray_jobs.trainers.launch import TrainingOutcome
from streamrec.cli import build_parser
from streamrec.runtime.config import Settings
from support import free_port, make_settings

# The configs' protocol: leave-one-out, held-out item vs 100 sampled negatives.
SAMPLED = TrainConfig(protocol="sampled", ks=[10], monitor="ndcg@10")


@pytest.fixture(scope="module")
def lake_data(taobao_lake):
    return load_dataset("lake", root=str(taobao_lake))


def test_lake_lightgcn_beats_popularity(lake_data, fit_local):
    """Measured (2 epochs, lr 0.01): test HR@10 0.333 vs popularity 0.123 on all 814 users."""
    pop = evaluate(build_model("popularity", lake_data), lake_data, "test", SAMPLED).metrics
    model = fit_local("lightgcn", lake_data, epochs=2, overrides={"lr": 0.01, "batch_size": 2048})
    report = evaluate(model, lake_data, "test", SAMPLED)
    assert report.n_users == lake_data.n_users == 814
    assert report.metrics["ndcg@10"] > 2 * pop["ndcg@10"], (report.metrics, pop)
    assert report.metrics["hit_rate@10"] > 1.5 * pop["hit_rate@10"], (report.metrics, pop)


def test_sasrec_registration_loads_for_inference(lake_data, fit_local, tmp_path):
    params = {"hidden_dim": 16, "max_len": 20, "n_heads": 2}
    model = fit_local("sasrec", lake_data, epochs=1, overrides=params)
    job = JobConfig(name="sasrec_lake", model="sasrec", model_params=params,
                    dataset={"name": "lake", "options": {"root": "/lake"}})
    # The artifacts exactly as rank 0 writes them (worker_loop._finish), then the launcher's registration.
    run = tmp_path / "run"
    save_final(run, model.export_embeddings(), {"test/ndcg@10": 0.1}, describe_data(lake_data))
    torch.save(model.state_dict(), run / BEST_FILE)
    outcome = TrainingOutcome(metrics={"test/ndcg@10": 0.1}, artifacts_dir=run, job=job, run_name="r")
    settings = make_settings(tmp_path / "state", free_port())
    version = register_outcome(outcome, str(tmp_path / "registry"), name="sasrec", settings=settings)

    registered = ModelRegistry(tmp_path / "registry").load_latest("sasrec")
    manifest = registered.manifest
    assert registered.version == version and manifest["model"] == "sasrec"
    assert manifest["model_config"]["max_len"] == 20 and manifest["model_config"]["n_heads"] == 2
    assert manifest["ids"]["item"] == [str(i) for i in lake_data.item_ids]
    assert manifest["data_snapshot_id"] == lake_data.source_snapshot["id"] == manifest["data_snapshot"]["id"]
    assert registered.embeddings["item"].shape == (lake_data.n_items, 16)

    loaded = load_next_item_model(registered)
    item_row_of = loaded.row_of
    assert manifest["user_encoder"] == {"file": "user_encoder.pt2", "max_len": 20, "dim": 16, "format": "torch.export"}
    user = 0
    history = [str(lake_data.item_ids[i]) for i in lake_data.train[lake_data.train[:, 0] == user, 1]]
    candidates = [str(i) for i in lake_data.item_ids[:50]] + ["not-an-item"]
    scores = loaded.score_candidates(history, candidates)
    with torch.no_grad():
        seq = encode_history(history, item_row_of, 20)
        expected = model.score({SEQ: seq})[0, :50].numpy()
    np.testing.assert_allclose(scores[:50], expected, rtol=1e-5, atol=1e-5)
    assert np.isnan(scores[50])  # an unknown candidate has no score
    # the sequence is the user's last 20 items, as SASRec ids (row + 1), left-aligned to the end
    assert seq[0, -1].item() == item_row_of[history[-1]] + 1 and seq.shape == (1, 20)
    assert np.isnan(loaded.score_candidates(["unknown"], candidates)).all()
    with pytest.raises(ValueError, match="no exported user encoder"):
        load_next_item_model(dataclasses.replace(registered, artefacts={}))
    shuffled = registered.embeddings["item"][::-1].copy()
    with pytest.raises(ValueError, match="disagree"):
        load_next_item_model(dataclasses.replace(registered, embeddings={**registered.embeddings, "item": shuffled}))


def test_serve_as_ranker_names(tmp_path):
    settings = make_settings(tmp_path / "state", free_port())
    s = settings.serving
    assert registry_name("sasrec", "lake", "sasrec_lake", settings) == s.ranker_model
    assert registry_name("sasrec", "taobao", "sasrec_taobao", settings) == s.ranker_model
    assert registry_name("lightgcn", "lake", "lightgcn_lake", settings) == s.item_model
    assert registry_name("sasrec", "sasrec_games", "sasrec_games", settings) == "sasrec_games"
    assert registry_name("sasrec", "sasrec_games", "x", settings, serve_as="ranker") == s.ranker_model
    args = build_parser().parse_args(["train", "sasrec", "--serve-as", "ranker", "--until", "2017-12-01"])
    assert (args.serve_as, args.until) == ("ranker", "2017-12-01")


def test_cmd_train_passes_the_settings_lake(tmp_path, monkeypatch):
    import ray_jobs.train as launcher

    settings = make_settings(tmp_path / "state", free_port())
    seen: list[argparse.Namespace] = []
    passed: list[Settings] = []
    monkeypatch.setattr(launcher, "run", lambda args, settings: seen.append(args) or passed.append(settings) or 0)
    cmd_train(build_parser().parse_args(["train", "lightgcn", "--config", "ray_jobs/configs/lightgcn_lake.yaml",
                                         "--until", "2017-12-01T00:00:00Z", "--epochs", "2"]), settings)
    assert passed == [settings]  # registration reads these settings' tombstones and ledger
    assert seen[0].lake_root == str(settings.data.state_dir / "lake" / "events")
    assert seen[0].until == "2017-12-01T00:00:00Z" and seen[0].name == settings.serving.item_model
    assert seen[0].epochs == 2 and seen[0].datasets_dir == str(settings.data.datasets_dir)
    # What the launcher's own parser makes of the same flags is what the shell command hands it.
    own = launcher.parse_args(["lightgcn", "--epochs", "2"])
    assert set(vars(own)) <= set(vars(seen[0]))
    cmd_train(build_parser().parse_args(["train", "bprmf", "--registry", str(tmp_path / "r")]), settings)
    assert seen[1].lake_root is None  # only lake jobs get a lake root
    monkeypatch.undo()  # the real launcher refuses lake options for another dataset, before starting Ray
    with pytest.raises(SystemExit, match="lake"):
        launcher.main(["bprmf", "--until", "2017-12-01"])


@pytest.mark.ray
@pytest.mark.slow
def test_streamrec_train_sasrec_on_the_lake_publishes_the_ranker(ray_local, taobao_lake, tmp_path, capsys):
    """`streamrec train sasrec --config sasrec_lake.yaml` on a real lake: published under
    serving.ranker_model with a pinned cut-off and the lake snapshot; loads and scores raw ids."""
    settings = make_settings(tmp_path / "state", free_port(), ray={"head_port": free_port()})
    args = build_parser().parse_args([
        "train", "sasrec", "--config", "ray_jobs/configs/sasrec_lake.yaml", "--epochs", "1",
        "--lake-root", str(taobao_lake), "--until", "2017-12-02T00:00:00Z",
        "--storage-path", str(tmp_path / "rr"),
    ])
    assert cmd_train(args, settings) == 0
    assert "serving.ranker_model" in capsys.readouterr().out
    registered = ModelRegistry(settings.data.state_dir / "registry").load_latest(settings.serving.ranker_model)
    snapshot = registered.manifest["data_snapshot"]
    assert snapshot["until"] == "2017-12-02T00:00:00Z" and snapshot["max_event_time"] <= "2017-12-02T00:00:00Z"
    assert registered.config["dataset"]["options"]["expect_snapshot"] == registered.manifest["data_snapshot_id"]
    model = load_next_item_model(registered)
    history = list(model.row_of)[:5]
    scores = model.score_candidates(history, list(model.row_of)[:100])
    assert scores.shape == (100,) and np.isfinite(scores).all()


@pytest.mark.ray
@pytest.mark.slow
def test_checkpoint_every_reports_less_but_keeps_every_epoch(ray_local, taobao_lake, tmp_path):
    """Ray Train reports (with a checkpoint) at epochs 2 and 3 only; history still has all three."""
    from ray_jobs.trainers import run_training

    job = JobConfig.from_yaml("ray_jobs/configs/sasrec_lake.yaml", {
        "train": {"epochs": 3, "checkpoint_every": 2, "eval_every": 3, "progress": False},
        "model_params": {"hidden_dim": 16}, "dataset": {"options": {"root": str(taobao_lake)}},
        "storage_path": str(tmp_path / "rr")})
    outcome = run_training(job)
    epochs = [h for h in outcome.history if "train_time_s" in h]
    assert [h["epoch"] for h in epochs] == [0, 1, 2]
    assert ["last_report_s" in h for h in epochs] == [False, False, True]  # one report (epoch 1) before epoch 2
    assert all(h["torch_threads"] >= 1 and h["train_thread_cpu_s"] > 0 for h in epochs)
    assert outcome.metrics["done"] and outcome.job.dataset.options["expect_snapshot"].startswith("lake:")
