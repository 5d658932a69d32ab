"""Serve replicas spread over the nodes of a cluster: a Ray job of ``tests/cluster/test_multinode.py``.

Deploys a two-replica deployment with at most one replica per node, sends it concurrent requests,
prints one JSON line (``PROBE {...}``: the node of each ALIVE replica actor and the nodes that
answered), then deletes the app and stops Serve, so that nothing of it outlives the job.

    ray job submit --address http://127.0.0.1:<dashboard> -- python tests/cluster/serve_probe.py
"""

from __future__ import annotations

import json
import time

import ray
from ray import serve
from ray.util.state import list_actors

APP = "multinode-probe"


@serve.deployment(num_replicas=2, max_replicas_per_node=1, ray_actor_options={"num_cpus": 0})
class WhereAmI:
    """Answers with the node it runs on."""

    async def __call__(self) -> dict[str, str]:
        import asyncio

        await asyncio.sleep(0.2)  # keep requests in flight, so the router uses both replicas
        return {"node_id": ray.get_runtime_context().get_node_id()}


def main() -> None:
    ray.init()
    serve.start(proxy_location="Disabled")  # no HTTP proxies: two nodes on one host would share port 8000
    try:
        handle = serve.run(WhereAmI.bind(), name=APP, route_prefix=None)
        answered: set[str] = set()
        deadline = time.monotonic() + 60
        while len(answered) < 2 and time.monotonic() < deadline:
            answered |= {r.result(timeout_s=30)["node_id"] for r in [handle.remote() for _ in range(10)]}
        replicas = list_actors(filters=[("class_name", "=", f"ServeReplica:{APP}:WhereAmI"), ("state", "=", "ALIVE")])
        print("PROBE " + json.dumps({
            "replicas": [{"actor_id": a.actor_id, "node_id": a.node_id} for a in replicas],
            "answered_from": sorted(answered),
        }), flush=True)
    finally:
        serve.delete(APP)
        serve.shutdown()


if __name__ == "__main__":
    main()
