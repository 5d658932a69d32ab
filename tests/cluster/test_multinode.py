"""Ray across nodes, on one machine: a head and a second node, each its own `ray start --block`.

The two nodes (one logical CPU each, labelled by a custom resource, ``node_head`` / ``node_b``; every
port their own; both on 127.0.0.1 and listening on loopback only; Ray's token authentication on, as
for the head of `streamrec up`) form a private cluster under ``/tmp/streamrec-multinode-*``. On it:

* Serve: a two-replica deployment with ``max_replicas_per_node=1`` has a replica on each node, and
  both answer (``tests/cluster/serve_probe.py``, run with `ray job submit`).
* Ray Train: `python -m ray_jobs.train` submitted as a job, elastic (``num_workers: [1, 2]``, one CPU
  per worker), starts with one DDP worker on each node. Once it has reported a checkpoint, node B is
  killed (raylet, agents and workers, SIGKILL: a lost machine); the job still SUCCEEDS, resumed from
  a checkpoint (``"resumed_from_epoch": N``, N >= 1, in its JSON summary) by a new worker group of
  one worker on the head (Ray Train's elastic restart: DDP world size 2, then 1).

Nothing here uses `ray stop` (it would stop every Ray cluster on the machine): the fixture stops the
processes it started, and whatever else runs under its temp dir, by pid.

Run it with ``make test-multinode`` (3-4 minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from ray_jobs.data import default_datasets_dir
from ray_jobs.retrain import WORKING_DIR_EXCLUDES
from support import free_port, free_port_range

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.multinode]

REPO_ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
HEAD, NODE_B = "node_head", "node_b"  # the custom resource that labels each node
TRAIN_EPOCHS = 10
# Both nodes on 127.0.0.1: Ray listens on loopback only for exactly that node address (with any
# other, even 127.0.0.2, its GCS, raylets and agents listen on every interface). The head runs in
# Ray's single-machine mode as `streamrec up` runs it; node B through ray_start_loopback.py (why there).
HOST = "127.0.0.1"


@dataclass
class Node:
    """One `ray start --block` process (its own process group) and its log."""

    name: str
    proc: subprocess.Popen
    log: Path
    known: set[int] = field(default_factory=set)  # pids seen under it (raylet, agents, workers)

    def processes(self) -> list[psutil.Process]:
        """The `ray start` process and everything under it now (also remembered in ``known``)."""
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        self.known |= {p.pid for p in procs}
        return procs


@dataclass
class Cluster:
    temp_dir: Path
    gcs_address: str
    dashboard_url: str
    token: str
    head: Node
    b: Node

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def jobs(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard_url, headers=self.headers)

    def state(self):
        from ray.util.state import StateApiClient

        return StateApiClient(address=self.dashboard_url, headers=self.headers)

    def node_ids(self) -> dict[str, str]:
        """``{"node_head": id, "node_b": id}`` for the nodes that are ALIVE."""
        from ray.util.state.common import ListApiOptions, StateResource

        nodes = self.state().list(StateResource.NODES, options=ListApiOptions(detail=True),
                                  raise_on_missing_output=False)
        out = {}
        for n in nodes:
            n = n if isinstance(n, dict) else n.__dict__
            for label in (HEAD, NODE_B):
                if n["state"] == "ALIVE" and label in (n.get("resources_total") or {}):
                    out[label] = n["node_id"]
        return out

    def actors(self, class_name: str) -> list[dict[str, Any]]:
        from ray.util.state.common import ListApiOptions, StateResource

        options = ListApiOptions(detail=True, filters=[("class_name", "=", class_name)], limit=1000)
        actors = self.state().list(StateResource.ACTORS, options=options, raise_on_missing_output=False)
        return [a if isinstance(a, dict) else a.__dict__ for a in actors]


class NodeExited(RuntimeError):
    """A `ray start --block` process ended while the cluster should be up."""


def _wait(check: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except NodeExited:
            raise
        except Exception as e:  # noqa: BLE001 - not up yet
            last = e
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not reached after {timeout_s:.0f}s" + (f" (last error: {last!r})" if last else ""))


_taken: set[int] = set()


def _port() -> int:
    """A free loopback port not handed out before in this run."""
    while (port := free_port()) in _taken:
        pass
    _taken.add(port)
    return port


def _node_ports(workers: tuple[int, int]) -> list[str]:
    """The flags that give a node its own ports (Ray's defaults are fixed ports, e.g. the dashboard
    agent's 52365, which two nodes on one host, or a running `streamrec up`, would share)."""
    flags = ["node-manager-port", "object-manager-port", "metrics-export-port", "dashboard-agent-listen-port",
             "dashboard-agent-grpc-port", "runtime-env-agent-port"]
    return [*(f"--{flag}={_port()}" for flag in flags), f"--min-worker-port={workers[0]}",
            f"--max-worker-port={workers[1]}"]


def _start_node(name: str, argv: list[str], env: dict[str, str], log: Path) -> Node:
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)  # its own process group, like a separate machine
    return Node(name, proc, log)


