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
import torch

from ray_jobs.cli import add_training_arguments
from ray_jobs.data.catalog import LAKE_DATASETS
from ray_jobs.models import MODELS, is_next_item_model, model_config, rebuild_next_item_model, user_encoder_artefacts
from ray_jobs.registry import ModelRegistry, code_version, describe_data
from ray_jobs.registry.privacy import forget_deleted_users
from ray_jobs.trainers import JobConfig, TrainingOutcome, load_job_data, run_training
from ray_jobs.trainers.launch import ensure_ray
from streamrec.runtime.config import Settings, get_settings

__all__ = ["main", "parse_args", "register_outcome", "run"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIGS = {
    "popularity": "popularity_gowalla.yaml",
    "bprmf": "bprmf_gowalla.yaml",
    "lightgcn": "lightgcn_gowalla.yaml",
    "sasrec": "sasrec_games.yaml",
    "crosscbr": "crosscbr_youshu.yaml",
    "srgnn": "srgnn_taobao_sessions.yaml",
    "gcegnn": "gcegnn_taobao_sessions.yaml",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.train", description=__doc__.split("\n")[0])
    add_training_arguments(p, sorted(MODELS))
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
    for key, value in (("until", args.until), ("root", args.lake_root)):
        if value is not None:
            o.setdefault("dataset", {}).setdefault("options", {})[key] = value
    return o


def _trained_on(outcome: TrainingOutcome) -> dict[str, Any]:
    """What the workers trained on (``final/data.json``); older checkpoints lack it: reload the data."""
    path = outcome.data_info_file()
    if path.exists():
        return json.loads(path.read_text())
    return describe_data(load_job_data(outcome.job))


def register_outcome(outcome: TrainingOutcome, registry_root: str, *, settings: Settings, name: str | None = None) -> str:
    """Publish a finished run to the registry (as ``name``, default the job name); returns the version
    ``LATEST`` points to.

    Users deleted since (or just before) the run read the lake are dropped before the version is
    served (``ray_jobs.registry.privacy.forget_deleted_users``, with ``settings``' tombstone topic
    and ledger): it is registered without moving ``LATEST``, and ``LATEST`` moves to it, or to its
    copy without those users.

    The manifest gets, besides metrics and provenance: ``model`` and ``dataset`` names, the resolved
    ``model_config`` (YAML defaults + overrides: what rebuilding the network for inference needs),
    ``ids`` (raw ids of the embedding rows, when the dataset has them), for bundle data with raw ids
    ``bundle_items`` (row ``r`` of ``embeddings/bundle.npy`` is the bundle of these raw items), for the
    event lake ``data_snapshot`` (partitions, max event time, row count, cut-off) and ``history``
    (per-epoch metrics).
    """
    job = outcome.job
    trained_on = _trained_on(outcome)
    embeddings = {p.stem: np.load(p) for p in sorted(outcome.embeddings_dir().glob("*.npy"))}
    weights = outcome.weights_file()
    # Raw ids of the rows (when the dataset has them, e.g. taobao): serving maps its ids with these.
    ids = {kind: raw for kind, raw in trained_on["ids"].items()
           if kind in embeddings and len(raw) == len(embeddings[kind])}
    extra: dict[str, Any] = {"model": job.model, "dataset": job.dataset.name,
                             "model_config": model_config(job.model, job.model_params).model_dump(mode="json")}
    if ids:
        extra["ids"] = ids
    if trained_on.get("snapshot"):
        extra["data_snapshot"] = trained_on["snapshot"]
    bundle_items = trained_on.get("bundle_items")
    if bundle_items and "bundle" in embeddings and len(bundle_items) == len(embeddings["bundle"]):
        extra["bundle_items"] = bundle_items  # serving's BundleCandidates shows these items per bundle row
    if outcome.history:  # per-epoch loss / validation metrics: the training curves of `streamrec report`
        extra["history"] = list(outcome.history)
    artefacts: dict[str, bytes] = {}
    if is_next_item_model(job.model) and weights.exists() and "item" in ids:
        # What serving runs: the exported user encoder (serving does not import this package).
        network = rebuild_next_item_model(job.model, extra["model_config"], len(ids["item"]),
                                          torch.load(weights, map_location="cpu"))
        artefacts, entries = user_encoder_artefacts(network)
        extra.update(entries)
    name = name or job.name
    version = ModelRegistry(registry_root).register(
        name,
        embeddings=embeddings,
        metrics=outcome.metrics,
        config=job.model_dump(mode="json"),
        data_snapshot_id=trained_on["snapshot_id"],
        code_version=code_version(),
        weights_file=weights if weights.exists() else None,
        extra=extra,
        artefacts=artefacts,
        set_latest=False,
    )
    # The lake was read before the deletions that arrived while this run trained.
    return forget_deleted_users(settings, registry_root, name, version, ids.get("user", ()))


def main(argv: list[str] | None = None) -> int:
    from streamrec.runtime.logging_config import configure_logging

    args = parse_args(argv)
    configure_logging(get_settings().logging)
    return run(args, get_settings())


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Train as ``args`` (the flags of :func:`ray_jobs.cli.add_training_arguments` plus ``address``)
    say, register the outcome when a registry is given (deleted users dropped with ``settings``'
    tombstones), and print the JSON summary."""
    config = args.config or CONFIG_DIR / DEFAULT_CONFIGS[args.model]
    job = JobConfig.from_yaml(config, _overrides(args))
    if (args.until or args.lake_root) and job.dataset.name not in LAKE_DATASETS:
        raise SystemExit(f"--until / --lake-root apply to the lake datasets {list(LAKE_DATASETS)}, "
                         f"not {job.dataset.name!r}")
    owns_ray = not ray.is_initialized()  # leave a caller's Ray session running
    try:
        ensure_ray(args.address)
        outcome = run_training(job)
        summary: dict[str, Any] = {"run_name": outcome.run_name, "metrics": outcome.metrics}
        if job.registry:
            summary["registered_version"] = register_outcome(outcome, job.registry, settings=settings)
            summary["registered_name"] = job.name
            summary["registry"] = job.registry
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    finally:
        if owns_ray:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
