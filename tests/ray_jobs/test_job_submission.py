"""`ray job submit` path: the embedded Ray head (``streamrec.local_stack``, a subprocess, with its
token authentication), JobSubmissionClient, registry.

The head runs on private ports and is stopped with SIGINT to its own process group (never
`ray stop`, which kills every Ray cluster on the machine).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest

from ray_jobs.registry import ModelRegistry
from ray_jobs.retrain import WORKING_DIR_EXCLUDES
from streamrec.local_stack import dashboard_url, ray_auth_headers, ray_client_env, start_ray_head, stop_ray_head
from support import free_port, make_settings, private_ray_settings

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
EXCLUDES = WORKING_DIR_EXCLUDES  # what the loop's retrain jobs leave out of their working dir too


def _wait(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(1.0)
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f}s")


@pytest.fixture
def ray_head(tmp_path, monkeypatch):
    """The embedded head of private settings (free ports, 2 CPUs); yields (job API URL, settings)."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    settings = make_settings(tmp_path / "state", free_port(), ray={**private_ray_settings(), "num_cpus": 2})
    start_ray_head(settings, timeout_s=120)
    url = dashboard_url(settings)
    try:
        _wait(lambda: httpx.get(f"{url}/api/version", headers=ray_auth_headers(settings), timeout=2).status_code == 200,
              120, "Ray dashboard")
        yield url, settings
    finally:
        stop_ray_head(settings)


def test_submitted_job_registers_model(ray_head, datasets_dir, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    registry = tmp_path / "registry"
    client = JobSubmissionClient(ray_head[0], headers=ray_auth_headers(ray_head[1]))
    entrypoint = (
        f"{sys.executable} -m ray_jobs.train bprmf --config ray_jobs/configs/bprmf_gowalla.yaml"
        f" --epochs 2 --max-users 400 --datasets-dir {datasets_dir} --registry {registry}"
        f" --storage-path {tmp_path / 'ray_results'}"
    )
    job_id = client.submit_job(
        entrypoint=entrypoint,
        runtime_env={"working_dir": str(REPO_ROOT), "excludes": EXCLUDES,
                     "env_vars": {"STREAMREC_CODE_VERSION": "test-submit-0123"}},
    )
    deadline = time.monotonic() + 420
    status = client.get_job_status(job_id)
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(2)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, f"{status}\n{logs[-4000:]}"
    model = ModelRegistry(registry).load_latest("bprmf_gowalla")
    m = model.manifest
    assert m["code_version"] == "test-submit-0123"  # carried through the runtime env
    assert m["data_snapshot_id"].startswith("sha256:")
    assert m["metrics"]["done"] is True and m["metrics"]["epoch"] == 1
    assert m["metrics"]["test/protocol"].startswith("full ranking")
    assert model.embeddings["user"].shape == (400, 64)
    assert '"registered_version"' in logs  # the launcher's JSON summary reached the job logs


def test_streamrec_train_joins_the_running_head(ray_head, datasets_dir, tmp_path):
    """`streamrec train`, as a user runs it, uses the head on settings.ray.head_port (as `streamrec up`
    runs it) with the stack's token."""
    import os
    import subprocess

    settings = ray_head[1]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("STREAMREC_", "RAY_AUTH"))},
           "STREAMREC_DATA__STATE_DIR": str(settings.data.state_dir),
           "STREAMREC_RAY__HEAD_PORT": str(settings.ray.head_port)}
    done = subprocess.run(
        [sys.executable, "-m", "streamrec.cli", "train", "bprmf", "--epochs", "1", "--max-users", "300",
         "--datasets-dir", str(datasets_dir), "--storage-path", str(tmp_path / "rr")],
        env=env, capture_output=True, text=True, timeout=400, cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert f"on Ray at 127.0.0.1:{settings.ray.head_port}" in done.stdout
    model = ModelRegistry(settings.data.state_dir / "registry").load_latest("bprmf_gowalla")
    assert model.manifest["metrics"]["done"] is True