def _alive(nodes: list[Node]) -> bool:
    """True while every `ray start` runs; raises with its log when one has exited."""
    for node in nodes:
        if node.proc.poll() is not None:
            tail = node.log.read_text(errors="replace").splitlines()[-5:]
            raise NodeExited(f"ray start ({node.name}) exited {node.proc.returncode}: " + " | ".join(tail))
    return True


def _kill(procs: list[psutil.Process], sig: int = signal.SIGKILL) -> None:
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def _ours(temp_dir: Path, pids: set[int]) -> list[psutil.Process]:
    """Live processes of this cluster: started under our nodes, or running under our temp dir (Ray
    passes the session dir to every raylet, agent and worker it starts)."""
    me, out = os.getuid(), []
    for p in psutil.process_iter(["pid", "uids", "cmdline"]):
        try:
            if p.info["uids"] is None or p.info["uids"].real != me:
                continue
            if p.pid in pids or any(str(temp_dir) in arg for arg in (p.info["cmdline"] or ())):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def _stop_cluster(cluster_dir: Path, nodes: list[Node]) -> None:
    """SIGINT to each `ray start --block` (Ray's own teardown of that node), then SIGKILL to whatever
    of ours is left. Never `ray stop`."""
    known: set[int] = set()
    for node in nodes:
        node.processes()
        known |= node.known
    for node in reversed(nodes):  # node B first, then the head
        if node.proc.poll() is None:
            try:
                os.killpg(node.proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
    for node in nodes:
        try:
            node.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    leftovers = _ours(cluster_dir, known)
    _kill(leftovers)
    psutil.wait_procs(leftovers, timeout=10)
    for node in nodes:
        if node.proc.poll() is None:
            node.proc.kill()
        node.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Head (``node_head``) + node B (``node_b``), 1 CPU each, on loopback, with a fresh token."""
    temp_dir = Path(tempfile.mkdtemp(prefix="streamrec-multinode-", dir="/tmp"))  # short: Ray's socket paths
    token_file = temp_dir / "ray_auth_token"
    token = secrets.token_hex(32)
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "STREAMREC_"))}
    env.update({
        # Token authentication, as the embedded head of `streamrec up` (streamrec.local_stack.ray_client_env).
        "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file), "RAY_AUTH_TOKEN": "",
        "RAY_USAGE_STATS_ENABLED": "0", "RAY_worker_niceness": "0",
        # The GCS declares a node dead after 5 missed 1 s health checks (default 3 s x 5).
        "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5",
        # Ray's fixed-port Prometheus endpoints, which a running `streamrec up` may hold.
        "AUTOSCALER_METRIC_PORT": str(_port()), "DASHBOARD_METRIC_PORT": str(_port()),
        "RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
    })
    gcs_port, dashboard_port = _port(), _port()
    low, _ = free_port_range(200)
    common = ["--block", "--num-cpus=1", f"--temp-dir={temp_dir}", "--object-store-memory=150000000",
              "--disable-usage-stats"]
    nodes: list[Node] = []
    try:
        nodes.append(_start_node("head", [
            RAY, "start", "--head", f"--node-ip-address={HOST}", *common, f"--port={gcs_port}",
            f"--dashboard-host={HOST}", f"--dashboard-port={dashboard_port}",
            f"--ray-client-server-port={_port()}", f"--resources={json.dumps({HEAD: 1})}",
            *_node_ports((low, low + 99)),
        ], {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}, temp_dir / "head.log"))
        c = Cluster(temp_dir, f"{HOST}:{gcs_port}", f"http://{HOST}:{dashboard_port}", token, nodes[0], nodes[0])
        _wait(lambda: _alive(nodes) and c.jobs().get_version(), 120, "head dashboard")
        nodes.append(_start_node("b", [
            sys.executable, str(Path(__file__).with_name("ray_start_loopback.py")), "start",
            f"--node-ip-address={HOST}", *common, f"--address={HOST}:{gcs_port}",
            f"--resources={json.dumps({NODE_B: 1})}",
            *_node_ports((low + 100, low + 199)),
        ], env, temp_dir / "b.log"))
        c.b = nodes[1]
        _wait(lambda: _alive(nodes) and len(c.node_ids()) == 2, 120, "two alive nodes")
        for node in nodes:
            node.processes()
        yield c
    finally:
        _stop_cluster(temp_dir, nodes)
        for node in nodes:
            if node.log.exists():  # keep the nodes' logs for a failed run's report
                tail = node.log.read_text(errors="replace").splitlines()[-15:]
                print(f"--- {node.name}: ray start log (tail) ---\n" + "\n".join(tail))
        shutil.rmtree(temp_dir, ignore_errors=True)


def _run_job(cluster: Cluster, timeout_s: float, on_poll: Callable[[], None] | None = None,
             **submit: Any) -> tuple[str, str]:
    """Submit a job and wait for it; returns (final status, logs)."""
    client = cluster.jobs()
    job_id = client.submit_job(**submit)
    deadline = time.monotonic() + timeout_s
    status = client.get_job_status(job_id)
    while not status.is_terminal() and time.monotonic() < deadline:
        if on_poll is not None:
            on_poll()
        time.sleep(1)
        status = client.get_job_status(job_id)
    if not status.is_terminal():
        client.stop_job(job_id)
    return str(status), client.get_job_logs(job_id)


def test_two_nodes_listen_on_loopback_only(cluster: Cluster):
    nodes = cluster.node_ids()
    assert set(nodes) == {HEAD, NODE_B}
    listening: dict[str, set[str]] = {}
    for node in (cluster.head, cluster.b):
        for proc in node.processes():
            try:
                for conn in proc.net_connections(kind="inet"):
                    if conn.status == psutil.CONN_LISTEN:
                        listening.setdefault(node.name, set()).add(conn.laddr.ip)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    # GCS, raylets, object managers, agents, dashboard, workers: nothing reachable from another machine.
    loopback = {HOST, f"::ffff:{HOST}"}  # IPv4, or IPv4-mapped on a dual-stack socket
    assert set(listening) == {"head", "b"} and all(ips <= loopback for ips in listening.values()), listening


def test_serve_replicas_on_both_nodes(cluster: Cluster):
    nodes = cluster.node_ids()
    status, logs = _run_job(
        cluster, 180,
        entrypoint=f"{sys.executable} serve_probe.py",
        runtime_env={"working_dir": str(Path(__file__).parent), "excludes": ["__pycache__"]},
    )
    assert status == "SUCCEEDED", logs[-4000:]
    probe = json.loads(re.search(r"^PROBE (.*)$", logs, re.M).group(1))
    # Two replicas, one on each node (max_replicas_per_node=1), and requests served by both.
    assert sorted(r["node_id"] for r in probe["replicas"]) == sorted(nodes.values()), (probe, nodes)
    assert sorted(probe["answered_from"]) == sorted(nodes.values()), (probe, nodes)


def _train_config(tmp_path: Path, datasets_dir: Path) -> Path:
    """bprmf on a Gowalla slice, elastic 1..2 workers of 1 CPU, a checkpoint every epoch."""
    config = {
        "name": "bprmf_multinode",
        "model": "bprmf",
        "model_params": {"lr": 0.01, "batch_size": 512, "reg": 0.03, "embedding_dim": 16},
        "dataset": {"name": "gowalla", "max_users": 600, "seed": 0, "datasets_dir": str(datasets_dir),
                    "options": {"valid_fraction": 0.1, "valid_seed": 2020}},
        "train": {"epochs": TRAIN_EPOCHS, "eval_every": TRAIN_EPOCHS, "patience": 5, "checkpoint_every": 1,
                  "ks": [20], "monitor": "recall@20", "progress": False},
        "scaling": {"num_workers": [1, 2], "resources_per_worker": {"CPU": 1}, "placement_strategy": "SPREAD",
                    "max_failures": 3},
    }
    path = tmp_path / "bprmf_multinode.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_training_resumes_on_the_head_after_losing_node_b(cluster: Cluster, tmp_path: Path):
    datasets_dir = default_datasets_dir()
    if not (datasets_dir / "gowalla_lightgcn").is_dir():
        pytest.skip(f"shared datasets not found at {datasets_dir}")
    nodes = cluster.node_ids()
    storage = tmp_path / "ray_results"
    config = _train_config(tmp_path, datasets_dir)
    seen: dict[str, Any] = {"killed_at": None, "spread": None, "workers_before": set()}

    def registered_epochs() -> list[int]:
        """Epochs of the checkpoints Ray Train has registered: those a restart resumes from. (A
        checkpoint_* folder appears as soon as a worker starts writing it, before that.)"""
        epochs = []
        for snapshot in storage.glob("*/checkpoint_manager_snapshot.json"):
            try:
                results = json.loads(snapshot.read_text())["checkpoint_results"]
            except (OSError, ValueError, KeyError):
                continue  # being written
            epochs += [r["metrics"]["epoch"] for r in results]
        return sorted(epochs)

    def kill_node_b_after_first_checkpoint() -> None:
        if seen["killed_at"] is not None:
            return
        workers = cluster.actors("RayTrainWorker")
        seen["workers_before"] |= {w["actor_id"] for w in workers}
        alive = [w for w in workers if w["state"] == "ALIVE"]
        if len(alive) == 2 and seen["spread"] is None:
            seen["spread"] = sorted(w["node_id"] for w in alive)
        if seen["spread"] is not None and registered_epochs():
            procs = cluster.b.processes()
            _kill(procs)  # raylet, agents and workers at once: the machine is gone
            psutil.wait_procs(procs, timeout=10)
            seen["killed_at"] = time.time()
            seen["registered_at_kill"] = registered_epochs()

    started = time.monotonic()
    status, logs = _run_job(
        cluster, 360, on_poll=kill_node_b_after_first_checkpoint,
        entrypoint=f"{sys.executable} -m ray_jobs.train bprmf --config {config} --storage-path {storage}",
        runtime_env={"working_dir": str(REPO_ROOT), "excludes": WORKING_DIR_EXCLUDES,
                     # a start that waits for the lost node's resources gives up soon and re-sizes
                     "env_vars": {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "20"}},
    )
    took = time.monotonic() - started
    (tmp_path / "job.log").write_text(logs)
    print(f"training job: {status} in {took:.0f}s; {seen}; logs: {tmp_path / 'job.log'}")
    # One DDP worker on each node before the fault.
    assert seen["spread"] == sorted(nodes.values()), (seen, nodes)
    assert seen["killed_at"] is not None, "the job ended before node B could be killed"
    assert NODE_B not in cluster.node_ids()  # node B is gone for good
    assert status == "SUCCEEDED", logs[-6000:]
    # The launcher's JSON summary: resumed from a checkpoint (never from scratch), to the last epoch.
    summary, _ = json.JSONDecoder().raw_decode(logs[logs.rindex('{\n  "metrics"'):])
    m = summary["metrics"]
    assert m["resumed_from_epoch"] > max(seen["registered_at_kill"]), (m, seen)
    assert m["epoch"] == TRAIN_EPOCHS - 1 and m["done"] is True, m
    # DDP over two workers, then (Ray Train's elastic restart) over the one that fits on the head.
    assert "world_size=2]" in logs and "world_size=1]" in logs
    # The rest ran on the head alone: every worker started after the kill sits there.
    later = [w for w in cluster.actors("RayTrainWorker") if w["actor_id"] not in seen["workers_before"]]
    assert later and {w["node_id"] for w in later} == {nodes[HEAD]}, later
