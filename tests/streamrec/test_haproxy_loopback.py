"""The HAProxy launcher of the embedded stack, on the configuration Ray Serve's own template renders
(no Ray cluster: the template is rendered in-process and HAProxy only checks the file)."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from streamrec import local_stack
from streamrec._haproxy_loopback import LoopbackParams, rewrite
from support import free_port, make_settings

WILDCARD = re.compile(r"^\s*bind\s+(?:\*|0\.0\.0\.0|\[::\]|::)?:\d+", re.MULTILINE)


def _serve_config(directory: Path, frontend_host: str, ports: dict[str, int]) -> Path:
    """haproxy.cfg as Ray Serve 2.60 writes it (its HAProxyApi and template)."""
    from ray.serve._private.haproxy import HAProxyApi, HAProxyConfig
    from ray.serve.config import HTTPOptions

    cfg = HAProxyConfig(
        http_options=HTTPOptions(host=frontend_host, port=ports["frontend"]),
        stats_port=ports["stats"], metrics_port=ports["metrics"], socket_path=str(directory / "admin.sock"),
        server_state_base=str(directory), server_state_file=str(directory / "server-state"),
        metrics_socket_path=str(directory / "metrics.sock"),
    )
    HAProxyApi(cfg=cfg, config_file_path=str(directory / "haproxy.cfg"))._generate_config_file_internal()
    return directory / "haproxy.cfg"


def test_launcher_binds_haproxy_on_the_stack_host_and_closes_its_admin_socket(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "state", free_port(), ray={"haproxy_timeout_http_request_s": 7})
    ports = {"frontend": settings.collector.port, "stats": settings.ray.haproxy_stats_port,
             "metrics": settings.ray.haproxy_metrics_port}
    try:
        env = local_stack._haproxy_env(settings)
        directory = local_stack.haproxy_dir(settings)
        config = _serve_config(directory, settings.collector.host, ports)
        before = config.read_text()
        assert len(WILDCARD.findall(before)) == 2 and "mode 666" in before  # what Ray's template does
        # The launcher, as Serve runs HAProxy; `-c` only checks the file it rewrote (binds nothing).
        checked = subprocess.run([env["RAY_SERVE_HAPROXY_BINARY_PATH"], "-c", "-f", str(config)],
                                 capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0, checked.stderr
        after = config.read_text()
        assert not WILDCARD.findall(after)
        for port in ports.values():
            assert re.search(rf"^\s*bind 127\.0\.0\.1:{port}\b", after, re.MULTILINE), port
        assert re.search(r"stats socket \S+ mode 600 level admin", after)
        defaults = after[after.index("\ndefaults"):after.index("\nfrontend")]
        assert "timeout http-request 7s" in defaults
        assert rewrite(after, _params(settings)) == after  # idempotent
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert env["RAY_SERVE_HAPROXY_SOCKET_PATH"].startswith(str(directory))
        assert env["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"].startswith(str(directory))
    finally:
        shutil.rmtree(local_stack.haproxy_dir(settings), ignore_errors=True)


def _params(settings, wildcard: tuple[int, ...] = ()) -> LoopbackParams:  # noqa: ANN001
    return LoopbackParams("haproxy", str(settings.ray.host),
                          (settings.ray.haproxy_stats_port, settings.ray.haproxy_metrics_port),
                          settings.ray.haproxy_timeout_http_request_s, wildcard)


def test_a_listener_on_every_interface_that_is_not_configured_stops_haproxy(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "state", free_port())
    config = "defaults\n    mode http\nfrontend other\n    bind *:12345\n"
    with pytest.raises(ValueError, match="12345"):
        rewrite(config, _params(settings))
    # Serve's HTTP port on every interface is allowed only where the settings ask for it.
    assert "bind *:12345" in rewrite(config, _params(settings, wildcard=(12345,)))
