"""Retraining on the loop's own events: when is a retrain due, and submitting it as Ray jobs.

    streamrec retrain            # one check: submit the retrain if it is due, wait, record it
    streamrec retrain --watch    # check every retrain.check_interval_s (the loop's retrain trigger)
    streamrec retrain --force    # retrain now

The trigger counts the events the feature pipeline has written to the lake (its consumer group's
committed offsets on the events topic) since the last retrain, which this module records in
``<state_dir>/retrain/last.json``. A due retrain is one Ray job per configured model
(``retrain.jobs``), submitted with Ray's own ``JobSubmissionClient`` (what ``ray job submit`` does)
to the running head; each job is ``streamrec train`` and registers its model, and serving
hot-loads the new version on its next registry refresh (``serving.refresh_s``) without dropping a
request. On Kubernetes the same check runs every 15 minutes as a CronJob against the shared
RayCluster (``deploy/k8s/base/ray/cronjob-retrain.yaml``, ``retrain.jobs_address``).

Every check, due or not, first applies new deletion tombstones to the model registry
(``ray_jobs.registry.privacy``): the registry is training's, so this is where a deletion made
through serving's API leaves it.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from streamrec.runtime.config import RetrainConfig, RetrainJob, Settings
from streamrec.runtime.files import write_atomically

__all__ = ["RetrainDecision", "RetrainRecord", "lake_position", "retrain_due", "run_retrain", "submit_jobs"]

REPO_ROOT = Path(__file__).resolve().parents[1]
# Not uploaded with the job's working dir: environments, local state, caches, reports.
WORKING_DIR_EXCLUDES = [".venv", ".git", ".streamrec", ".mypy_cache", ".pytest_cache", "__pycache__", "*.pyc",
                        "*.egg-info", "reports", "out", "bench_results"]


@dataclass(frozen=True)
class RetrainDecision:
    due: bool
    reason: str
    new_events: int
    age_s: float


@dataclass(frozen=True)
class RetrainRecord:
    """What the last retrain trained on (``last.json``)."""

    position: int  # events in the lake (summed committed offsets) when it was submitted
    submitted_at: float  # unix seconds
    finished_at: float | None = None
    jobs: tuple[dict[str, Any], ...] = ()


def retrain_due(new_events: int, age_s: float, config: RetrainConfig, force: bool = False) -> RetrainDecision:
    """Due when ``min_new_events`` new events reached the lake, or the models are older than
    ``max_age_s`` and anything new came in (nothing new: retraining would reproduce the models)."""
    if force:
        return RetrainDecision(True, "forced", new_events, age_s)
    if new_events >= config.min_new_events:
        return RetrainDecision(True, f"{new_events:,} new events >= {config.min_new_events:,}", new_events, age_s)
    if age_s >= config.max_age_s and new_events > 0:
        return RetrainDecision(True, f"models {age_s:,.0f}s old >= {config.max_age_s:,.0f}s, {new_events:,} new events",
                               new_events, age_s)
    return RetrainDecision(False, f"{new_events:,} new events < {config.min_new_events:,}, "
                                  f"models {age_s:,.0f}s old < {config.max_age_s:,.0f}s", new_events, age_s)


def lake_position(settings: Settings) -> int:
    """Events the feature pipeline has committed (written to Feast and the lake), all partitions."""
    from streamrec.runtime.kafka import committed_offsets

    committed = committed_offsets(settings.kafka, settings.kafka.topics.events, settings.pipeline.group_id)
    return sum(offset or 0 for offset in committed.values())


def _record_path(settings: Settings) -> Path:
    return settings.data.state_dir / "retrain" / "last.json"


def last_record(settings: Settings) -> RetrainRecord | None:
    path = _record_path(settings)
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    return RetrainRecord(int(raw["position"]), float(raw["submitted_at"]), raw.get("finished_at"), tuple(raw.get("jobs", ())))


def save_record(settings: Settings, record: RetrainRecord) -> None:
    write_atomically(_record_path(settings), json.dumps(asdict(record), indent=2))


def _entrypoint(job: RetrainJob, epochs: int | None) -> str:
    command = [sys.executable, "-m", "streamrec.cli", "train", job.model, "--config", job.config, "--serve-as", job.serve_as]
    if epochs:
        command += ["--epochs", str(epochs)]
    return " ".join(command)


def _job_client(settings: Settings) -> Any:
    """Ray's JobSubmissionClient for ``retrain.jobs_address``, else this stack's own head (with
    its token file). A configured cluster's token comes the way Ray's clients read it
    (RAY_AUTH_MODE / RAY_AUTH_TOKEN in the environment)."""
    from ray.job_submission import JobSubmissionClient

    from streamrec.runtime.ray_access import dashboard_url, ray_auth_headers

    if settings.retrain.jobs_address:
        return JobSubmissionClient(settings.retrain.jobs_address)
    return JobSubmissionClient(dashboard_url(settings), headers=ray_auth_headers(settings))


def submit_jobs(settings: Settings, jobs: list[RetrainJob], epochs: int | None) -> list[dict[str, Any]]:
    """Submit one Ray job per model to the running head; returns their ids. Each job's driver runs
    ``streamrec train`` with this stack's state dir (registry, lake, Ray token) and code."""
    from ray_jobs.registry import code_version

    client = _job_client(settings)
    # The job's working dir is a copy without .git: the version is read here and carried through,
    # or every retrained model would be registered with code_version "unknown".
    env = {"STREAMREC_DATA__STATE_DIR": str(Path(settings.data.state_dir).resolve()),
           "STREAMREC_DATA__DATASETS_DIR": str(Path(settings.data.datasets_dir).resolve()),
           "STREAMREC_CODE_VERSION": code_version()}
    submitted = []
    for job in jobs:
        job_id = client.submit_job(
            entrypoint=_entrypoint(job, epochs),
            runtime_env={"working_dir": str(REPO_ROOT), "excludes": WORKING_DIR_EXCLUDES, "env_vars": env},
            metadata={"streamrec": "retrain", "model": job.model},
        )
        submitted.append({"model": job.model, "serve_as": job.serve_as, "job_id": job_id})
    return submitted


