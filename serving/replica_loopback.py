"""Each Serve replica's inter-deployment gRPC server on loopback when its node is loopback.

Ray Serve 2.60 binds that server on every interface (``"[::]:0"``, hard-coded in
``ray/serve/_private/replica.py``, no setting). Callers reach a replica at its node's IP; the
embedded stack runs Ray in single-machine mode on 127.0.0.1, where nothing off the host can be a
legitimate caller, so there the server binds 127.0.0.1 instead. On a cluster (a routable node IP)
nothing changes.

Why by hand: Ray has no setting for this address. The deployments' modules call :func:`install`
when Ray imports them in the replica process, which is before the replica starts that server
(``initialize_callable`` precedes ``_on_initialized``). tests/streamrec/test_local_stack.py
checks that the stack has no listener off loopback.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["install"]


def _node_is_loopback() -> bool:
    try:
        import ray

        return ipaddress.ip_address(ray.util.get_node_ip_address()).is_loopback
    except Exception:  # noqa: BLE001 - not in a Ray worker, or no node yet: leave Ray's default
        return False


def install() -> None:
    """Wrap Ray's port binding of the replica module (idempotent)."""
    try:
        from ray.serve._private import replica
    except ImportError:  # another Ray layout: its default stays (and the listener test says so)
        log.warning("ray.serve._private.replica not found: replica gRPC servers bind Ray's default")
        return
    original = replica.add_port_to_grpc_server
    if getattr(original, "streamrec_loopback", False):
        return

    def bind(server: Any, address: str) -> Any:
        if address.startswith("[::]:") and _node_is_loopback():
            address = "127.0.0.1:" + address.rsplit(":", 1)[1]
        return original(server, address)

    bind.streamrec_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = bind
