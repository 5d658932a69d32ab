"""Typed configuration: defaults, YAML file, environment, validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from streamrec.runtime.config import Settings


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


@pytest.mark.parametrize(
    "ray",
    [
        {"dashboard_port": 6380},  # the GCS's (head_port) default
        {"serve_proxy_port": 10500},  # inside the default worker port range
        {"serve_replica_min_http_port": 19000, "serve_replica_max_http_port": 19100},  # overlaps the workers'
        {"min_worker_port": 12000, "max_worker_port": 11000},
        {"host": "0.0.0.0"},
        {"host": "localhost"},
    ],
)
def test_ray_ports_are_distinct_and_the_host_is_an_address(ray: dict) -> None:
    with pytest.raises(ValidationError):
        Settings(ray=ray)


def test_every_ray_port_is_a_setting_and_loopback_is_the_default() -> None:
    ray = Settings().ray
    assert ray.host.is_loopback
    assert len(set(ray.single_ports().values())) == len(ray.single_ports()) >= 15
    env = ray.serve_env()
    assert env["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"] == str(ray.serve_proxy_port)
    assert env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] == str(ray.serve_replica_min_http_port)
    assert int(env["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"]) <= 60  # seconds, not Ray's hour


def test_kafka_tls_settings_reach_every_client() -> None:
    from streamrec.runtime.config import KafkaConfig

    tls = KafkaConfig(bootstrap_servers="kafka-bootstrap:9093", security_protocol="SSL", ssl_cafile="/etc/kafka-ca/ca.crt",
                      ssl_certfile="/etc/kafka-user/user.crt", ssl_keyfile="/etc/kafka-user/user.key")
    options = tls.client_options()
    assert options["security_protocol"] == "SSL" and options["ssl_check_hostname"] is True
    assert (options["ssl_cafile"], options["ssl_certfile"], options["ssl_keyfile"]) == (
        "/etc/kafka-ca/ca.crt", "/etc/kafka-user/user.crt", "/etc/kafka-user/user.key")
    assert "ssl_cafile" not in KafkaConfig().client_options()
    with pytest.raises(ValidationError, match="need security_protocol SSL"):
        KafkaConfig(ssl_cafile="/etc/kafka-ca/ca.crt")   # TLS files with a PLAINTEXT listener: a typo, not a choice
    with pytest.raises(ValidationError, match="go together"):
        KafkaConfig(security_protocol="SSL", ssl_certfile="/etc/kafka-user/user.crt")
