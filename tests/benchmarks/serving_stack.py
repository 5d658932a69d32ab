"""The embedded serving stack of the serving benchmarks (`bench_serving.py`, `load_test.py`).

Private everything, torn down afterwards: an embedded broker (``support.start_broker``), a private
Ray (``address="local"``) with Serve's proxy on a free port, the collector at ``/v1/events``, the
recommender app at ``/`` with the real experiments of ``deploy/local/experiments.yaml``, and a state
dir holding a LightGCN item model trained here on the Taobao slice and registered under
``settings.serving.item_model``, so ``/v1/recommendations`` of a known user retrieves through
``ExactTopK`` over real embeddings. Part of the Taobao slice is replayed through the collector first
so that popularity and the bundle candidates come from real events.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for the `support` helpers
# The repository too: without it, tests/serving and tests/features would shadow the real packages as
# namespace packages when this runs as a script (the editable install's finder comes after them).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from support import BrokerHandle, deploy_collector, free_port, private_ray_config, settings_overrides, start_broker  # noqa: E402
from streamrec.runtime.config import REPO_ROOT, Settings  # noqa: E402

EXPERIMENTS_FILE = "deploy/local/experiments.yaml"
NOOP_PREFIX = "/noop"
NOOP_PATH = "/noop/"  # with the slash: "/noop" is answered by a 307 redirect to it


@dataclass
class ServingStack:
    base_url: str
    settings: Settings
    broker: BrokerHandle
    known_users: list[str]  # Taobao users with a LightGCN user embedding
    item_model: str  # "<name>@<version>"
    n_items: int
    embedding_dim: int

    def close(self) -> None:
        from ray import serve
        import ray

        serve.shutdown()
        ray.shutdown()
        self.broker.broker.stop()


def train_and_register_lightgcn(settings: Settings, epochs: int, seed: int = 0) -> tuple[str, int, int, list[str]]:
    """A LightGCN on the whole Taobao slice (plain PyTorch loop: a few seconds), registered where the
    recommender reads it, with the raw Taobao ids. Returns (version, n_items, dim, user ids)."""
    import torch

    from ray_jobs.data.taobao import load_taobao
    from ray_jobs.models import build_model
    from features.registry import ModelRegistry
    from ray_jobs.trainers.batches import pairwise_batches

    torch.manual_seed(seed)
    data = load_taobao(settings.data.datasets_dir)
    model = build_model("lightgcn", data, {"batch_size": 2048})
    optimizer = torch.optim.Adam(model.parameters(), lr=model.config.lr)
    model.train()
    for epoch in range(epochs):
        model.on_epoch_start(epoch)
        for batch in pairwise_batches(data.train, data.n_items, model.config.batch_size, epoch, seed):
            loss = model(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    embeddings = model.export_embeddings()
    users, items = [str(u) for u in data.user_ids], [str(i) for i in data.item_ids]
    registry = ModelRegistry(settings.serving.registry_root or settings.data.state_dir / "registry")
    version = registry.register(
        settings.serving.item_model, embeddings=embeddings, metrics={}, config={"epochs": epochs, "source": "bench"},
        data_snapshot_id="taobao_userbehavior_subset", extra={"ids": {"user": users, "item": items}},
    )
    return version, embeddings["item"].shape[0], embeddings["item"].shape[1], users


def deploy_noop(port: int) -> str:
    """A trivial FastAPI deployment behind the same proxy: the floor of a Serve request."""
    from fastapi import FastAPI
    from ray import serve

    app = FastAPI()

    # Defined in a function so Ray pickles it by value (this module is not importable in workers).
    @serve.deployment(name="Noop", ray_actor_options={"num_cpus": 0})
    @serve.ingress(app)
    class Noop:
        @app.get("/")
        async def ok(self) -> dict[str, bool]:
            return {"ok": True}

    serve.run(Noop.bind(), name="noop", route_prefix=NOOP_PREFIX)
    return f"http://127.0.0.1:{port}{NOOP_PATH}"


def _wait(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except httpx.HTTPError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.5)
    raise RuntimeError(f"timed out after {timeout_s:.0f}s waiting for {what}; last: {last!r}")


def replay_history(stack_url: str, settings: Settings, n_events: int) -> int:
    """Post the first ``n_events`` Taobao events (event-time order) through the collector."""
    from streamrec.replay import read_taobao_rows, replay_events, taobao_events

    events = taobao_events(read_taobao_rows(settings.data.taobao_csv))[:n_events]
    token = settings.collector.auth_token.get_secret_value()
    summary = asyncio.run(replay_events(events, stack_url, token, batch_size=200, concurrency=2, show_progress=False))
    return summary.accepted


def train_and_register_sasrec(settings: Settings, epochs: int, seed: int = 0) -> str:
    """The shipped SASRec (ray_jobs/configs/sasrec_lake.yaml's parameters: the paper defaults) on the
    Taobao slice, trained in-process and registered as the ranker, with its weights and raw ids, so
    that bundle requests pay for its next-item forward pass as they do in the demo."""
    from ray_jobs.data.taobao import load_taobao
    from support import fit_in_process, register_trained

    data = load_taobao(settings.data.datasets_dir)
    model = fit_in_process("sasrec", data, epochs, {}, seed)
    return register_trained(settings.serving.registry_root or settings.data.state_dir / "registry",
                            settings.serving.ranker_model, "sasrec", model, data, {}, settings.data.state_dir,
                            data_snapshot_id="taobao_userbehavior_subset")


def start_serving_stack(state_dir: Path, history_events: int, train_epochs: int, with_noop: bool = False) -> ServingStack:
    """Start and fill the stack (see the module docstring); ``close()`` it afterwards."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["RAY_worker_niceness"] = "0"  # Ray's default nice 15 would make Serve lose to everything else
    os.environ.update(private_ray_config().serve_env())  # the embedded stack's ingress (HAProxy by default)
    import ray
    from ray import serve

    from serving.app.api import build_app

    broker = start_broker(state_dir)
    settings = broker.settings
    print(f"  training LightGCN on the Taobao slice ({train_epochs} epoch(s)) ...", flush=True)
    version, n_items, dim, users = train_and_register_lightgcn(settings, train_epochs)
    print(f"  training SASRec on the Taobao slice ({train_epochs} epoch(s)) ...", flush=True)
    train_and_register_sasrec(settings, train_epochs)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base_url = f"http://127.0.0.1:{port}"
    deploy_collector(settings, port, "collector")
    args = {"settings": settings_overrides(settings), "experiments_file": str(REPO_ROOT / EXPERIMENTS_FILE)}
    serve.run(build_app(args), name="recommender", route_prefix="/")
    if with_noop:
        deploy_noop(port)
    print(f"  replaying {history_events} Taobao events through the collector ...", flush=True)
    accepted = replay_history(base_url, settings, history_events)
    with httpx.Client(base_url=base_url, timeout=30) as client:
        admin = {"Authorization": f"Bearer {settings.serving.admin_token.get_secret_value()}"}
        _wait(lambda: client.get("/v1/learner", headers=admin).json()["counters"]["records"] >= accepted, 120,
              "the learner to fold the history")
    return ServingStack(base_url, settings, broker, users, f"{settings.serving.item_model}@{version}", n_items, dim)


def user_mix(known: list[str], n: int, unknown_share: float, seed: int) -> list[str]:
    """``n`` user ids: real Taobao users with an embedding, and a share of ids no model knows."""
    rng = random.Random(seed)
    return [f"new-{rng.randrange(10**9)}" if rng.random() < unknown_share else rng.choice(known) for _ in range(n)]
