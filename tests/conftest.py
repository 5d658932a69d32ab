"""Session fixtures: a real embedded Kafka broker (tansu), a local Ray with Serve, the collector."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from support import BrokerHandle, CollectorHandle, deploy_collector, free_port, private_ray_config, start_broker


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerHandle]:
    handle = start_broker(tmp_path_factory.mktemp("broker"))
    yield handle
    handle.broker.stop()


@pytest.fixture(scope="session")
def ray_serve() -> Iterator[int]:
    """A private local Ray cluster with Serve's HTTP proxy on a free port; yields the port."""
    import ray
    from ray import serve

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_worker_niceness", "0")  # as the embedded stack (streamrec/local_stack.py)
    os.environ.update(private_ray_config().serve_env())  # the ingress the stack runs (HAProxy by default)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def collector(kafka_broker: BrokerHandle, ray_serve: int) -> CollectorHandle:
    return deploy_collector(kafka_broker.settings, ray_serve, "collector")
