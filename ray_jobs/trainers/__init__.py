"""Ray Train worker loop, job config, batching, distributed evaluation and the launcher.

Example:
    >>> from ray_jobs.trainers import JobConfig, run_training
    >>> outcome = run_training(JobConfig.from_yaml("ray_jobs/configs/lightgcn_gowalla.yaml"))  # doctest: +SKIP
"""

from ray_jobs.trainers.config import DatasetConfig, JobConfig, ScalingSettings, TrainConfig
from ray_jobs.trainers.early_stopping import EarlyStopping
from ray_jobs.trainers.evaluate import evaluate
from ray_jobs.trainers.job_data import load_job_data
from ray_jobs.trainers.launch import TrainingOutcome, ensure_ray, run_training
from ray_jobs.trainers.worker_loop import train_loop_per_worker

__all__ = [
    "JobConfig",
    "DatasetConfig",
    "TrainConfig",
    "ScalingSettings",
    "EarlyStopping",
    "evaluate",
    "load_job_data",
    "TrainingOutcome",
    "run_training",
    "ensure_ray",
    "train_loop_per_worker",
]
