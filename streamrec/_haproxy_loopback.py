"""Serve's HAProxy as the embedded stack runs it: stats and exporter on one address, admin socket 0600.

Ray Serve 2.60 renders HAProxy's configuration from a fixed template that binds the stats page and
the Prometheus exporter on every interface (``bind *:<port>``, ``bind :<port>``), opens the admin
socket with ``mode 666 level admin``, and has no setting for HAProxy's ``timeout http-request``
(the bound on how long a client may take to send its request head). What Serve does offer is
``RAY_SERVE_HAPROXY_BINARY_PATH``, the HAProxy binary it runs. The embedded head
(``streamrec.local_stack``) points it at a launcher of this module, which

1. rewrites those lines of the configuration file that Serve has just written, in place and under
   Serve's own lock file (so the file HAProxy reads, and the path in its command line that Serve
   recognises its processes by, stay Serve's), then
2. replaces itself with the real HAProxy (``exec``: same pid, same arguments).

Serve writes the file and starts HAProxy under one lock and waits for each HAProxy to answer on its
admin socket before it writes again, so the HAProxy started here reads the rewritten file. A bind on
every interface that is left after the rewrite (a template this module does not know) stops HAProxy
from starting: the stack fails closed rather than listening on the network.

Stdlib only: this runs at every HAProxy (re)start.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from streamrec.runtime.files import write_atomically

PARAMS_FILE = "launcher.json"

_ADMIN_SOCKET = re.compile(r"^(\s*stats\s+socket\s+\S+.*?\bmode\s+)(\d+)", re.MULTILINE)
# `bind :P`, `bind *:P`, `bind 0.0.0.0:P`, `bind [::]:P`, `bind :::P`: every interface.
_WILDCARD_BIND = re.compile(r"^(\s*bind\s+)(?:\*|0\.0\.0\.0|\[::\]|::)?:(\d+)\b", re.MULTILINE)
_DEFAULTS = re.compile(r"^defaults\b.*$", re.MULTILINE)
_SECTION = re.compile(r"^(?:global|defaults|frontend|backend|listen|peers|resolvers|userlist)\b", re.MULTILINE)


@dataclass(frozen=True)
class LoopbackParams:
    """What the launcher needs; written by ``local_stack`` as JSON beside the launcher."""

    haproxy: str  # the real HAProxy binary
    host: str  # the address HAProxy's own listeners bind
    ports: tuple[int, ...]  # HAProxy's stats and exporter ports (bound on every interface by Serve)
    http_request_timeout_s: int
    # Ports that may bind every interface because the settings say so (Serve's HTTP frontend when
    # collector.host is 0.0.0.0); anything else on every interface is refused.
    wildcard_ports: tuple[int, ...] = ()

    @classmethod
    def read(cls, path: Path) -> "LoopbackParams":
        raw = json.loads(path.read_text())
        return cls(haproxy=raw["haproxy"], host=raw["host"], ports=tuple(raw["ports"]),
                   http_request_timeout_s=int(raw["http_request_timeout_s"]),
                   wildcard_ports=tuple(raw.get("wildcard_ports", ())))

    def write(self, path: Path) -> None:
        path.write_text(json.dumps({"haproxy": self.haproxy, "host": self.host, "ports": list(self.ports),
                                    "http_request_timeout_s": self.http_request_timeout_s,
                                    "wildcard_ports": list(self.wildcard_ports)}))


def rewrite(config: str, params: LoopbackParams) -> str:
    """The HAProxy configuration with ``params.ports`` bound on ``params.host``, the admin socket
    0600 and ``timeout http-request`` in ``defaults``. Idempotent.

    Raises:
        ValueError: a listener on every interface that ``params`` does not allow is left.

    Example:
        >>> p = LoopbackParams("haproxy", "127.0.0.1", (8404,), 10)
        >>> rewrite("defaults\\n    mode http\\nlisten stats\\n  bind *:8404\\n", p).splitlines()[1:4]
        ['    timeout http-request 10s', '    mode http', 'listen stats']
    """
    host = f"[{params.host}]" if ":" in params.host else params.host

    def bind(match: re.Match[str]) -> str:
        port = int(match.group(2))
        return f"{match.group(1)}{host}:{port}" if port in params.ports else match.group(0)

    config = _WILDCARD_BIND.sub(bind, config)
    config = _ADMIN_SOCKET.sub(lambda m: f"{m.group(1)}600", config)
    config = _with_http_request_timeout(config, params.http_request_timeout_s)
    left = [int(m.group(2)) for m in _WILDCARD_BIND.finditer(config) if int(m.group(2)) not in params.wildcard_ports]
    if left:
        raise ValueError(f"HAProxy config binds port(s) {left} on every interface; refusing to start it")
    return config


def _with_http_request_timeout(config: str, seconds: int) -> str:
    defaults = _DEFAULTS.search(config)
    if defaults is None:
        raise ValueError("HAProxy config has no defaults section")
    following = _SECTION.search(config, defaults.end())
    section = config[defaults.end(): following.start() if following else len(config)]
    if re.search(r"^\s*timeout\s+http-request\b", section, re.MULTILINE):
        return config
    return config[: defaults.end()] + f"\n    timeout http-request {seconds}s" + config[defaults.end():]


def rewrite_file(path: Path, params: LoopbackParams) -> None:
    """Rewrite Serve's config file in place, holding the lock Serve writes it under."""
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            text = path.read_text()
            new = rewrite(text, params)
            if new != text:
                write_atomically(path, new)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> None:
    """The launcher's entry point: ``<launcher> <haproxy arguments...>`` as Serve calls HAProxy."""
    argv = sys.argv if argv is None else argv
    params = LoopbackParams.read(Path(argv[0]).resolve().with_name(PARAMS_FILE))
    args = argv[1:]
    if "-f" in args:
        try:
            rewrite_file(Path(args[args.index("-f") + 1]), params)
        except (OSError, ValueError) as exc:
            print(f"streamrec haproxy launcher: {exc}", file=sys.stderr, flush=True)
            sys.exit(1)
    os.execv(params.haproxy, [params.haproxy, *args])
