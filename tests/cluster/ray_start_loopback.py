"""`ray start` (Ray's own CLI, same arguments) for a node that joins a loopback-only cluster.

Ray's GCS, raylet and agents listen on loopback only when their node's address is exactly
127.0.0.1, so that is what `streamrec up` gives its head, in Ray's single-machine mode
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``). A joining node cannot have that mode (`ray start
--address` aborts: "Multi-node Ray clusters are not supported on Windows and OSX"), and without
it the CLI replaces 127.0.0.1, in ``--node-ip-address`` and ``--address`` alike, with the machine's
network address: the node would then listen on every interface and look for the head there.
This runs the CLI with that replacement off, so the second node of ``tests/cluster/test_multinode.py``
is 127.0.0.1 like the head and nothing of the cluster is reachable from another machine.

    python tests/cluster/ray_start_loopback.py start --address=127.0.0.1:<port> --node-ip-address=127.0.0.1 ...
"""

from __future__ import annotations

import sys

import ray._private.services as services
from ray.scripts.scripts import main

# The CLI (and canonicalize_bootstrap_address) call this to turn 127.0.0.1 into the network address.
services.resolve_ip_for_localhost = lambda host: host

if __name__ == "__main__":
    sys.argv[0] = "ray"
    sys.exit(main())
