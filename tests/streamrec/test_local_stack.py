"""`streamrec up / status / replay / down` as a user runs them, on private ports; what the stack
exposes (loopback only, Ray token authentication) and that two stacks on one machine stay apart."""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from streamrec import local_stack
from streamrec.runtime.config import Settings
from streamrec.local_stack import port_open
from streamrec.runtime.kafka import read_topic, topic_end_offsets
from support import TEST_TOKEN, make_event, private_stack_env, run_streamrec, taobao_csv

pytestmark = [pytest.mark.kafka, pytest.mark.ray]


def _settings(env: dict[str, str]) -> Settings:
    """The settings the CLI reads from ``env`` (its STREAMREC_* variables), in this process."""
    nested: dict[str, Any] = {}
    for key, value in env.items():
        if key.startswith("STREAMREC_"):
            section, _, name = key[len("STREAMREC_"):].lower().partition("__")
            nested.setdefault(section, {})[name] = value
    return Settings(**nested)


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


@dataclass
class Listener:
    pid: int
    name: str
    ip: str
    port: int

    @property
    def on_loopback(self) -> bool:
        address = ipaddress.ip_address(self.ip)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address.is_loopback


def _listeners(procs: list[psutil.Process]) -> list[Listener]:
    found = []
    for proc in procs:
        try:
            name = proc.name()
            found += [Listener(proc.pid, name, c.laddr.ip, c.laddr.port)
                      for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:
            continue
    return found


def _interface_ip() -> str | None:
    """This machine's own non-loopback IPv4 address (to check what the network would reach)."""
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family.name == "AF_INET" and not ipaddress.ip_address(address.address).is_loopback:
                return address.address
    return None


def _grpc_code(target: str, method: str, token: str | None) -> Any:
    """The status of one unary gRPC call with an empty body (OK or the error's code)."""
    import grpc

    metadata = (("authorization", f"Bearer {token}"),) if token is not None else None
    with grpc.insecure_channel(target) as channel:
        try:
            channel.unary_unary(method)(b"", timeout=10, metadata=metadata)
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()


def _ray_client_ping(target: str, token: str | None) -> Any:
    """A Ray client's first call (ClusterInfo PING) to the client server at ``target``."""
    import grpc
    from ray.core.generated import ray_client_pb2, ray_client_pb2_grpc

    metadata = (("authorization", f"Bearer {token}"),) if token is not None else None
    with grpc.insecure_channel(target) as channel:
        try:
            ray_client_pb2_grpc.RayletDriverStub(channel).ClusterInfo(
                ray_client_pb2.ClusterInfoRequest(type=ray_client_pb2.ClusterInfoType.PING), timeout=10, metadata=metadata)
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()


def _gcs_call(target: str, token: str | None) -> Any:
    """A driver's kind of call to Ray's GCS (GetAllNodeInfo) at ``target``."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    metadata = (("authorization", f"Bearer {token}"),) if token is not None else None
    with grpc.insecure_channel(target) as channel:
        try:
            gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetAllNodeInfo(
                gcs_service_pb2.GetAllNodeInfoRequest(), timeout=10, metadata=metadata)
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()


@dataclass
class Stack:
    settings: Settings
    env: dict[str, str]
    ports: dict[str, int]


def _up(state_dir: Path) -> Stack:
    ports, env = private_stack_env(state_dir)
    env["STREAMREC_COLLECTOR__AUTH_TOKEN"] = TEST_TOKEN
    up = run_streamrec(env, "up")
    stack = Stack(_settings(env), env, ports)
    if up.returncode != 0:
        run_streamrec(env, "down")
        pytest.fail(up.stdout + up.stderr)
    return stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One private stack, up for this module's isolation tests."""
    running = _up(tmp_path_factory.mktemp("stack") / "state")
    try:
        yield running
    finally:
        run_streamrec(running.env, "down")


def test_up_status_replay_down_leaves_nothing_running(tmp_path: Path) -> None:
    taobao_csv()  # the replay step reads it
    ports, env = private_stack_env(tmp_path / "state")
    env["STREAMREC_COLLECTOR__AUTH_TOKEN"] = "stack-test-token"
    settings = _settings(env)
    procs: list[psutil.Process] = []
    names: set[str] = set()
    try:
        up = run_streamrec(env, "up")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "events(4), events.dlq(4)" in up.stdout
        status = run_streamrec(env, "status")
        assert status.returncode == 0 and "collector: RUNNING" in status.stdout, status.stdout
        assert (tmp_path / "state" / "run" / "tansu.pid").exists()

        replay = run_streamrec(env, "replay", "taobao", "--limit", "1000")
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert "accepted 1000, rejected 0" in replay.stdout
        # The collector's counters reach Prometheus through Ray's metrics endpoint.
        assert _wait_for_metric(ports["metrics"], "ray_streamrec_collector_events_accepted_total", 1000.0)

        again = run_streamrec(env, "up")  # idempotent: a second `up` reuses what runs
        assert again.returncode == 0, again.stderr
        procs = local_stack.stack_processes(settings)
        names = {local_stack._name(p) for p in procs}  # a pid for one that exited meanwhile
    finally:
        down = run_streamrec(env, "down")
    assert down.returncode == 0, down.stderr
    assert re.search(r"ray\s+stopped", down.stdout) and re.search(r"broker\s+stopped", down.stdout), down.stdout
    assert "still answering" not in down.stdout, down.stdout
    # Nothing of the stack is left (a reloaded HAProxy included), and nothing listens on its ports.
    assert names >= {"tansu", "gcs_server", "raylet", "haproxy"}, names
    left = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [(p.pid, p.name()) for p in left]
    assert not local_stack.stack_processes(settings)
    assert not any(port_open("127.0.0.1", p) for p in ports.values())
    ranges = settings.ray.port_ranges().values()
    listening = {c.laddr.port for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    assert not [p for p in listening if any(low <= p <= high for low, high in ranges)]
    assert not list((tmp_path / "state" / "run").glob("*.pid"))
    assert not local_stack.ray_auth_token_file(settings).exists()
    assert run_streamrec(env, "status").returncode == 1


def test_every_listener_of_the_stack_is_on_loopback(stack: Stack) -> None:
    settings, ray = stack.settings, stack.settings.ray
    # Each port setting is where its service listens (so two stacks with different settings never
    # share one). Serve's gRPC ingress is off (no gRPC servicers deployed): nothing on its port.
    expected = {name: port for name, port in {**ray.single_ports(), "collector.port": settings.collector.port,
                                              "broker.port": settings.broker.port}.items()
                if name != "serve_proxy_grpc_port"}
    required = {"tansu", "gcs_server", "raylet", "haproxy", "ray::DashboardAgent", "ray::HAProxyManager"}
    deadline = time.monotonic() + 30  # HAProxy may be between two processes of a reload
    while True:
        procs = local_stack.stack_processes(settings)
        listeners = _listeners(procs)
        names = {local_stack._name(p) for p in procs}  # a pid for one that exited meanwhile
        missing = {name: port for name, port in expected.items() if port not in {lst.port for lst in listeners}}
        if (not missing and required <= names) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not missing, f"nothing of the stack listens on {missing}"
    assert required <= names, names
    worker_low, worker_high = ray.min_worker_port, ray.max_worker_port
    replica_low, replica_high = ray.serve_replica_min_http_port, ray.serve_replica_max_http_port
    # Zero listeners beyond loopback, the replicas' inter-deployment gRPC servers included (Ray binds
    # them on [::]:0 with no setting; serving/replica_loopback.py binds them on the loopback node).
    exposed = [lst for lst in listeners if not lst.on_loopback]
    assert not exposed, f"listening beyond loopback: {exposed}"
    # A replica listens in the worker or replica ranges (settings), or on the ephemeral port of that
    # gRPC server (no fixed port to collide), which carries Ray's token interceptor.
    for lst in listeners:
        if lst.name.startswith("ray::ServeReplica") and lst.port not in ray.single_ports().values():
            if not (worker_low <= lst.port <= worker_high or replica_low <= lst.port <= replica_high):
                code = _grpc_code(f"127.0.0.1:{lst.port}", "/ray.serve.ASGIService/HandleRequest", None)
                assert code.name == "UNAUTHENTICATED", (lst, code)
    interface = _interface_ip()
    if interface is not None:  # and from the network, the stack's ports are closed
        for port in (settings.collector.port, ray.client_server_port, ray.head_port, ray.dashboard_port,
                     ray.haproxy_stats_port, ray.haproxy_metrics_port, ray.dashboard_agent_http_port):
            assert not port_open(interface, port), port

    # The secrets beside the listeners: the token and HAProxy's admin socket are this user's only.
    assert stat.S_IMODE(local_stack.ray_auth_token_file(settings).stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.data.run_dir.stat().st_mode) == 0o700
    sockets = list(local_stack.haproxy_dir(settings).glob("*/admin.sock"))
    assert sockets and all(stat.S_IMODE(s.stat().st_mode) == 0o600 for s in sockets)
    assert stat.S_IMODE(local_stack.haproxy_dir(settings).stat().st_mode) == 0o700


def test_ray_refuses_clients_without_the_stack_token(stack: Stack) -> None:
    settings, ray = stack.settings, stack.settings.ray
    token = local_stack.ray_auth_token_file(settings).read_text().strip()
    client, gcs = f"127.0.0.1:{ray.client_server_port}", f"127.0.0.1:{ray.head_port}"
    for wrong in (None, "0" * 64):
        assert _ray_client_ping(client, wrong).name == "UNAUTHENTICATED"
        assert _gcs_call(gcs, wrong).name == "UNAUTHENTICATED"
    assert _ray_client_ping(client, token).name == "OK"
    assert _gcs_call(gcs, token).name == "OK"
    # The dashboard (job submission, Serve and state APIs) asks for it too.
    url = f"{local_stack.dashboard_url(settings)}/api/serve/applications/"
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer " + "0" * 64}, timeout=10).status_code == 403
    assert httpx.get(url, headers=local_stack.ray_auth_headers(settings), timeout=10).status_code == 200


def _post_until(url: str, deadline: float) -> tuple[list[str], list[int]]:
    """POST one event at a time to the collector until ``deadline``: the ids of the accepted (2xx)
    ones, and every other status seen."""
    accepted, refused = [], []
    with httpx.Client(headers={"authorization": f"Bearer {TEST_TOKEN}"}, timeout=15.0) as client:
        while time.monotonic() < deadline:
            event = make_event()
            try:
                reply = client.post(f"{url}/v1/events", json=event)
            except httpx.HTTPError:
                refused.append(0)
                continue
            if 200 <= reply.status_code < 300:
                accepted.append(event["event_id"])
            else:
                refused.append(reply.status_code)
    return accepted, refused


def _event_ids(settings: Settings, start: dict[int, int]) -> set[str]:
    import json

    return {json.loads(r.value)["event_id"] for r in read_topic(settings.kafka, settings.kafka.topics.events, start=start)}


@pytest.mark.slow  # two stacks up and down: 100-170 s on 2 cores
def test_a_killed_collector_replica_never_sends_events_to_another_stack(tmp_path: Path) -> None:
    """Two stacks on one machine; one's collector replica is killed while events arrive. Every event
    that stack accepted is in its own Kafka, none in the other's (before, its HAProxy fell back to
    Serve's proxy on the shared port 8500: the other stack's)."""
    first = _up(tmp_path / "first")
    try:
        second = _up(tmp_path / "second")
        try:
            starts = {name: topic_end_offsets(s.settings.kafka, s.settings.kafka.topics.events)
                      for name, s in (("first", first), ("second", second))}
            victims = local_stack.serve_replica_pids(second.settings, "collector", "Collector")
            assert victims
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            accepted, refused = _post_until(second.settings.collector.base_url, time.monotonic() + 15)
            own, other = _event_ids(second.settings, starts["second"]), _event_ids(first.settings, starts["first"])
            assert accepted, f"nothing accepted while the replica was replaced (statuses: {sorted(set(refused))})"
            assert not set(accepted) & other, f"{len(set(accepted) & other)} accepted events went to the other stack"
            assert set(accepted) <= own, f"{len(set(accepted) - own)} accepted events are in no Kafka of this stack"
            assert set(local_stack.serve_replica_pids(second.settings, "collector", "Collector")) - set(victims)
        finally:
            run_streamrec(second.env, "down")
    finally:
        run_streamrec(first.env, "down")
