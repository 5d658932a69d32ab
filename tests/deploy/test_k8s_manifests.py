"""deploy/k8s, checked with the real tools, offline: the overlays rendered by ``kubectl kustomize``;
every custom resource validated against its operator's own CRD (a served version, unknown fields
refused as the API server prunes them), every core object against the Kubernetes schemas of
``kubernetes-validate``, the RayService's Serve config by Ray's ``ServeDeploySchema`` (see
``k8s_tools``). Then the manifests are checked against the app's configuration, code, the local
Serve config and the pinned versions of deploy/k8s/README.md.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib
import importlib.metadata
import importlib.util
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

import pytest
import yaml

import k8s_tools
from k8s_tools import ManifestError

REPO = k8s_tools.REPO
K8S = REPO / "deploy" / "k8s"
BASE = K8S / "base"
CLUSTER_CONFIG = BASE / "config" / "streamrec.yaml"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
IMAGE_ROOT = "/opt/streamrec"            # where the images hold the repository (README: image contract)
CONFIG_MOUNT = "/etc/streamrec"
EXPERIMENTS_CONFIGMAP = "streamrec-experiments"
EXTERNAL_SECRETS = {"prod": {"streamrec-collector", "streamrec-admin"}}   # created out of band (overlays/prod/kustomization.yaml)
# Secrets the KubeRay operator creates: a RayCluster with authOptions.mode token gets one named after
# it, key auth_token (KubeRay >= 1.5.1; Ray docs, "Configure Ray clusters to use token authentication").
KUBERAY_TOKEN_KEY = "auth_token"
# Kafka client TLS settings of config/streamrec.yaml (KafkaConfig fields, kafka-python option names).
KAFKA_TLS_KEYS = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
CUSTOM_KINDS = {"RayCluster", "RayJob", "RayService", "Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser",
                "FlinkDeployment"}


# ---------------------------------------------------------------------------------------------- helpers

@functools.cache
def rendered(overlay: str) -> list[dict[str, Any]]:
    return k8s_tools.render(K8S / "overlays" / overlay)


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def all_of(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def ray_cluster_specs(doc: dict[str, Any]) -> dict[str, Any] | None:
    return {"RayCluster": lambda: doc["spec"], "RayJob": lambda: doc["spec"].get("rayClusterSpec"),
            "RayService": lambda: doc["spec"]["rayClusterConfig"]}.get(doc["kind"], lambda: None)()


def pod_specs(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, pod spec) of every pod a manifest makes."""
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    if doc["kind"] in {"Deployment", "StatefulSet"}:
        yield name, doc["spec"]["template"]["spec"]
    if doc["kind"] == "CronJob":
        yield name, doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    cluster = ray_cluster_specs(doc)
    if cluster:
        yield f"{name}/head", cluster["headGroupSpec"]["template"]["spec"]
        for group in cluster.get("workerGroupSpecs", []):
            yield f"{name}/{group['groupName']}", group["template"]["spec"]
    if doc["kind"] == "FlinkDeployment":
        yield name, doc["spec"]["podTemplate"]["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return spec.get("initContainers", []) + spec["containers"]


def streamrec_pods(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(label, pod spec, container) of every container that reads the streamrec settings."""
    for doc in docs:
        for label, spec in pod_specs(doc):
            for c in containers(spec):
                if any(e["name"] == "STREAMREC_CONFIG" for e in c.get("env", [])):
                    yield f"{label}/{c['name']}", spec, c


def streamrec_containers(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for label, _, c in streamrec_pods(docs):
        yield label, c


def mounted_volume(spec: dict[str, Any], container: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The volume (and the file's path inside it) that holds ``path`` in this container, if any."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        root = PurePosixPath(mount["mountPath"])
        if PurePosixPath(path).is_relative_to(root) and mount["name"] in volumes:
            return {**volumes[mount["name"]], "_relative": str(PurePosixPath(path).relative_to(root))}
    return None


def kafka_tls_settings() -> dict[str, str]:
    """kafka.ssl_* of config/streamrec.yaml as written (the file the pods mount)."""
    kafka = yaml.safe_load(CLUSTER_CONFIG.read_text())["kafka"]
    return {key: kafka[key] for key in KAFKA_TLS_KEYS}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for key in list(os.environ):
        if key.startswith("STREAMREC_"):
            monkeypatch.delenv(key)
    return monkeypatch


def settings_for(container: dict[str, Any], monkeypatch: pytest.MonkeyPatch):
    """streamrec Settings as this container sees them (config file from the repo, its env)."""
    from streamrec.runtime.config import Settings

    for env in container.get("env", []):
        if not env["name"].startswith("STREAMREC_"):
            continue
        if env["name"] == "STREAMREC_CONFIG":
            assert env["value"] == f"{CONFIG_MOUNT}/streamrec.yaml"
            monkeypatch.setenv("STREAMREC_CONFIG", str(CLUSTER_CONFIG))
        else:
            # A Secret's value stands in as a long, non-default string (production refuses defaults).
            monkeypatch.setenv(env["name"], env.get("value", f"secret-from-k8s-{env['name'].lower()}"))
    return Settings()


def cluster_settings(monkeypatch: pytest.MonkeyPatch):
    from streamrec.runtime.config import Settings

    monkeypatch.setenv("STREAMREC_CONFIG", str(CLUSTER_CONFIG))
    return Settings()


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def service_address(docs: list[dict[str, Any]], name: str, namespace: str = "streamrec") -> set[str]:
    svc = one(docs, "Service", name)
    return {f"{name}.{namespace}.svc:{p['port']}" for p in svc["spec"]["ports"]}


def python_modules(command: list[str]) -> list[tuple[str, list[str]]]:
    """(module, args) of every `python -m MODULE ARGS` in a command (also inside `sh -c "..."`)."""
    words = command
    if command[:2] == ["sh", "-c"]:
        words = [w for part in re.split(r"&&|;", command[2]) for w in shlex.split(part)]
    out = []
    for i, word in enumerate(words):
        if word.endswith("python") and words[i + 1 : i + 2] == ["-m"]:
            rest = words[i + 3 :]
            out.append((words[i + 2], rest))
    return out


def serve_config(overlay: str) -> dict[str, Any]:
    return yaml.safe_load(one(rendered(overlay), "RayService")["spec"]["serveConfigV2"])


def in_repo(mounted_experiments: str) -> Path:
    """The repository file that the ConfigMap streamrec-experiments carries to this mounted path."""
    return BASE / "config" / PurePosixPath(mounted_experiments).name


def readme_pins() -> dict[str, str]:
    """deploy/k8s/README.md's compatibility table: component -> pinned version."""
    rows = re.findall(r"^\| ([^|]+?) \| `([^`]+)` \|", (K8S / "README.md").read_text(), flags=re.M)
    return {component: version for component, version in rows}


# ------------------------------------------------------------------------------ parsing + validation

ALL_YAML = sorted(K8S.rglob("*.yaml"))


def test_there_is_something_to_check() -> None:
    assert OVERLAYS == ["dev", "prod"]
    assert len(ALL_YAML) >= 15


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(K8S)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path}: empty"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_overlay_is_what_the_api_server_accepts(overlay: str) -> None:
    docs = rendered(overlay)
    errors = []
    for doc in docs:
        try:
            k8s_tools.validate(doc)
        except ManifestError as e:
            errors.append(str(e))
    assert not errors, "\n".join(errors)
    # Every operator's kinds are among them, so each CRD's schema really was applied.
    assert {d["kind"] for d in docs} >= CUSTOM_KINDS
    text = yaml.safe_dump_all(docs)
    assert "set-by-values" not in text, f"{overlay}: a placeholder was not replaced from values.yaml"
    assert not [d for d in docs if d["metadata"]["name"] == "cluster-values"], "values.yaml must stay local-config"
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), f"{overlay}: duplicate objects"
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "streamrec", f"{doc['kind']}/{doc['metadata']['name']}"


