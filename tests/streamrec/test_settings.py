"""Typed configuration: defaults, YAML file, environment, validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from streamrec.config import Settings


def test_defaults_describe_the_embedded_stack() -> None:
    settings = Settings()
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert settings.kafka.topics.events == "events" and settings.kafka.topics.dlq == "events.dlq"
    assert settings.kafka.partitions > 1
    assert settings.broker.enabled


def test_yaml_file_then_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "cluster.yaml"
    config.write_text(
        "kafka:\n  bootstrap_servers: kafka-0:9092,kafka-1:9092\n  partitions: 12\n"
        "broker:\n  enabled: false\ncollector:\n  auth_token: from-file\n"
    )
    monkeypatch.setenv("STREAMREC_CONFIG", str(config))
    monkeypatch.setenv("STREAMREC_KAFKA__PARTITIONS", "24")
    settings = Settings()
    assert settings.kafka.client_options()["bootstrap_servers"] == ["kafka-0:9092", "kafka-1:9092"]
    assert settings.kafka.partitions == 24  # environment beats the file
    assert not settings.broker.enabled
    assert settings.collector.auth_token.get_secret_value() == "from-file"
    assert "from-file" not in settings.model_dump_json()  # secrets are not printed


def test_missing_config_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_CONFIG", "/nonexistent/streamrec.yaml")
    with pytest.raises(FileNotFoundError, match="STREAMREC_CONFIG"):
        Settings()


@pytest.mark.parametrize(
    "env", [{"STREAMREC_KAFKA__PARTITIONS": "0"}, {"STREAMREC_NOT_A_SECTION": "1"}, {"STREAMREC_KAFKA__PARTITIONS": "many"}]
)
def test_invalid_values_are_rejected(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError):
        Settings()


def test_typo_in_a_nested_environment_key_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_KAFKA__BOOTSTRAP_SERVER", "kafka:9092")  # missing S
    with pytest.raises(ValidationError, match="bootstrap_server"):
        Settings()
