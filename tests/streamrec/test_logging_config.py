"""Logging configured once from the settings: the JSON lines, and no duplicate handlers."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from streamrec.runtime.config import LoggingConfig, Settings
from streamrec.runtime.logging_config import configure_logging


@pytest.fixture
def restored_root() -> Iterator[logging.Logger]:
    """The root logger (and the configured loggers' levels) as they were before the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in LoggingConfig().loggers}
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)


class Unencodable:
    """A value JSON cannot encode (as a Path or a datetime)."""

    def __str__(self) -> str:
        return "<path>"


def test_json_lines_carry_time_level_logger_message_and_extra_fields(restored_root):
    out = io.StringIO()
    configure_logging(LoggingConfig(level="DEBUG", format="json"), stream=out)
    log = logging.getLogger("pipelines.runner")
    log.debug("batch %d done", 7, extra={"records": 12, "lag": 0, "path": Unencodable()})
    try:
        raise RuntimeError("broker away")
    except RuntimeError:
        log.exception("batch failed")

    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["level"] == "DEBUG" and first["logger"] == "pipelines.runner"
    assert first["message"] == "batch 7 done"
    assert first["records"] == 12 and first["lag"] == 0 and first["path"] == "<path>"  # unencodable: str()
    assert first["ts"].endswith("Z") and first["ts"][:4].isdigit()
    assert set(first) == {"ts", "level", "logger", "message", "records", "lag", "path"}  # no LogRecord internals
    assert second["level"] == "ERROR" and "RuntimeError: broker away" in second["exc_info"]


def test_configuring_twice_keeps_one_handler_and_the_second_settings(restored_root):
    others = list(restored_root.handlers)  # pytest's capture handlers stay
    first, second = io.StringIO(), io.StringIO()
    configure_logging(LoggingConfig(format="json"), stream=first)
    configure_logging(LoggingConfig(level="WARNING", format="text"), stream=second)
    added = [h for h in restored_root.handlers if h not in others]
    assert len(added) == 1
    assert restored_root.level == logging.WARNING
    logging.getLogger("streamrec.demo").warning("once")
    logging.getLogger("streamrec.demo").info("filtered out")
    assert first.getvalue() == ""
    assert second.getvalue().count("once") == 1 and "filtered" not in second.getvalue()
    assert "WARNING streamrec.demo: once" in second.getvalue()


def test_chatty_libraries_are_quieted_and_stderr_is_followed(restored_root, capsys):
    configure_logging(LoggingConfig(level="INFO"))
    assert logging.getLogger("kafka").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("apache_beam").getEffectiveLevel() == logging.WARNING
    logging.getLogger("kafka.conn").info("connecting")  # below the library's level
    logging.getLogger("streamrec.cli").info("hello")
    # Written to sys.stderr as it is now (here pytest's capture), not as it was when configured.
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].endswith("INFO streamrec.cli: hello")
    assert not any("connecting" in line for line in lines)


def test_logging_settings_default_to_text_and_come_from_the_environment(monkeypatch):
    assert Settings().logging == LoggingConfig(level="INFO", format="text")
    monkeypatch.setenv("STREAMREC_LOGGING__FORMAT", "json")
    monkeypatch.setenv("STREAMREC_LOGGING__LEVEL", "DEBUG")
    assert Settings().logging.format == "json" and Settings().logging.level == "DEBUG"


def test_the_cli_configures_logging_from_the_settings_once_per_call(restored_root, monkeypatch, capsys):
    from streamrec.cli import main
    from streamrec.runtime.config import reload_settings
    from streamrec.runtime.logging_config import JsonFormatter

    monkeypatch.setenv("STREAMREC_LOGGING__FORMAT", "json")
    reload_settings()
    try:
        for _ in range(2):
            assert main(["config", "show"]) == 0
    finally:
        monkeypatch.delenv("STREAMREC_LOGGING__FORMAT")
        reload_settings()
    ours = [h for h in restored_root.handlers if isinstance(h.formatter, JsonFormatter)]
    assert len(ours) == 1
    shown, _ = json.JSONDecoder().raw_decode(capsys.readouterr().out)  # stdout stays the command's output
    assert shown["logging"]["format"] == "json"