def test_custom_resources_use_the_version_their_crd_serves() -> None:
    kinds = {(d["apiVersion"], d["kind"]) for o in OVERLAYS for d in rendered(o) if d["kind"] in CUSTOM_KINDS}
    for api_version, kind in kinds:
        group, _, version = api_version.rpartition("/")
        served = k8s_tools.served_versions(k8s_tools.crds()[(group, kind)])
        assert version in served, f"{kind}: {api_version} (served: {served})"
    # Strimzi >= 1.0 serves v1 only; v1beta2 is what the operator no longer reads.
    assert {v for v, k in kinds if k.startswith("Kafka")} == {"kafka.strimzi.io/v1"}


def _set(pointer: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation that sets a JSON Pointer (RFC 6901: "/" separates, "~1" is a "/" in a key)."""
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in pointer.lstrip("/").split("/")]
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = value
    return mutate


# (kind, mutation, text the error must contain): each is a mistake the API server refuses or
# silently prunes (so the operator would never see the field).
BROKEN = {
    "misspelt Kafka field": ("Kafka", _set("/spec/kafka/listenerz", []), "listenerz"),
    "v1beta2 no longer served": ("Kafka", _set("/apiVersion", "kafka.strimzi.io/v1beta2"), "not served"),
    "replicas moved to node pools in v1": ("Kafka", _set("/spec/kafka/replicas", 3), "replicas"),
    "listener missing its port": ("Kafka", lambda d: d["spec"]["kafka"]["listeners"][0].pop("port"), "port"),
    "wrong enum": ("KafkaNodePool", _set("/spec/roles", ["zookeeper"]), "zookeeper"),
    "string for an integer": ("KafkaTopic", _set("/spec/partitions", "12"), "partitions"),
    "misspelt ACL operation": ("KafkaUser", _set("/spec/authorization/acls/0/operations", ["Write", "Reed"]), "Reed"),
    "misspelt container field inside a CRD": (
        "RayCluster", _set("/spec/headGroupSpec/template/spec/containers/0/imagePullPolizy", "Always"), "imagePullPolizy"),
    "misspelt RayJob field": ("RayJob", _set("/spec/shutdownAfterJobFinish", True), "shutdownAfterJobFinish"),
    "unknown Flink version": ("FlinkDeployment", _set("/spec/flinkVersion", "v1_21"), "v1_21"),
    "misspelt core field": ("Deployment", _set("/spec/template/spec/restartPolizy", "Always"), "restartPolizy"),
    "label that is not a string": ("KafkaTopic", _set("/metadata/labels/tier", 1), "labels"),
    "CronJob schedule missing": ("CronJob", lambda d: d["spec"].pop("schedule"), "schedule"),
}
# The opposite: places the schemas leave open (preserve-unknown-fields, maps), which must stay open.
OPEN = {
    "Kafka broker config (preserve-unknown-fields)": ("Kafka", _set("/spec/kafka/config/log.retention.hours", 24)),
    "topic config (preserve-unknown-fields)": ("KafkaTopic", _set("/spec/config/segment.bytes", 1048576)),
    "Flink configuration (preserve-unknown-fields)": ("FlinkDeployment", _set("/spec/flinkConfiguration/state.backend.type", "rocksdb")),
    "Ray start params (a map)": ("RayCluster", _set("/spec/headGroupSpec/rayStartParams/object-store-memory", "1000000000")),
    "resource limits (a map)": ("RayJob", _set("/spec/rayClusterSpec/headGroupSpec/template/spec/containers/0/resources/limits/example.com~1fpga", "1")),
    "pod labels in a KafkaNodePool template (a map)": ("KafkaNodePool", _set("/spec/template", {"pod": {"metadata": {"labels": {"a": "b"}}}})),
}


def _first(kind: str) -> dict[str, Any]:
    return copy.deepcopy(next(d for d in rendered("prod") if d["kind"] == kind))


@pytest.mark.parametrize("case", BROKEN, ids=str)
def test_validation_refuses_what_the_api_server_would_refuse_or_prune(case: str) -> None:
    kind, mutate, expected = BROKEN[case]
    doc = _first(kind)
    k8s_tools.validate(doc)  # valid as rendered
    mutate(doc)
    with pytest.raises(ManifestError, match=re.escape(expected)):
        k8s_tools.validate(doc)


@pytest.mark.parametrize("case", OPEN, ids=str)
def test_validation_keeps_open_what_the_crd_leaves_open(case: str) -> None:
    kind, mutate = OPEN[case]
    doc = _first(kind)
    mutate(doc)
    k8s_tools.validate(doc)


def test_a_kind_without_a_schema_is_refused() -> None:
    doc = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "metadata": {"name": "x"}, "spec": {}}
    with pytest.raises(ManifestError, match="neither a CRD"):
        k8s_tools.validate(doc)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serve_config_is_what_ray_serve_parses(overlay: str) -> None:
    config = k8s_tools.validate_serve_config(one(rendered(overlay), "RayService")["spec"]["serveConfigV2"])
    assert [a.name for a in config.applications] == ["collector", "recommender"]


def test_serve_config_validation_refuses_keys_ray_would_ignore() -> None:
    raw = serve_config("prod")
    raw["applications"][1]["deployments"][0]["max_queued_request"] = 64   # misspelt: Ray drops it silently
    with pytest.raises(ManifestError, match=r"applications\[1\]\.deployments\[0\]\.max_queued_request"):
        k8s_tools.validate_serve_config(yaml.safe_dump(raw))
    raw = serve_config("prod")
    raw["applications"][0]["deployments"][0]["num_replicas"] = 2          # Ray's own rule: not with autoscaling
    with pytest.raises(ValueError, match="num_replicas is not allowed when autoscaling_config"):
        k8s_tools.validate_serve_config(yaml.safe_dump(raw))


# ------------------------------------------------------------------------------------------- kustomize

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_base_has_no_orphans(overlay: str) -> None:
    used = k8s_tools.kustomization_inputs(K8S / "overlays" / overlay)
    orphans = [p for p in BASE.rglob("*.yaml") if p.name != "kustomization.yaml" and p.resolve() not in used]
    assert not orphans, f"files in base/ that no kustomization uses: {orphans}"


def test_values_files_feed_exactly_the_marked_fields() -> None:
    component = yaml.safe_load((K8S / "components" / "values" / "kustomization.yaml").read_text())
    sources = {r["source"]["fieldPath"].removeprefix("data.") for r in component["replacements"]}
    keys_per_overlay = {}
    for overlay in OVERLAYS:
        values = yaml.safe_load((K8S / "overlays" / overlay / "values.yaml").read_text())
        assert values["metadata"]["annotations"]["config.kubernetes.io/local-config"] == "true"
        assert all(isinstance(v, str) for v in values["data"].values()), "ConfigMap data must be strings"
        keys_per_overlay[overlay] = set(values["data"])
    assert len({frozenset(k) for k in keys_per_overlay.values()}) == 1, f"overlays differ in keys: {keys_per_overlay}"
    assert set(keys_per_overlay["dev"]) == sources, "values.yaml keys and components/values sources differ"
    markers = set()
    for path in list(BASE.rglob("*.yaml")) + list((K8S / "components").rglob("*.yaml")):
        markers |= set(re.findall(r"values\.yaml: ([a-z][A-Za-z]+)", path.read_text()))
    assert markers <= sources, f"markers name unknown values: {markers - sources}"


# ------------------------------------------------------------------------------------ pinned versions

def test_readme_pins_are_the_versions_in_use() -> None:
    pins = readme_pins()
    docs = rendered("prod")
    assert pins["Kubernetes"] == k8s_tools.KUBERNETES_VERSION
    assert pins["Apache Kafka"] == one(docs, "Kafka")["spec"]["kafka"]["version"]
    assert pins["Ray"] == importlib.metadata.version("ray")
    assert {spec["rayVersion"] for d in docs if (spec := ray_cluster_specs(d))} == {pins["Ray"]}
    assert pins["Apache Beam"] == importlib.metadata.version("apache-beam")
    assert one(docs, "FlinkDeployment")["spec"]["flinkVersion"] == "v" + pins["Flink"].replace(".", "_")
    # The operator pins name the CRD snapshots the tests validate with (shared/crds/README.md).
    assert {"KubeRay", "Strimzi", "Flink Kubernetes Operator"} <= set(pins)
    snapshots = set(re.findall(r"\b[0-9a-f]{12}\b", (k8s_tools.CRD_DIR / "README.md").read_text()))
    assert len(snapshots) == 3
    table = "\n".join(line for line in (K8S / "README.md").read_text().splitlines() if line.startswith("| "))
    assert all(commit in table for commit in snapshots), snapshots


# ---------------------------------------------------------------------------------- app configuration

def test_cluster_config_is_accepted_by_streamrec_settings(clean_env: pytest.MonkeyPatch) -> None:
    s = cluster_settings(clean_env)
    assert s.broker.enabled is False
    assert s.feast.online_store == "redis"
    assert str(s.data.state_dir).startswith("/mnt/streamrec/")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_streamrec_container_env_is_accepted_by_settings(overlay: str, clean_env: pytest.MonkeyPatch) -> None:
    found = list(streamrec_containers(rendered(overlay)))
    assert len(found) >= 7
    cluster = cluster_settings(clean_env)
    for label, container in found:
        with pytest.MonkeyPatch.context() as mp:
            s = settings_for(container, mp)  # raises on unknown keys / bad values
        # The env repeats some of the file's addresses: they must not drift apart.
        assert s.kafka.bootstrap_servers == cluster.kafka.bootstrap_servers, label
        assert s.feast.redis_connection_string == cluster.feast.redis_connection_string, label
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert CONFIG_MOUNT in mounts, f"{label}: STREAMREC_CONFIG set but {CONFIG_MOUNT} not mounted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_topics_partitions_and_replication_agree_with_settings(overlay: str, clean_env: pytest.MonkeyPatch) -> None:
    docs = rendered(overlay)
    topics = {t["spec"]["topicName"]: t["spec"] for t in all_of(docs, "KafkaTopic")}
    for label, container in streamrec_containers(docs):
        with pytest.MonkeyPatch.context() as mp:
            s = settings_for(container, mp)
        assert set(topics) == {s.kafka.topics.events, s.kafka.topics.dlq, s.kafka.topics.tombstones, s.kafka.topics.feedback}, label
        for name, spec in topics.items():
            assert spec["partitions"] == s.kafka.partitions, f"{label}: {name} partitions"
            assert spec["replicas"] == s.kafka.replication_factor, f"{label}: {name} replicas"
    kafka = one(docs, "Kafka")
    brokers = sum(p["spec"]["replicas"] for p in all_of(docs, "KafkaNodePool") if "broker" in p["spec"]["roles"])
    for spec in topics.values():
        assert spec["replicas"] <= brokers
        assert int(spec["config"]["min.insync.replicas"]) <= spec["replicas"]
    assert kafka["spec"]["kafka"]["config"]["default.replication.factor"] <= brokers
    for pool in all_of(docs, "KafkaNodePool"):
        assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]


def test_topic_partitions_default_layout_is_what_the_code_would_create(clean_env: pytest.MonkeyPatch) -> None:
    """`streamrec topics create` / the learner would create every topic with kafka.partitions."""
    s = cluster_settings(clean_env)
    for doc in yaml.safe_load_all((BASE / "kafka" / "topics.yaml").read_text()):
        assert doc["spec"]["partitions"] == s.kafka.partitions


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_addresses_and_ports_agree(overlay: str, clean_env: pytest.MonkeyPatch) -> None:
    docs = rendered(overlay)
    s = cluster_settings(clean_env)
    # Kafka: Strimzi's bootstrap Service <cluster>-kafka-bootstrap on the port of a TLS listener
    # with client-certificate authentication, which the clients' SSL settings match.
    kafka = one(docs, "Kafka")
    host, port = host_port(s.kafka.bootstrap_servers)
    assert host == f"{kafka['metadata']['name']}-kafka-bootstrap.streamrec.svc"
    (listener,) = [x for x in kafka["spec"]["kafka"]["listeners"] if x["port"] == port]
    assert listener["type"] == "internal" and listener["tls"] is True and port == 9093
    assert listener["authentication"]["type"] == "tls"
    assert s.kafka.security_protocol == "SSL"
    # Redis: the Service, the container port, the settings and the Feast feature_store.yaml agree.
    assert s.feast.redis_connection_string in service_address(docs, "redis-master")
    assert host_port(s.feast.redis_connection_string)[1] == 6379
    redis = one(docs, "StatefulSet", "redis")
    assert {p["containerPort"] for p in redis["spec"]["template"]["spec"]["containers"][0]["ports"]} == {6379}
    store = yaml.safe_load(one(docs, "ConfigMap", "streamrec-config")["data"]["feature_store.yaml"])
    assert store["online_store"]["connection_string"] == s.feast.redis_connection_string
    # Serve HTTP 8000: settings, serveConfigV2, and the `serve` ports of the RayService pods.
    service = one(docs, "RayService")
    serve = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert serve["http_options"]["port"] == s.collector.port == 8000
    for label, spec in pod_specs(service):
        for c in spec["containers"]:
            assert {"name": "serve", "containerPort": 8000} in c["ports"], label
    # Ray metrics and dashboard ports of every Ray cluster.
    for doc in docs:
        cluster = ray_cluster_specs(doc)
        if not cluster:
            continue
        head = cluster["headGroupSpec"]
        assert head["rayStartParams"]["metrics-export-port"] == str(s.ray.metrics_export_port)
        head_ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
        assert head_ports["dashboard"] == s.ray.dashboard_port and head_ports["metrics"] == s.ray.metrics_export_port
        for group in cluster.get("workerGroupSpecs", []):
            assert group["rayStartParams"]["metrics-export-port"] == str(s.ray.metrics_export_port)
    # Services select pods that exist and target ports those pods declare.
    for svc in all_of(docs, "Service"):
        selector = svc["spec"]["selector"]
        if selector.get("component") == "jobmanager":   # Flink native pods: labels set by Flink
            flink = one(docs, "FlinkDeployment")
            assert selector["app"] == flink["metadata"]["name"]
            assert flink["spec"]["flinkConfiguration"]["rest.port"] == str(svc["spec"]["ports"][0]["targetPort"])
            continue
        pods = [d for d in docs if d["kind"] in {"Deployment", "StatefulSet"}
                and selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(pods) == 1, f"Service {svc['metadata']['name']} selects {len(pods)} workloads"
        declared = {p.get("name") for c in pods[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        declared |= {p["containerPort"] for c in pods[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        for p in svc["spec"]["ports"]:
            assert p.get("targetPort", p["port"]) in declared, f"{svc['metadata']['name']}: {p}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_clients_mount_the_cluster_ca_and_their_kafka_user_certificate(overlay: str) -> None:
    """Every container that reads the settings finds kafka.ssl_cafile / ssl_certfile / ssl_keyfile
    where it mounts the Strimzi Secrets that hold them: the cluster CA certificate (verifies the
    brokers) and the client certificate and key of a KafkaUser of this Kafka with TLS authentication."""
    docs = rendered(overlay)
    kafka = one(docs, "Kafka")["metadata"]["name"]
    users = {u["metadata"]["name"]: u for u in all_of(docs, "KafkaUser")}
    wanted = {  # setting -> (Secret, key) per Strimzi's Secret layout
        "ssl_cafile": (f"{kafka}-cluster-ca-cert", "ca.crt"),
        "ssl_certfile": (None, "user.crt"),
        "ssl_keyfile": (None, "user.key"),
    }
    tls = kafka_tls_settings()
    found = list(streamrec_pods(docs))
    assert len(found) >= 7
    for label, spec, container in found:
        for setting, (secret, key) in wanted.items():
            volume = mounted_volume(spec, container, tls[setting])
            assert volume and "projected" in volume, f"{label}: {tls[setting]} is not on a mounted Secret"
            sources = [
                (src["secret"]["name"], item["key"]) for src in volume["projected"]["sources"] if "secret" in src
                for item in src["secret"].get("items", []) if item["path"] == volume["_relative"]]
            assert len(sources) == 1, f"{label}: {tls[setting]} from {sources}"
            name, got_key = sources[0]
            assert got_key == key, f"{label}: {setting} is {name}/{got_key}"
            if secret is None:  # a KafkaUser's Secret is named after it
                assert name in users, f"{label}: {name} is not a KafkaUser"
                user = users[name]
                assert user["metadata"]["labels"]["strimzi.io/cluster"] == kafka
                assert user["spec"]["authentication"]["type"] == "tls"
            else:
                assert name == secret, f"{label}: {setting} from {name}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_user_acls_are_the_apps_topics_and_consumer_group(overlay: str, clean_env: pytest.MonkeyPatch) -> None:
    """With `authorization: simple`, the apps may use exactly what the settings name: every topic
    (read and write: collector, learner and pipeline share the identity) and the pipeline's group."""
    docs = rendered(overlay)
    s = cluster_settings(clean_env)
    assert one(docs, "Kafka")["spec"]["kafka"]["authorization"]["type"] == "simple"
    (user,) = all_of(docs, "KafkaUser")
    acls = user["spec"]["authorization"]["acls"]
    for acl in acls:
        assert acl["resource"].get("patternType") == "literal" and acl.get("type", "allow") == "allow", acl
    topics = {a["resource"]["name"]: set(a["operations"]) for a in acls if a["resource"]["type"] == "topic"}
    groups = {a["resource"]["name"]: set(a["operations"]) for a in acls if a["resource"]["type"] == "group"}
    assert set(topics) == {s.kafka.topics.events, s.kafka.topics.dlq, s.kafka.topics.tombstones, s.kafka.topics.feedback}
    assert set(topics) == {t["spec"]["topicName"] for t in all_of(docs, "KafkaTopic")}
    assert all(ops == {"Describe", "Read", "Write"} for ops in topics.values()), topics
    assert groups == {s.pipeline.group_id: {"Describe", "Read"}}


def test_app_settings_pass_the_kafka_tls_files_to_the_clients(clean_env: pytest.MonkeyPatch) -> None:
    """The ssl_* keys config/streamrec.yaml sets reach every kafka-python client (client_options)."""
    kafka = cluster_settings(clean_env).kafka
    assert {key: getattr(kafka, key) for key in KAFKA_TLS_KEYS} == kafka_tls_settings()
    options = kafka.client_options()
    assert options["security_protocol"] == "SSL"
    assert {key: options[key] for key in KAFKA_TLS_KEYS} == kafka_tls_settings()


def test_feast_files_are_the_production_ones(clean_env: pytest.MonkeyPatch) -> None:
    production = REPO / "deploy" / "production" / "feast"
    if not production.is_dir():
        pytest.skip("deploy/production/feast not present")
    assert (BASE / "config" / "feature_store.yaml").read_bytes() == (production / "feature_store.yaml").read_bytes(), (
        "base/config/feature_store.yaml differs: cp deploy/production/feast/feature_store.yaml deploy/k8s/base/config/"
    )
    fragment = yaml.safe_load((production / "streamrec.yaml").read_text())
    cluster = yaml.safe_load((BASE / "config" / "streamrec.yaml").read_text())
    for key, value in fragment["feast"].items():
        assert cluster["feast"][key] == value, f"feast.{key}"
    s = cluster_settings(clean_env)
    store = yaml.safe_load((production / "feature_store.yaml").read_text())
    assert store["project"] == s.feast.project
    assert Path(store["registry"]).parent == Path(s.feast.repo_dir)


# ---------------------------------------------------------------------------------------- Ray / Serve

def test_rayservice_applications_equal_local_serve_config() -> None:
    """The same applications as deploy/local/serve.yaml; only the experiments file differs (the
    cluster's comes from the ConfigMap streamrec-experiments, test_experiments_...)."""
    for overlay in OVERLAYS:
        serve = serve_config(overlay)
        local = yaml.safe_load((REPO / "deploy" / "local" / "serve.yaml").read_text())
        for config in (serve, local):
            config["applications"][1]["args"].pop("experiments_file")
        assert serve["applications"] == local["applications"], overlay
        assert [(a["name"], a["route_prefix"], a["import_path"]) for a in serve["applications"]] == [
            ("collector", "/v1/events", "serving.collector.app:build_app"),
            ("recommender", "/", "serving.app.api:build_app"),
        ]
        assert serve["http_options"]["host"] == "0.0.0.0"


def test_serve_import_paths_import_and_args_validate() -> None:
    serve = serve_config("prod")
    for app in serve["applications"]:
        module_name, _, attr = app["import_path"].partition(":")
        builder = getattr(importlib.import_module(module_name), attr)
        assert callable(builder), app["import_path"]
    from serving.app.args import RecommenderArgs
    from serving.collector.app import CollectorArgs

    args = {a["name"]: a["args"] for a in serve["applications"]}
    CollectorArgs.model_validate(args["collector"])
    recommender = {**args["recommender"], "experiments_file": str(in_repo(args["recommender"]["experiments_file"]))}
    parsed = RecommenderArgs.model_validate(recommender)  # reads the file the ConfigMap carries
    assert parsed.experiments


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_experiments_come_from_the_configmap_mounted_in_the_ray_pods(overlay: str) -> None:
    """args.experiments_file is the ConfigMap streamrec-experiments as mounted in every RayService
    pod (and in the shared RayCluster, for ad-hoc OPE runs), not the image's deploy/local copy."""
    docs = rendered(overlay)
    path = serve_config(overlay)["applications"][1]["args"]["experiments_file"]
    assert PurePosixPath(path).is_absolute(), "a relative path would read the file baked into the image"
    configmap = one(docs, "ConfigMap", EXPERIMENTS_CONFIGMAP)
    assert set(configmap["data"]) == {PurePosixPath(path).name}
    assert configmap["data"][PurePosixPath(path).name] == in_repo(path).read_text()
    pods = [(label, spec, c) for kind in ("RayService", "RayCluster") for label, spec in pod_specs(one(docs, kind))
            for c in spec["containers"]]
    assert len(pods) >= 4
    for label, spec, container in pods:
        volume = mounted_volume(spec, container, path)
        assert volume and volume.get("configMap", {}).get("name") == EXPERIMENTS_CONFIGMAP, f"{label}: {path}"
        assert volume["_relative"] == PurePosixPath(path).name, label


def test_ray_token_auth_and_version_everywhere() -> None:
    ray_version = importlib.metadata.version("ray")
    for overlay in OVERLAYS:
        clusters = [(d, spec) for d in rendered(overlay) if (spec := ray_cluster_specs(d))]
        assert {d["kind"] for d, _ in clusters} == {"RayCluster", "RayJob", "RayService"}
        for doc, spec in clusters:
            where = f"{overlay}: {doc['kind']}/{doc['metadata']['name']}"
            assert spec["authOptions"]["mode"] == "token", where
            assert spec["rayVersion"] == ray_version, f"{where}: rayVersion {spec['rayVersion']} != installed {ray_version}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rayjob_entrypoints_run_ray_jobs_train_against_the_serving_registry(
    overlay: str, clean_env: pytest.MonkeyPatch
) -> None:
    import ray_jobs.train as train  # imports ray and torch (a few seconds)
    from ray_jobs.trainers import JobConfig

    s = cluster_settings(clean_env)
    jobs = all_of(rendered(overlay), "RayJob")
    registered = set()
    for job in jobs:
        command = shlex.split(job["spec"]["entrypoint"])
        (module, argv), = python_modules(command)
        assert importlib.util.find_spec(module) is not None, module
        assert module == "ray_jobs.train"
        args = train.parse_args(argv)
        config = Path(str(args.config))
        assert config.is_absolute() and str(config).startswith(IMAGE_ROOT + "/")
        repo_config = REPO / config.relative_to(IMAGE_ROOT)
        assert repo_config.is_file(), f"{job['metadata']['name']}: {config} not in the repository"
        job_config = JobConfig.from_yaml(repo_config, {"model": args.model})
        registered.add(args.name or job_config.name)
        assert args.registry == s.serving.registry_root
        assert Path(args.datasets_dir) == s.data.datasets_dir
        assert args.storage_path and args.storage_path.startswith("/mnt/streamrec/")
        groups = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
        gpus = [g for g in groups for c in g["template"]["spec"]["containers"]
                if "nvidia.com/gpu" in c.get("resources", {}).get("limits", {})]
        assert bool(gpus) == args.use_gpu, f"{job['metadata']['name']}: --use-gpu and GPU worker group disagree"
        assert sum(g["replicas"] for g in groups) >= args.num_workers
    assert {s.serving.item_model, s.serving.bundle_model} <= registered, "serving reads models no RayJob trains"
    if overlay == "prod":
        assert any("--use-gpu" in j["spec"]["entrypoint"] for j in jobs)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_retrain_cronjob_checks_the_trigger_against_the_shared_ray_cluster(
    overlay: str, clean_env: pytest.MonkeyPatch
) -> None:
    """The loop's retrain trigger on the cluster: `streamrec retrain` (one check) on a schedule,
    never two at once, submitting to the RayCluster's jobs API with that cluster's token, with the
    cluster's settings (lake offsets from the pipeline's group, last.json on the shared volume)."""
    from streamrec.cli import build_parser

    docs = rendered(overlay)
    cron = one(docs, "CronJob", "retrain")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    (module, argv), = python_modules(container["command"])
    assert module == "streamrec.cli" and argv[0] == "retrain"
    parsed = build_parser().parse_args(argv)
    assert not parsed.watch and not parsed.force  # one check per run; the schedule is the loop
    s = settings_for(container, clean_env)
    cluster = one(docs, "RayCluster")
    name = cluster["metadata"]["name"]
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    dashboard = next(p["containerPort"] for p in head["ports"] if p["name"] == "dashboard")
    assert s.retrain.jobs_address == f"http://{name}-head-svc.streamrec.svc:{dashboard}"
    env = {e["name"]: e for e in container["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == cluster["spec"]["authOptions"]["mode"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": name, "key": KUBERAY_TOKEN_KEY}
    # The retrain's state and the jobs' registry sit on the volume every Ray pod mounts.
    assert str(s.data.state_dir).startswith("/mnt/streamrec/")
    assert any(m["mountPath"] == "/mnt/streamrec" for m in container["volumeMounts"])
    # A job of the longest retrain (every model, each up to its timeout) fits the Job's deadline.
    deadline = cron["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"]
    assert deadline >= len(s.retrain.jobs) * s.retrain.job_timeout_s


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_commands_name_existing_modules_and_valid_arguments(overlay: str) -> None:
    from pipelines.cli import register

    parser = argparse.ArgumentParser(prog="python -m pipelines.cli")
    register(parser.add_subparsers(dest="command", required=True))
    seen = 0
    for doc in rendered(overlay):
        for label, spec in pod_specs(doc):
            for c in containers(spec):
                for module, argv in python_modules(c.get("command", [])):
                    assert importlib.util.find_spec(module) is not None, f"{label}: {module}"
                    if module == "pipelines.cli":
                        parser.parse_args(argv)
                    seen += 1
    assert seen >= 2


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_volumes_configmaps_and_secrets_resolve(overlay: str) -> None:
    docs = rendered(overlay)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    external = EXTERNAL_SECRETS.get(overlay, set()) | {
        d["metadata"]["name"] for d in all_of(docs, "RayCluster") if d["spec"].get("authOptions", {}).get("mode") == "token"}
    # Secrets the Strimzi operators create: the cluster CA certificate, one per KafkaUser.
    external |= {f"{d['metadata']['name']}-cluster-ca-cert" for d in all_of(docs, "Kafka")}
    external |= {d["metadata"]["name"] for d in all_of(docs, "KafkaUser")}
    config = one(docs, "ConfigMap", "streamrec-config")
    assert set(config["data"]) == {"streamrec.yaml", "feature_store.yaml"}
    for doc in docs:
        for label, spec in pod_specs(doc):
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            for c in containers(spec):
                for mount in c.get("volumeMounts", []):
                    templates = {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
                    assert mount["name"] in volumes or mount["name"] in templates, f"{label}: {mount['name']}"
                for env in c.get("env", []):
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ("Secret", ref["name"]) in names or ref["name"] in external, f"{label}: {ref}"
            for v in volumes.values():
                if "configMap" in v:
                    assert ("ConfigMap", v["configMap"]["name"]) in names, f"{label}: {v}"
                for source in v.get("projected", {}).get("sources", []):
                    if "secret" in source:
                        name = source["secret"]["name"]
                        assert ("Secret", name) in names or name in external, f"{label}: {source}"
                if "persistentVolumeClaim" in v:
                    assert ("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]) in names, f"{label}: {v}"


# ------------------------------------------------------------------------------------------ Beam / Flink

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_beam_runner_options_reach_the_job_server_and_flink(overlay: str, clean_env: pytest.MonkeyPatch) -> None:
    from apache_beam.options.pipeline_options import FlinkRunnerOptions, PipelineOptions, PortableOptions

    docs = rendered(overlay)
    s = cluster_settings(clean_env)
    options = PipelineOptions(s.pipeline.beam_args)
    portable = options.view_as(PortableOptions)
    assert options.get_all_options()["runner"] == "PortableRunner"
    job_server = service_address(docs, "beam-job-server")
    assert portable.job_endpoint in job_server and portable.artifact_endpoint in job_server
    assert portable.environment_type == "PROCESS"
    # The job server targets the operator's REST Service of the FlinkDeployment.
    flink = one(docs, "FlinkDeployment")
    server = one(docs, "Deployment", "beam-job-server")["spec"]["template"]["spec"]["containers"][0]
    flags = dict(a.removeprefix("--").split("=", 1) for a in server["args"])
    assert flags["flink-master"] == f"{flink['metadata']['name']}-rest.streamrec.svc:{flink['spec']['flinkConfiguration']['rest.port']}"
    for port_name, flag in (("job", "job-port"), ("artifact", "artifact-port"), ("expansion", "expansion-port")):
        assert {"name": port_name, "containerPort": int(flags[flag])} in server["ports"]
    # Versions: Flink minor supported by this Beam, job server image of this Beam and Flink.
    flink_minor = flink["spec"]["flinkVersion"].removeprefix("v").replace("_", ".")
    assert flink_minor in FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS
    beam_version = importlib.metadata.version("apache-beam")
    assert server["image"] == f"apache/beam_flink{flink_minor}_job_server:{beam_version}"
    # The driver's collect folder and the artifacts are on the volume the TaskManagers mount.
    driver = one(docs, "Deployment", "feature-pipeline")["spec"]["template"]["spec"]["containers"][0]
    tmpdir = next(e["value"] for e in driver["env"] if e["name"] == "TMPDIR")
    tm_mounts = {m["mountPath"] for m in flink["spec"]["podTemplate"]["spec"]["containers"][0]["volumeMounts"]}
    assert any(tmpdir.startswith(m + "/") for m in tm_mounts)
    assert any(flags["artifacts-dir"].startswith(m + "/") for m in tm_mounts)


def test_pipeline_settings_agree_with_production_beam_fragment(clean_env: pytest.MonkeyPatch) -> None:
    path = REPO / "deploy" / "production" / "beam" / "streamrec.yaml"
    if not path.is_file():
        pytest.skip("deploy/production/beam not present")
    fragment = yaml.safe_load(path.read_text())["pipeline"]
    s = cluster_settings(clean_env)
    for key in ("group_id", "poll_interval_s", "max_records_per_partition"):
        assert getattr(s.pipeline, key) == fragment[key], key
    # Its --flink_master must resolve to a Service of ours (the flink-jobmanager alias).
    master = next(a.split("=", 1)[1] for a in fragment["beam_args"] if a.startswith("--flink_master="))
    assert master in service_address(rendered("prod"), "flink-jobmanager")
