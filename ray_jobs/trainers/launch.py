"""Build and run the Ray TorchTrainer for a job, and collect the final checkpoint.

Example:
    >>> outcome = run_training(JobConfig.from_yaml("ray_jobs/configs/bprmf_gowalla.yaml"))  # doctest: +SKIP
    >>> outcome.metrics["test/recall@20"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from ray_jobs.data.catalog import LAKE_EVENT_TYPES
from ray_jobs.data.lake import default_lake_root, read_lake_snapshot
from ray_jobs.data.lake_bundles import read_catalogue
from ray_jobs.data.paths import resolve_datasets_dir
from ray_jobs.trainers.checkpointing import BEST_FILE, DATA_FILE, FINAL_DIR
from ray_jobs.trainers.config import JobConfig
from ray_jobs.trainers.worker_loop import HISTORY_FILE, train_loop_per_worker

__all__ = ["TrainingOutcome", "run_training", "ensure_ray"]

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class TrainingOutcome:
    """What a finished run produced.

    Attributes:
        metrics: the final report (valid and test metrics of the best epoch, with protocols).
        artifacts_dir: local copy of the final checkpoint: ``best_model.pt`` and ``final/``.
        job: the resolved job config that ran.
        run_name: the Ray Train run name (its checkpoints live under ``storage_path/run_name``).
        history: the per-epoch reports of rank 0 (train loss, validation metrics), oldest first.
    """

    metrics: dict[str, Any]
    artifacts_dir: Path
    job: JobConfig
    run_name: str
    history: tuple[dict[str, Any], ...] = ()

    def embeddings_dir(self) -> Path:
        return self.artifacts_dir / FINAL_DIR / "embeddings"

    def weights_file(self) -> Path:
        return self.artifacts_dir / BEST_FILE

    def data_info_file(self) -> Path:
        return self.artifacts_dir / FINAL_DIR / DATA_FILE


def ensure_ray(address: str | None = None) -> None:
    """[Ray] Join ``address`` or the cluster in ``RAY_ADDRESS`` (or the job's cluster), else start a
    private local one."""
    if ray.is_initialized():
        return
    # Make this checkout importable in worker processes without installing it.
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    if address:  # an existing cluster on this machine (e.g. the head `streamrec up` runs)
        ray.init(address=address, runtime_env={"env_vars": {"PYTHONPATH": path}})
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()  # under `ray job submit` the working_dir runtime env is inherited
        return
    # address="local": start a fresh instance rather than silently joining one found in /tmp/ray.
    ray.init(address="local", runtime_env={"env_vars": {"PYTHONPATH": path}})


def resolve_job(job: JobConfig) -> JobConfig:
    """Pin the data on the driver: the datasets directory as an absolute path (workers may run
    elsewhere), or for the event lake its root, cut-off and snapshot (see :func:`pin_lake`)."""
    if job.dataset.name == "recbole":
        return job
    if job.dataset.name in LAKE_EVENT_TYPES:  # lake, lake_bundles
        return pin_lake(job)
    d = job.dataset.model_copy(update={"datasets_dir": str(resolve_datasets_dir(job.dataset.datasets_dir))})
    return job.model_copy(update={"dataset": d})


def pin_lake(job: JobConfig) -> JobConfig:
    """Fix what a lake job trains on before any worker reads it.

    The lake grows while a job runs (the feature pipeline keeps writing). Every worker, every restart
    after a failure, and the registered config must see the same events, so the driver resolves the
    root (default: the one the pipeline writes), sets ``until`` to the latest event time now when it
    is open, and pins ``expect_snapshot``: a worker that reads anything else fails instead of
    training on different data than its peers. For ``lake_bundles`` it also reads a
    ``catalogue_file`` into the ``catalogue`` option, so that workers and the registered config carry
    the catalogue bundles themselves.
    """
    options = dict(job.dataset.options)
    if options.get("root") is None:
        options["root"] = str(default_lake_root())
    snapshot = read_lake_snapshot(options["root"], options.get("until"),
                                  options.get("event_types", LAKE_EVENT_TYPES[job.dataset.name]))
    if snapshot.rows == 0:
        raise ValueError(f"nothing to train on: no {list(snapshot.event_types)} events in the lake at "
                         f"{snapshot.root}" + (f" up to {snapshot.until}" if snapshot.until else ""))
    if options.get("until") is None:
        options["until"] = snapshot.max_event_time
    options["expect_snapshot"] = snapshot.id
    if job.dataset.name == "lake_bundles" and options.get("catalogue_file"):
        options["catalogue"] = [*options.get("catalogue", []), *read_catalogue(options.pop("catalogue_file"))]
    return job.model_copy(update={"dataset": job.dataset.model_copy(update={"options": options})})


def run_training(job: JobConfig, keep_dir: Path | None = None) -> TrainingOutcome:
    """Run ``job`` on Ray Train and return its final metrics and artifacts.

    Args:
        job: the job config (scaling and failure settings included).
        keep_dir: where to copy the final checkpoint; a fresh temporary directory when ``None``.

    Raises:
        ray.train.TrainingFailedError: when workers fail more than ``max_failures`` times.
    """
    job = resolve_job(job)
    ensure_ray()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    run_name = f"{job.name}-{stamp}-{uuid.uuid4().hex[:6]}"  # unique: v2 would resume a same-named run
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=job.model_dump(),
        scaling_config=ScalingConfig(  # [Ray] how many workers, what each holds, where they go
            num_workers=job.scaling.num_workers, use_gpu=job.scaling.use_gpu,
            resources_per_worker=job.scaling.resources_per_worker,
            placement_strategy=job.scaling.placement_strategy,
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=job.storage_path,
            failure_config=FailureConfig(max_failures=job.scaling.max_failures),  # [Ray] restart workers
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"run {run_name} finished without a checkpoint")
    out = keep_dir or Path(tempfile.mkdtemp(prefix=f"{job.name}-"))
    with result.checkpoint.as_directory() as d:
        shutil.copytree(d, out, dirs_exist_ok=True)
    metrics = json.loads((out / FINAL_DIR / "metrics.json").read_text())
    history_file = out / HISTORY_FILE
    history = tuple(json.loads(history_file.read_text())) if history_file.exists() else _history(result)
    return TrainingOutcome(metrics=metrics, artifacts_dir=out, job=job, run_name=run_name, history=history)


def _history(result: Any) -> tuple[dict[str, Any], ...]:
    """Fallback: the reports Ray kept (only those of retained checkpoints), JSON-safe scalars only."""
    frame = getattr(result, "metrics_dataframe", None)
    if frame is None or len(frame) == 0:
        return ()
    rows = []
    for rec in frame.to_dict("records"):
        row = {}
        for k, v in rec.items():
            v = v.item() if hasattr(v, "item") else v
            if k.startswith(("config/", "_")) or not isinstance(v, (bool, int, float, str)):
                continue
            if isinstance(v, float) and not math.isfinite(v):
                continue  # epochs without validation have NaN there
            row[k] = v
        rows.append(row)
    return tuple(rows)