def wait_for_jobs(settings: Settings, submitted: list[dict[str, Any]], timeout_s: float) -> list[dict[str, Any]]:
    """Until every job is terminal; each entry gains its final ``status``."""
    client = _job_client(settings)
    deadline = time.monotonic() + timeout_s
    out = []
    for job in submitted:
        status = client.get_job_status(job["job_id"])
        while not status.is_terminal() and time.monotonic() < deadline:
            time.sleep(2.0)
            status = client.get_job_status(job["job_id"])
        out.append({**job, "status": str(status.value if hasattr(status, "value") else status)})
    return out


def run_retrain(settings: Settings, force: bool = False, log: Any = print) -> RetrainDecision:
    """One check: first drop the users of new tombstones from the registry (training's room writes
    it, so a deletion made through the API reaches it here), then the trigger; when due, submit
    the jobs, wait for them and record the retrain."""
    from ray_jobs.registry.privacy import apply_registry_tombstones

    deletions = apply_registry_tombstones(settings)
    if deletions.versions:
        models = ", ".join(f"{m} -> {v}" for m, v in deletions.versions.items())
        log(f"{len(deletions.users)} deleted users dropped from the registry: {models}")
    position = lake_position(settings)
    last = last_record(settings)
    new_events = position - (last.position if last else 0)
    age_s = time.time() - last.submitted_at if last else float("inf")
    decision = retrain_due(new_events, age_s, settings.retrain, force)
    if not decision.due:
        return decision
    log(f"retrain due ({decision.reason}): submitting {', '.join(j.model for j in settings.retrain.jobs)}")
    record = RetrainRecord(position, time.time())
    finished: list[dict[str, Any]] = []
    for job in settings.retrain.jobs:  # one at a time: a small head is not oversubscribed by both
        submitted = submit_jobs(settings, [job], settings.retrain.epochs)
        finished += wait_for_jobs(settings, submitted, settings.retrain.job_timeout_s)
    save_record(settings, RetrainRecord(record.position, record.submitted_at, time.time(), tuple(finished)))
    outcomes = ", ".join(f"{j['model']} {j['status']}" for j in finished)
    log(f"retrain finished: {outcomes}")
    return decision
