"""Helpers and the `recommender` fixture of the recommender app tests: the app deployed next to the
collector on the session's real broker and Serve (see tests/conftest.py), with a private state dir
(cold start: no registry, no Feast store there).

Test modules import the fixture from here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from streamrec.runtime.config import Settings

from support import ADMIN, FRONTEND, make_settings, settings_overrides


APP_NAME = "recommender"
PREFIX = "/"  # as in deploy/local/serve.yaml

EXPERIMENTS: list[dict[str, Any]] = [
    {
        "name": "bundles_ab",
        "salt": "test-salt",
        "control": "pop",
        "variants": [
            {"name": "pop", "policy": "popularity", "params": {"prior_mean": 0.1}, "share": 0.34},
            {"name": "ucb", "policy": "linucb", "params": {"alpha": 1.0}, "share": 0.33},
            {"name": "ts", "policy": "linear_thompson", "params": {"v": 0.25}, "share": 0.33},
        ],
    },
    {
        "name": "solo_ucb",
        "salt": "solo",
        "variants": [
            {"name": "ucb", "policy": "linucb", "share": 0.5},
            {"name": "greedy", "policy": "greedy", "share": 0.5},
        ],
    },
]
CATALOGUE = [
    {"id": f"bundle-{i}", "items": [f"item-{i}", f"item-{i + 10}", f"item-{i + 20}"]} for i in range(6)
]


@dataclass
class RecommenderHandle:
    url: str
    settings: Settings
    args: dict[str, Any]

    def client(self, headers: dict[str, str] = FRONTEND) -> httpx.Client:
        """A client with the frontend's token (``headers=ADMIN`` for the admin endpoints)."""
        return httpx.Client(base_url=self.url, timeout=30.0, headers=headers)


def recommender_args(settings: Settings) -> dict[str, Any]:
    return {"settings": settings_overrides(settings), "experiments": EXPERIMENTS, "catalogue": CATALOGUE}


# Each ingress replica keeps its own copies (popularity, policies, the hot-reloaded models), and the
# HTTP ingress spreads requests over the replicas: a condition on a replica's copy has to hold for
# this many requests in a row before every replica can be taken to have it.
EVERY_REPLICA = 8


def wait_for(predicate, timeout_s: float = 30.0, interval_s: float = 0.2, what: str = "condition",
             streak: int = 1) -> Any:
    """The first truthy value of ``predicate`` once it has been truthy ``streak`` calls in a row."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    held = 0
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (httpx.HTTPError, KeyError) as exc:
            last = exc
            held = 0
        else:
            held = held + 1 if last else 0
            if held >= streak:
                return last
            if last:
                continue
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last: {last!r}")


def learner_stats(client: httpx.Client) -> dict[str, Any] | None:
    r = client.get("/v1/learner", headers=ADMIN)
    return r.json() if r.status_code == 200 else None




@pytest.fixture(scope="session")
def recommender(kafka_broker: Any, ray_serve: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RecommenderHandle]:
    from ray import serve

    from serving.app.api import build_app

    state_dir: Path = tmp_path_factory.mktemp("recommender-state")
    port = int(kafka_broker.settings.kafka.bootstrap_servers.rsplit(":", 1)[1])
    settings = make_settings(state_dir, port, serving={"snapshot_interval_s": 1.0, "refresh_s": 5.0})
    args = recommender_args(settings)
    serve.run(build_app(args), name=APP_NAME, route_prefix=PREFIX)
    handle = RecommenderHandle(f"http://127.0.0.1:{ray_serve}{PREFIX.rstrip('/')}", settings, args)
    with handle.client() as c:  # the learner's consumer is assigned and reading
        wait_for(lambda: (learner_stats(c) or {}).get("offsets"), what="learner consuming")
    yield handle
    serve.delete(APP_NAME)
