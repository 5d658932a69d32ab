"""How a process reaches the Ray head: its address, the dashboard URL and token authentication.

Ground floor: the training and retraining CLIs (``ray_jobs``) and the shell's local stack both need
it, so it lives below them; starting and stopping a head is the shell's (``streamrec.local_stack``).
"""

from __future__ import annotations

import socket
from pathlib import Path

from streamrec.runtime.config import Settings

__all__ = ["dashboard_url", "port_open", "ray_auth_headers", "ray_auth_token_file", "ray_client_env",
           "ray_head_running", "ray_host", "url_host"]


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def ray_host(settings: Settings) -> str:
    return str(settings.ray.host)


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def ray_head_running(settings: Settings) -> bool:
    return port_open(ray_host(settings), settings.ray.head_port)


def dashboard_url(settings: Settings) -> str:
    return f"http://{url_host(ray_host(settings))}:{settings.ray.dashboard_port}"


def ray_auth_token_file(settings: Settings) -> Path:
    """The embedded head's Ray auth token (mode 0600, in the stack's run dir, made by `up`)."""
    return settings.data.run_dir / "ray_auth_token"


def ray_client_env(settings: Settings) -> dict[str, str]:
    """Environment that lets a process (CLI, `serve deploy`, a driver, a test) talk to the embedded
    head: Ray's token authentication with this stack's token file. Add it to a child's environment,
    or to ``os.environ`` before this process imports Ray (Ray reads the single-machine switch below
    once, at import).

    The empty ``RAY_AUTH_TOKEN`` keeps a token for some other cluster in the caller's environment
    from winning over this stack's file (Ray reads that variable first and skips it when empty).
    On loopback, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is Ray's single-machine mode (its default on
    macOS and Windows): Ray then takes 127.0.0.1 as this node's address instead of replacing it with
    the machine's network address, so a driver finds the head (which binds loopback only).

    Example:
        >>> env = ray_client_env(Settings())
        >>> env["RAY_AUTH_MODE"], env["RAY_AUTH_TOKEN_PATH"].endswith("ray_auth_token")
        ('token', True)
    """
    env = {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(ray_auth_token_file(settings)),
        "RAY_AUTH_TOKEN": "",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    if settings.ray.host.is_loopback:
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    return env


def ray_auth_headers(settings: Settings) -> dict[str, str]:
    """HTTP headers for the embedded head's dashboard (REST, job and Serve APIs)."""
    try:
        token = ray_auth_token_file(settings).read_text().strip()
    except OSError:
        return {}
    return {"Authorization": f"Bearer {token}"}
