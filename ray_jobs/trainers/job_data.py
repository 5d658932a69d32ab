"""Load the dataset a job config names (on the driver and, identically, on every worker)."""

from __future__ import annotations

from ray_jobs.data import InteractionData, load_dataset
from ray_jobs.trainers.config import JobConfig

__all__ = ["load_job_data"]


def load_job_data(job: JobConfig) -> InteractionData:
    """The job's dataset, sliced to ``dataset.max_users`` when set."""
    d = job.dataset
    return load_dataset(d.name, d.datasets_dir, max_users=d.max_users, seed=d.seed, **d.options)
