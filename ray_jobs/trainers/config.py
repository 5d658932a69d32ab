"""The typed job config: dataset, model overrides, training loop, scaling and failure handling.

A job YAML (``ray_jobs/configs/<model>_<dataset>.yaml``) is checked here at the boundary; the model
keys are validated again by the model's own config class.

Example:
    >>> job = JobConfig.from_yaml("ray_jobs/configs/lightgcn_gowalla.yaml", {"train": {"epochs": 2}})  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

__all__ = ["DatasetConfig", "TrainConfig", "ScalingSettings", "JobConfig", "deep_merge"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetConfig(_Strict):
    name: str  # a key of ray_jobs.data.DATASETS
    datasets_dir: str | None = None  # resolved on the driver when None (see ray_jobs.data.paths)
    max_users: PositiveInt | None = None  # random user slice for quick runs and tests
    seed: int = 0  # seed of the user slice
    options: dict[str, Any] = Field(default_factory=dict)  # adapter keyword arguments


class TrainConfig(_Strict):
    epochs: PositiveInt = 100
    patience: PositiveInt = 10  # evaluations without improvement before stopping
    eval_every: PositiveInt = 1  # epochs between validation runs
    # Epochs between Ray Train reports, each with a resumable checkpoint (the last epoch always
    # reports; every epoch's metrics are kept in history.json). Raise it for epochs of a few seconds
    # or less: a report waits for the controller's 2 s poll and writes model + optimizer state.
    checkpoint_every: PositiveInt = 1
    # full ranking (seen items masked), SASRec's 100 sampled negatives, or the session-based one
    # (ray_jobs/evaluation/session.py: a case per prefix of each held-out session, no masking).
    protocol: Literal["full", "sampled", "session"] = "full"
    ks: list[PositiveInt] = Field(default_factory=lambda: [20])
    monitor: str = "recall@20"  # validation metric for early stopping and best-checkpoint choice
    n_negatives: PositiveInt = 100  # candidates per user for protocol "sampled"
    eval_batch_size: PositiveInt = 1024  # users scored per chunk
    max_eval_users: PositiveInt | None = None  # random subset of users to evaluate (None: all)
    seed: int = 2020  # seeds model init, sampling and evaluation negatives
    progress: bool = True  # tqdm bar on rank 0
    # Test-only fault injection: rank 0 hard-exits once, halfway through this epoch.
    fail_once_at_epoch: int | None = None
    fail_marker: str | None = None  # file created when the injected failure fires

    @model_validator(mode="after")
    def _monitor_is_computed(self) -> "TrainConfig":
        name, _, k = self.monitor.partition("@")
        computed = {"hit_rate", "ndcg"}
        if self.protocol == "full":
            computed |= {"recall", "precision", "mrr"}
        if self.protocol == "session":
            computed = {"p", "mrr", "ndcg"}
        if name not in computed or not k.isdigit() or int(k) not in self.ks:
            raise ValueError(f"monitor {self.monitor!r} is not computed with protocol={self.protocol!r}, ks={self.ks}")
        return self


class ScalingSettings(_Strict):
    # Ray Train workers (DDP ranks): a number, or [min, max] for elastic training (Ray Train v2): a
    # run starts with as many workers as the cluster fits (at most max) and, after losing a node,
    # resumes from its latest checkpoint with as many as still fit (at least min).
    num_workers: PositiveInt | tuple[PositiveInt, PositiveInt] = 1
    use_gpu: bool = False
    max_failures: int = Field(default=0, ge=-1)  # Ray FailureConfig; -1 retries forever
    # Logical resources each worker holds ("CPU", "GPU", "memory" or a node's custom resource);
    # None: Ray's default, 1 CPU (and 1 GPU with use_gpu).
    resources_per_worker: dict[str, float] | None = None
    # Placement group strategy of the workers: PACK fills one node first, SPREAD puts them on
    # different nodes where it can; the STRICT_ variants fail to schedule otherwise.
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"

    @model_validator(mode="after")
    def _elastic_range(self) -> "ScalingSettings":
        if isinstance(self.num_workers, tuple) and self.num_workers[0] > self.num_workers[1]:
            raise ValueError(f"num_workers {list(self.num_workers)}: min is above max")
        return self


class JobConfig(_Strict):
    name: str  # run and registry name, e.g. "lightgcn_gowalla"
    model: str  # a key of ray_jobs.models.MODELS
    model_params: dict[str, Any] = Field(default_factory=dict)  # overrides of the model's YAML
    dataset: DatasetConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    scaling: ScalingSettings = Field(default_factory=ScalingSettings)
    storage_path: str | None = None  # Ray Train storage for checkpoints (default ~/ray_results)
    registry: str | None = None  # model registry root (path or URI); None skips registration

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> "JobConfig":
        """Load a job YAML and deep-merge ``overrides`` (e.g. from the command line)."""
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
        return cls(**deep_merge(raw, overrides or {}))


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in recursively (``update`` wins)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
