"""Helpers shared by the test suites (importable as `support`: pyproject puts tests/ on the path).

Nothing here mocks Kafka: integration tests talk to a real broker over TCP and to the collector
over real HTTP through Serve's proxy.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from streamrec.runtime.config import RayConfig, Settings
from streamrec.local_stack import EmbeddedBroker
from streamrec.runtime.kafka import ensure_topics

TEST_TOKEN = "test-token-123"
# The one browser origin the test stacks allow (frontend.allowed_origins): CORS tests use it.
TEST_ORIGIN = "http://shop.test.example"
TEST_ADMIN_TOKEN = "test-admin-token-456"
TEST_READER_TOKEN = "test-reader-token-789"
TEST_FEEDBACK_KEY = "test-feedback-signing-key-0123456789abcdef"
# Tighter than production so limit tests stay cheap.
TEST_LIMITS = {"max_body_bytes": 262_144, "max_batch_events": 400, "max_list_items": 20}


# Ray's default port ranges (Serve replicas' gRPC ports and the like) inside the kernel's ephemeral
# range: a single port handed out there would make Settings refuse a stack whose other ranges are
# the defaults ("ray.serve_replica_grpc_ports contains ray.head_port").
_RAY_DEFAULT_RANGES = ((30000, 31000), (40000, 41000))


def free_port() -> int:
    """A free loopback port outside Ray's default port ranges."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if not any(low <= port <= high for low, high in _RAY_DEFAULT_RANGES):
            return port


def taobao_csv(settings: Settings | None = None) -> Path:
    """The Taobao slice's CSV; the test is skipped where the datasets are not beside the repo."""
    import pytest

    path = (settings or Settings()).data.taobao_csv
    if not path.exists():
        pytest.skip(f"Taobao slice not found at {path} (the datasets live in ../shared/datasets)")
    return path


def make_settings(state_dir: Path, broker_port: int, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "kafka": {"bootstrap_servers": f"127.0.0.1:{broker_port}", "produce_timeout_s": 3.0, "metadata_timeout_s": 2.0},
        "broker": {"port": broker_port},
        "collector": {"auth_token": TEST_TOKEN, "limits": TEST_LIMITS},
        "frontend": {"allowed_origins": [TEST_ORIGIN]},
        "data": {"state_dir": str(state_dir)},
        # One signing key for every app of a test stack (the collector's and the recommender's
        # state dirs differ, and each would otherwise make its own).
        "serving": {"admin_token": TEST_ADMIN_TOKEN, "reader_token": TEST_READER_TOKEN,
                    "feedback_signing_key": TEST_FEEDBACK_KEY},
    }
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value}
    return Settings(**base)


def settings_overrides(settings: Settings) -> dict[str, Any]:
    """The settings as a plain dict, for the Serve app's `args.settings` (secrets in clear)."""
    dumped = settings.model_dump(mode="json")
    dumped["collector"]["auth_token"] = settings.collector.auth_token.get_secret_value()
    for name in ("admin_token", "reader_token", "feedback_signing_key"):
        secret = getattr(settings.serving, name)
        dumped["serving"][name] = secret.get_secret_value() if secret is not None else None
    return dumped


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


FRONTEND = bearer(TEST_TOKEN)
ADMIN = bearer(TEST_ADMIN_TOKEN)
READER = bearer(TEST_READER_TOKEN)


@dataclass
class BrokerHandle:
    settings: Settings
    broker: EmbeddedBroker


def start_broker(state_dir: Path) -> BrokerHandle:
    settings = make_settings(state_dir, free_port())
    broker = EmbeddedBroker(settings)
    broker.start()
    ensure_topics(settings.kafka)
    return BrokerHandle(settings, broker)


@dataclass
class CollectorHandle:
    url: str
    settings: Settings
    app_name: str

    def client(self, token: str | None = TEST_TOKEN) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0)


def deploy_collector(settings: Settings, http_port: int, name: str) -> CollectorHandle:
    from ray import serve

    from serving.collector.app import build_app

    # As in deploy/local/serve.yaml: mounted at /v1/events (other names: below /<name>).
    root = "" if name == "collector" else f"/{name}"
    serve.run(build_app({"settings": settings_overrides(settings)}), name=name, route_prefix=f"{root}/v1/events")
    url = f"http://127.0.0.1:{http_port}{root}"
    return CollectorHandle(url, settings, name)


def make_event(event_type: str = "view", user_id: str | None = None, **fields: Any) -> dict[str, Any]:
    """A valid contract event with unique ids (override any field)."""
    event: dict[str, Any] = {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "type": event_type,
        "user_id": user_id or f"u-{uuid.uuid4().hex[:12]}",
        "session_id": "s-1",
        "ts": datetime(2017, 11, 25, 10, 0, tzinfo=timezone.utc).isoformat().replace("+00:00", "Z"),
    }
    if event_type in ("view", "add_to_cart", "remove_from_cart", "favorite"):
        event["item_id"] = "item-1"
    event.update(fields)
    return event


