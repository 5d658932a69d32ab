"""Ray Train end to end: launcher + registry, 1 vs 2 DDP workers, resume after a killed worker."""

from __future__ import annotations

import pytest

from ray_jobs.registry import ModelRegistry
from ray_jobs.train import main
from ray_jobs.trainers import JobConfig, run_training

pytestmark = pytest.mark.ray

# model -> (dataset slice, fast hyper-parameters)
SETUPS = {
    "bprmf": ({"name": "gowalla", "max_users": 600}, {"lr": 0.01, "batch_size": 512, "reg": 0.03, "embedding_dim": 16}),
    "crosscbr": ({"name": "youshu", "max_users": 600}, {"lr": 0.01, "batch_size": 256, "embedding_dim": 16}),
}


def _job(tmp_path, datasets_dir, model: str = "bprmf", **train) -> JobConfig:
    dataset, params = SETUPS[model]
    return JobConfig(
        name=f"{model}_test",
        model=model,
        model_params=params,
        dataset={**dataset, "seed": 0, "datasets_dir": str(datasets_dir)},
        train={"epochs": 3, "progress": False, "ks": [20], **train},
        storage_path=str(tmp_path / "ray_results"),
    )


def test_launcher_registers_model(ray_local, datasets_dir, tmp_path, monkeypatch):
    import ray_jobs.train as launcher

    outcomes = []
    monkeypatch.setattr(launcher, "run_training", lambda job: outcomes.append(run_training(job)) or outcomes[-1])
    registry = tmp_path / "registry"
    rc = main([
        "bprmf", "--config", "ray_jobs/configs/bprmf_gowalla.yaml", "--epochs", "2", "--max-users", "400",
        "--datasets-dir", str(datasets_dir), "--registry", str(registry),
        "--storage-path", str(tmp_path / "ray_results"),
    ])
    assert rc == 0
    # The training curves (one row per epoch, with throughput) come back with the outcome.
    rows = list(outcomes[0].history)
    assert [r["epoch"] for r in rows] == [0, 1]
    assert all(r["train_samples_per_s"] > 0 and r["train_samples"] > 0 and "train_loss" in r for r in rows)
    assert ["valid/recall@20" in r for r in rows] == [False, True]  # eval_every 10: only the last epoch
    model = ModelRegistry(registry).load_latest("bprmf_gowalla")
    m = model.manifest["metrics"]
    assert m["test/protocol"].startswith("full ranking") and 0.0 <= m["test/recall@20"] <= 1.0
    assert m["epoch"] == 1 and m["done"] is True
    assert model.manifest["data_snapshot_id"].startswith("sha256:")
    assert model.embeddings["item"].shape[1] == 64 and model.embeddings["user"].shape == (400, 64)
    assert model.config["train"]["epochs"] == 2
    assert set(model.state_dict()) == {"user_emb.weight", "item_emb.weight"}


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(SETUPS))
def test_two_workers_match_one(ray_local, datasets_dir, tmp_path, model):
    one = run_training(_job(tmp_path, datasets_dir, model)).metrics
    two_job = _job(tmp_path, datasets_dir, model)
    two_job = two_job.model_copy(update={"scaling": two_job.scaling.model_copy(update={"num_workers": 2})})
    two = run_training(two_job).metrics
    assert one["test/n_users"] == two["test/n_users"]
    # Same global batches and averaged gradients: equal up to float summation order.
    for key in ("valid/recall@20", "valid/ndcg@20", "test/recall@20", "test/ndcg@20"):
        assert two[key] == pytest.approx(one[key], abs=5e-4), (key, one[key], two[key])


@pytest.mark.slow
def test_resume_after_killed_worker(ray_local, datasets_dir, tmp_path):
    marker = tmp_path / "killed"
    job = _job(tmp_path, datasets_dir, epochs=4, fail_once_at_epoch=2, fail_marker=str(marker))
    job = job.model_copy(update={"scaling": job.scaling.model_copy(update={"max_failures": 1})})
    resumed = run_training(job).metrics
    assert marker.exists()  # the worker really died
    # Killed halfway through epoch 2: restarts from the last checkpoint Ray had registered (epoch 1,
    # or epoch 0 if the epoch-1 report was still in flight), never from scratch.
    assert resumed["resumed_from_epoch"] in (1, 2) and resumed["epoch"] == 3
    clean = run_training(_job(tmp_path, datasets_dir, epochs=4)).metrics
    assert clean["resumed_from_epoch"] == 0
    # Resuming restores weights, optimizer and early-stopping state: same result as no failure.
    for key in ("test/recall@20", "test/ndcg@20"):
        assert resumed[key] == pytest.approx(clean[key], abs=1e-6), key


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_single_gpu_worker(ray_local, datasets_dir, tmp_path):
    job = _job(tmp_path, datasets_dir, epochs=2)
    job = job.model_copy(update={
        "model": "lightgcn",
        "name": "lightgcn_gpu_test",
        "model_params": {"lr": 0.01, "batch_size": 512, "embedding_dim": 16},
        "scaling": job.scaling.model_copy(update={"use_gpu": True}),
    })
    metrics = run_training(job).metrics
    assert metrics["done"] is True and metrics["test/recall@20"] > 0

