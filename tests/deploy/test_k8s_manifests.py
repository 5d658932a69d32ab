"""deploy/k8s: every manifest parses and validates against a (hand-written) schema of its kind, the
overlays render, and the manifests agree with the app's configuration, code and local Serve config.

Offline and fast: no cluster, no network. Rendering uses ``kustomize_lite`` (compared with
``kubectl kustomize`` when that binary exists). Schemas: ``schemas/`` (subsets, see deploy/k8s/README.md).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource

import kustomize_lite

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
SCHEMAS = Path(__file__).resolve().parent / "schemas"
IMAGE_ROOT = "/opt/streamrec"            # where the images hold the repository (README: image contract)
CONFIG_MOUNT = "/etc/streamrec"
EXTERNAL_SECRETS = {"prod": {"streamrec-collector", "streamrec-admin"}}   # created out of band (overlays/prod/kustomization.yaml)
# Secrets the KubeRay operator creates: a RayCluster with authOptions.mode token gets one named after
# it, key auth_token (KubeRay >= 1.5.1; Ray docs, "Configure Ray clusters to use token authentication").
KUBERAY_TOKEN_KEY = "auth_token"


# ---------------------------------------------------------------------------------------------- helpers

def _schema_registry() -> Registry:
    resources = [(p.name, Resource.from_contents(json.loads(p.read_text()))) for p in SCHEMAS.glob("*.json")]
    return Registry().with_resources(resources)


REGISTRY = _schema_registry()


def schema_file(doc: dict[str, Any]) -> Path:
    group_version = doc["apiVersion"].replace("/", "_")
    return SCHEMAS / f"{group_version}_{doc['kind']}.json"


def validate(doc: dict[str, Any], where: str) -> None:
    path = schema_file(doc)
    assert path.is_file(), f"{where}: no schema for {doc['apiVersion']} {doc['kind']} ({path.name})"
    validator = jsonschema.Draft202012Validator(json.loads(path.read_text()), registry=REGISTRY)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, f"{where}: " + "; ".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5])


_RENDERED: dict[str, list[dict[str, Any]]] = {}


def rendered(overlay: str) -> list[dict[str, Any]]:
    if overlay not in _RENDERED:
        _RENDERED[overlay] = kustomize_lite.build(K8S / "overlays" / overlay)
    return _RENDERED[overlay]


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


def streamrec_containers(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        for label, spec in pod_specs(doc):
            for c in containers(spec):
                if any(e["name"] == "STREAMREC_CONFIG" for e in c.get("env", [])):
                    yield f"{label}/{c['name']}", c


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for key in list(os.environ):
        if key.startswith("STREAMREC_"):
            monkeypatch.delenv(key)
    return monkeypatch


def settings_for(container: dict[str, Any], monkeypatch: pytest.MonkeyPatch):
    """streamrec Settings as this container sees them (config file from the repo, its env)."""
    from streamrec.config import Settings

    for env in container.get("env", []):
        if not env["name"].startswith("STREAMREC_"):
            continue
        if env["name"] == "STREAMREC_CONFIG":
            assert env["value"] == f"{CONFIG_MOUNT}/streamrec.yaml"
            monkeypatch.setenv("STREAMREC_CONFIG", str(BASE / "config" / "streamrec.yaml"))
        else:
            # A Secret's value stands in as a long, non-default string (production refuses defaults).
            monkeypatch.setenv(env["name"], env.get("value", f"secret-from-k8s-{env['name'].lower()}"))
    return Settings()


def cluster_settings(monkeypatch: pytest.MonkeyPatch):
    from streamrec.config import Settings

    monkeypatch.setenv("STREAMREC_CONFIG", str(BASE / "config" / "streamrec.yaml"))
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


# ---------------------------------------------------------------------------------------- parsing + schema

ALL_YAML = sorted(K8S.rglob("*.yaml"))


def test_there_is_something_to_check() -> None:
    assert OVERLAYS == ["dev", "prod"]
    assert len(ALL_YAML) >= 15


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(K8S)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path}: empty"


def test_every_schema_is_a_valid_json_schema() -> None:
    for path in SCHEMAS.glob("*.json"):
        jsonschema.Draft202012Validator.check_schema(json.loads(path.read_text()))


def base_resource_files() -> list[Path]:
    k = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return [BASE / r for r in k["resources"]]


@pytest.mark.parametrize("path", base_resource_files(), ids=lambda p: str(p.relative_to(BASE)))
def test_base_manifest_matches_schema_of_its_kind(path: Path) -> None:
    for i, doc in enumerate(kustomize_lite.load_docs(path)):
        validate(doc, f"{path.relative_to(K8S)}#{i}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_overlay_matches_schemas(overlay: str) -> None:
    docs = rendered(overlay)
    for doc in docs:
        validate(doc, f"{overlay}: {doc['kind']}/{doc['metadata']['name']}")
    text = yaml.safe_dump_all(docs)
    assert "set-by-values" not in text, f"{overlay}: a placeholder was not replaced from values.yaml"
    assert not [d for d in docs if d["metadata"]["name"] == "cluster-values"], "values.yaml must stay local-config"
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), f"{overlay}: duplicate objects"
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "streamrec", f"{doc['kind']}/{doc['metadata']['name']}"


# ------------------------------------------------------------------------------------------- kustomize

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_references_exist_and_base_has_no_orphans(overlay: str) -> None:
    refs = kustomize_lite.referenced_files(K8S / "overlays" / overlay)
    missing = [str(p) for p in refs if not p.exists()]
    assert not missing, f"{overlay} references missing paths: {missing}"
    used = {p for p in refs if p.is_file()}
    orphans = [p for p in BASE.rglob("*.yaml") if p.name != "kustomization.yaml" and p.resolve() not in used]
    assert not orphans, f"files in base/ that no kustomization uses: {orphans}"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resolver_agrees_with_kubectl_kustomize(overlay: str) -> None:
    out = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    theirs = [d for d in yaml.safe_load_all(out.stdout) if d]
    key = lambda d: (d["apiVersion"], d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"])  # noqa: E731
    assert {key(d): d for d in rendered(overlay)} == {key(d): d for d in theirs}


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
    for label, container in found:
        with pytest.MonkeyPatch.context() as mp:
            settings_for(container, mp)  # raises on unknown keys / bad values
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert CONFIG_MOUNT in mounts, f"{label}: STREAMREC_CONFIG set but {CONFIG_MOUNT} not mounted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_topics_partitions_and_replication_agree_with_settings(overlay: str, clean_env: pytest.MonkeyPatch) -> None:
    docs = rendered(overlay)
    topics = {t["spec"]["topicName"]: t["spec"] for t in all_of(docs, "KafkaTopic")}
    for label, container in streamrec_containers(docs):
        with pytest.MonkeyPatch.context() as mp:
            s = settings_for(container, mp)
        assert set(topics) == {s.kafka.topics.events, s.kafka.topics.dlq, s.kafka.topics.tombstones, s.serving.feedback_topic}, label
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
    for doc in kustomize_lite.load_docs(BASE / "kafka" / "topics.yaml"):
        assert doc["spec"]["partitions"] == s.kafka.partitions


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_addresses_and_ports_agree(overlay: str, clean_env: pytest.MonkeyPatch) -> None:
    docs = rendered(overlay)
    s = cluster_settings(clean_env)
    # Kafka: Strimzi's bootstrap Service <cluster>-kafka-bootstrap on the listener port.
    kafka = one(docs, "Kafka")
    ports = {listener["port"] for listener in kafka["spec"]["kafka"]["listeners"] if not listener["tls"]}
    host, port = host_port(s.kafka.bootstrap_servers)
    assert host == f"{kafka['metadata']['name']}-kafka-bootstrap.streamrec.svc" and port in ports and port == 9092
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
    local = yaml.safe_load((REPO / "deploy" / "local" / "serve.yaml").read_text())
    for overlay in OVERLAYS:
        serve = yaml.safe_load(one(rendered(overlay), "RayService")["spec"]["serveConfigV2"])
        assert serve["applications"] == local["applications"], overlay
        assert [(a["name"], a["route_prefix"], a["import_path"]) for a in serve["applications"]] == [
            ("collector", "/v1/events", "serving.collector.app:build_app"),
            ("recommender", "/", "serving.app.api:build_app"),
        ]
        assert serve["http_options"]["host"] == "0.0.0.0"


def test_serve_import_paths_import_and_args_validate() -> None:
    serve = yaml.safe_load(one(rendered("prod"), "RayService")["spec"]["serveConfigV2"])
    for app in serve["applications"]:
        module_name, _, attr = app["import_path"].partition(":")
        builder = getattr(importlib.import_module(module_name), attr)
        assert callable(builder), app["import_path"]
    from serving.app.args import RecommenderArgs
    from serving.collector.app import CollectorArgs

    args = {a["name"]: a["args"] for a in serve["applications"]}
    CollectorArgs.model_validate(args["collector"])
    parsed = RecommenderArgs.model_validate(args["recommender"])  # reads experiments_file from the repo
    assert parsed.experiments


def test_ray_token_auth_and_version_everywhere() -> None:
    ray_version = importlib.metadata.version("ray")
    for overlay in OVERLAYS:
        clusters = [(d, ray_cluster_specs(d)) for d in rendered(overlay) if ray_cluster_specs(d)]
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
