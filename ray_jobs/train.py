"""Launcher: ``python -m ray_jobs.train <model> --config <yaml> [options]``.

Works locally (starts a Ray instance) and on a cluster::

    ray job submit --working-dir . -- python -m ray_jobs.train lightgcn \\
        --config ray_jobs/configs/lightgcn_gowalla.yaml --num-workers 4 --use-gpu --registry s3://bucket/models

Prints the final metrics (with their evaluation protocol) as JSON and, with ``--registry``, writes a
new model version and moves its ``LATEST`` pointer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import ray

from ray_jobs.models import MODELS
from ray_jobs.registry import ModelRegistry, code_version, data_snapshot_id
from ray_jobs.trainers import JobConfig, TrainingOutcome, load_job_data, run_training
from ray_jobs.trainers.launch import ensure_ray

__all__ = ["main", "parse_args", "register_outcome"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIGS = {
    "popularity": "popularity_gowalla.yaml",
    "bprmf": "bprmf_gowalla.yaml",
    "lightgcn": "lightgcn_gowalla.yaml",
    "sasrec": "sasrec_games.yaml",
    "crosscbr": "crosscbr_youshu.yaml",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.train", description=__doc__.split("\n")[0])
    p.add_argument("model", choices=sorted(MODELS))
    p.add_argument("--config", type=Path, help="job YAML (default: the model's config in ray_jobs/configs/)")
    p.add_argument("--num-workers", type=int, help="Ray Train workers (DDP ranks)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker, NCCL backend")
    p.add_argument("--epochs", type=int, help="maximum epochs")
    p.add_argument("--max-users", type=int, help="train on a random slice of this many users")
    p.add_argument("--datasets-dir", help="folder with the shared datasets")
    p.add_argument("--max-failures", type=int, help="worker-group restarts allowed (Ray FailureConfig)")
    p.add_argument("--storage-path", help="Ray Train checkpoint storage (path or URI)")
    p.add_argument("--registry", help="model registry root (path or pyarrow URI) to publish to")
    p.add_argument("--name", help="run / registry name (default: from the config)")
    p.add_argument("--address", help="Ray cluster to join, e.g. 127.0.0.1:6380 (default: $RAY_ADDRESS, "
                                     "else a private local instance)")
    return p.parse_args(argv)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    o: dict[str, Any] = {"model": args.model}
    if args.num_workers is not None:
        o.setdefault("scaling", {})["num_workers"] = args.num_workers
    if args.use_gpu:
        o.setdefault("scaling", {})["use_gpu"] = True
    if args.max_failures is not None:
        o.setdefault("scaling", {})["max_failures"] = args.max_failures
    if args.epochs is not None:
        o["train"] = {"epochs": args.epochs}
    if args.max_users is not None:
        o.setdefault("dataset", {})["max_users"] = args.max_users
    if args.datasets_dir is not None:
        o.setdefault("dataset", {})["datasets_dir"] = args.datasets_dir
    for key in ("storage_path", "registry", "name"):
        if getattr(args, key) is not None:
            o[key] = getattr(args, key)
    return o


def register_outcome(outcome: TrainingOutcome, registry_root: str, name: str | None = None) -> str:
    """Publish a finished run to the registry (as ``name``, default the job name); returns the version."""
    job = outcome.job
    data = load_job_data(job)
    embeddings = {p.stem: np.load(p) for p in sorted(outcome.embeddings_dir().glob("*.npy"))}
    weights = outcome.weights_file()
    # Raw ids of the rows (when the dataset has them, e.g. taobao): serving maps its ids with these.
    ids = {kind: [str(v) for v in raw.tolist()]
           for kind, raw in (("user", data.user_ids), ("item", data.item_ids))
           if raw is not None and kind in embeddings and len(raw) == len(embeddings[kind])}
    return ModelRegistry(registry_root).register(
        name or job.name,
        embeddings=embeddings,
        metrics=outcome.metrics,
        config=job.model_dump(mode="json"),
        data_snapshot_id=data_snapshot_id(data.source_files),
        code_version=code_version(),
        weights_file=weights if weights.exists() else None,
        extra={"model": job.model, "dataset": job.dataset.name, **({"ids": ids} if ids else {})},
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = args.config or CONFIG_DIR / DEFAULT_CONFIGS[args.model]
    job = JobConfig.from_yaml(config, _overrides(args))
    owns_ray = not ray.is_initialized()  # leave a caller's Ray session running
    try:
        ensure_ray(args.address)
        outcome = run_training(job)
        summary: dict[str, Any] = {"run_name": outcome.run_name, "metrics": outcome.metrics}
        if job.registry:
            summary["registered_version"] = register_outcome(outcome, job.registry)
            summary["registered_name"] = job.name
            summary["registry"] = job.registry
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    finally:
        if owns_ray:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