def register_trained(root: Path, name: str, model_name: str, model: Any, data: Any, params: dict[str, Any], tmp: Path,
                     data_snapshot_id: str = "sha256:test") -> str:
    """Register a model trained in-process like ``ray_jobs.train.register_outcome``: job config,
    resolved model config, state dict, embeddings, the raw ids of their rows and, for a next-item
    model, its exported user encoder (serving loads it)."""
    import numpy as np
    import torch

    from features.registry import ModelRegistry
    from ray_jobs.models import is_next_item_model, user_encoder_artefacts
    from ray_jobs.trainers import JobConfig

    artefacts, entries = user_encoder_artefacts(model) if is_next_item_model(model_name) else ({}, {})
    with torch.no_grad():
        embeddings = {k: np.asarray(v) for k, v in model.export_embeddings().items()}
    weights = tmp / f"{name}-{model_name}-weights.pt"
    torch.save(model.state_dict(), weights)
    job = JobConfig(name=f"{model_name}_taobao", model=model_name, model_params=params, dataset={"name": "taobao"})
    ids = {kind: [str(v) for v in raw.tolist()]
           for kind, raw in (("user", data.user_ids), ("item", data.item_ids)) if kind in embeddings}
    return ModelRegistry(root).register(
        name, embeddings=embeddings, metrics={}, config=job.model_dump(mode="json"),
        data_snapshot_id=data_snapshot_id, weights_file=weights,
        extra={"model": model_name, "dataset": "taobao", "ids": ids,
               "model_config": model.config.model_dump(mode="json"), **entries},
        artefacts=artefacts,
    )


def fit_in_process(name: str, data: Any, epochs: int, overrides: dict[str, Any], seed: int = 0) -> Any:
    """Train model ``name`` in-process (no Ray) with the batches and optimiser the Ray worker loop
    uses; returns it in eval mode. Imports torch lazily: most tests never train."""
    import torch

    from ray_jobs.models import build_model
    from ray_jobs.trainers.batches import pairwise_batches, sequence_batches

    torch.manual_seed(seed)
    model = build_model(name, data, overrides)
    cfg = model.config
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, getattr(cfg, "beta2", 0.999)),
                           weight_decay=cfg.weight_decay)
    for epoch in range(epochs):
        model.on_epoch_start(epoch)
        model.train()
        if model.batch_kind == "sequence":
            batches = sequence_batches(data.train, data.n_users, data.n_items, cfg.max_len, cfg.batch_size, epoch, seed,
                                       n_negatives=cfg.negatives_per_position(), windows=cfg.windows)
        else:
            batches = pairwise_batches(data.train, data.n_items, cfg.batch_size, epoch, seed)
        for batch in batches:
            loss = model(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model


def free_port_range(size: int, low: int = 20000, high: int = 30000) -> tuple[int, int]:
    """``size`` consecutive ports, all free now, below the kernel's ephemeral range (so that the
    ports ``free_port`` hands out never fall inside) and clear of Ray's default ranges (workers
    10002-19999, Serve replicas 30000-31000 and 40000-41000, which a default `streamrec up` uses)."""
    import random

    for _ in range(200):
        start = random.randrange(low, high - size)
        socks = []
        try:
            for port in range(start, start + size):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return start, start + size - 1
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {size} free consecutive ports in {low}-{high}")


def private_ray_settings() -> dict[str, Any]:
    """Ray settings (``Settings(ray=...)`` / STREAMREC_RAY__* keys) that give a stack or a test's
    Ray its own ports: every single port free now, and its own worker and Serve replica ranges."""
    names = list(RayConfig().single_ports())
    singles: set[int] = set()
    while len(singles) < len(names):
        singles.add(free_port())
    low, _ = free_port_range(280)  # workers 200, replicas' HTTP 40, replicas' gRPC 40
    return {
        **dict(zip(names, sorted(singles))),
        "min_worker_port": low, "max_worker_port": low + 199,
        "serve_replica_min_http_port": low + 200, "serve_replica_max_http_port": low + 239,
        "serve_replica_min_grpc_port": low + 240, "serve_replica_max_grpc_port": low + 279,
    }


def private_ray_config() -> RayConfig:
    """The Ray settings (STREAMREC_RAY__* apply) of a private Ray in this process, on free ports."""
    return RayConfig.model_validate({**Settings().ray.model_dump(), **private_ray_settings()})


def private_stack_env(state_dir: Path) -> tuple[dict[str, int], dict[str, str]]:
    """Free ports and the environment of a private embedded stack (broker, Ray head, Serve) under
    ``state_dir``, so a test's `streamrec up` / `demo` never meets another stack on this machine.

    ``ports`` has every single port of the stack: "broker", "collector" and each RayConfig port
    setting by name (the short names "head", "dashboard" and "metrics" too)."""
    import os

    ray = private_ray_settings()
    ports = {
        "broker": free_port(), "collector": free_port(),
        **{name: port for name, port in ray.items() if name in RayConfig().single_ports()},
    }
    ports.update(head=ray["head_port"], dashboard=ray["dashboard_port"], metrics=ray["metrics_export_port"])
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")},
        "STREAMREC_BROKER__PORT": str(ports["broker"]),
        "STREAMREC_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{ports['broker']}",
        **{f"STREAMREC_RAY__{name.upper()}": str(value) for name, value in ray.items()},
        "STREAMREC_COLLECTOR__PORT": str(ports["collector"]),
        "STREAMREC_DATA__STATE_DIR": str(state_dir),
    }
    return ports, env


@contextlib.contextmanager
def redis_server() -> Iterator[int]:
    """A throw-away `redis-server` (no persistence) on a free port; yields the port. Skips the test
    where the Debian package is missing (`make system-deps` installs it)."""
    import shutil
    import subprocess

    import pytest

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed (make system-deps)")
    pytest.importorskip("redis", reason="the `redis` Python client (feast[redis]) is not installed")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def run_streamrec(env: dict[str, str], *args: str, timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
    """The `streamrec` CLI as a user runs it (this venv's console script), output captured."""
    cli = Path(sys.executable).parent / "streamrec"
    return subprocess.run([str(cli), *args], env=env, capture_output=True, text=True, timeout=timeout_s)

