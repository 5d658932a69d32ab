"""`ray job submit` path: a real local Ray head (a subprocess), JobSubmissionClient, registry.

The head is a private `ray start --head --block` on free ports, stopped with SIGINT to its own
process group (never `ray stop`, which kills every Ray cluster on the machine).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ray_jobs.registry import ModelRegistry
from support import free_port

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
RAY_BIN = Path(sys.executable).with_name("ray")
LOCAL_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
EXCLUDES = [".venv", ".git", ".streamrec", ".mypy_cache", ".pytest_cache", "__pycache__", "*.pyc",
            "*.egg-info", "reports", "out", "bench_results"]


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
    """A private Ray head on free ports; yields (dashboard / job API URL, GCS port)."""
    for key, value in LOCAL_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    dash, gcs = free_port(), free_port()
    argv = [str(RAY_BIN), "start", "--head", "--block", f"--port={gcs}", f"--dashboard-port={dash}",
            "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1", "--num-cpus=2",
            f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", "--disable-usage-stats"]
    log = open(tmp_path / "ray_head.log", "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **LOCAL_ENV})
    url = f"http://127.0.0.1:{dash}"
    try:
        _wait(lambda: proc.poll() is None and httpx.get(f"{url}/api/version", timeout=2).status_code == 200,
              120, "Ray dashboard")
        yield url, gcs
    finally:
        # `ray start --block` tears down its own cluster on SIGINT.
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


def test_submitted_job_registers_model(ray_head, datasets_dir, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    registry = tmp_path / "registry"
    client = JobSubmissionClient(ray_head[0])
    entrypoint = (
        f"{sys.executable} -m ray_jobs.train bprmf --config ray_jobs/configs/bprmf_gowalla.yaml"
        f" --epochs 2 --max-users 400 --datasets-dir {datasets_dir} --registry {registry}"
        f" --storage-path {tmp_path / 'ray_results'}"
    )
    job_id = client.submit_job(
        entrypoint=entrypoint,
        runtime_env={"working_dir": str(REPO_ROOT), "excludes": EXCLUDES,
                     "env_vars": {"STREAMREC_CODE_VERSION": "test-submit-0123", **LOCAL_ENV}},
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


def test_streamrec_train_joins_the_running_head(ray_head, datasets_dir, tmp_path, capsys):
    """`streamrec train` uses the head on settings.ray.head_port (as `streamrec up` runs it)."""
    import ray

    from ray_jobs.cli import cmd_train
    from streamrec.cli import build_parser
    from support import make_settings

    assert not ray.is_initialized()
    settings = make_settings(tmp_path / "state", free_port(), ray={"head_port": ray_head[1]})
    args = build_parser().parse_args([
        "train", "bprmf", "--epochs", "1", "--max-users", "300", "--datasets-dir", str(datasets_dir),
        "--storage-path", str(tmp_path / "rr"),
    ])
    assert cmd_train(args, settings) == 0
    assert f"on Ray at 127.0.0.1:{ray_head[1]}" in capsys.readouterr().out
    assert not ray.is_initialized()  # the CLI disconnects; the head keeps running
    model = ModelRegistry(settings.data.state_dir / "registry").load_latest("bprmf_gowalla")
    assert model.manifest["metrics"]["done"] is True
