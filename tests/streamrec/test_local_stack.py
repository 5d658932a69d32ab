"""`streamrec up / status / replay / down` as a user runs them, on private ports."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from support import private_stack_env, taobao_csv
from streamrec.local_stack import port_open

pytestmark = [pytest.mark.kafka, pytest.mark.ray]


def _streamrec(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).parent / "streamrec"
    return subprocess.run([str(cli), *args], env=env, capture_output=True, text=True, timeout=timeout)


def _wait_for_metric(port: int, name: str, value: float, timeout_s: float = 45.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        except httpx.HTTPError:
            text = ""
        if any(line.startswith(name + "{") and float(line.rsplit(" ", 1)[1]) >= value for line in text.splitlines()):
            return True
        time.sleep(2)
    return False


def test_up_status_replay_down_leaves_nothing_running(tmp_path: Path) -> None:
    taobao_csv()  # the replay step reads it
    ports, env = private_stack_env(tmp_path / "state")
    env["STREAMREC_COLLECTOR__AUTH_TOKEN"] = "stack-test-token"
    try:
        up = _streamrec(env, "up")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "events(4), events.dlq(4)" in up.stdout
        status = _streamrec(env, "status")
        assert status.returncode == 0 and "collector: RUNNING" in status.stdout, status.stdout
        assert (tmp_path / "state" / "run" / "tansu.pid").exists()

        replay = _streamrec(env, "replay", "taobao", "--limit", "1000")
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert "accepted 1000, rejected 0" in replay.stdout
        # The collector's counters reach Prometheus through Ray's metrics endpoint.
        assert _wait_for_metric(ports["metrics"], "ray_streamrec_collector_events_accepted_total", 1000.0)

        again = _streamrec(env, "up")  # idempotent: a second `up` reuses what runs
        assert again.returncode == 0, again.stderr
    finally:
        down = _streamrec(env, "down")
    assert down.returncode == 0, down.stderr
    assert "ray     stopped" in down.stdout and "broker  stopped" in down.stdout
    assert not any(port_open("127.0.0.1", p) for p in ports.values())
    assert not list((tmp_path / "state" / "run").glob("*.pid"))
    assert _streamrec(env, "status").returncode == 1
