"""Load a demo run directory into typed records.

Every file of the run directory is optional. A missing file leaves its field ``None``; a file that
exists but cannot be parsed also leaves it ``None`` and records why in :attr:`RunData.problems`, so
the report can say "not recorded" or "could not be read" instead of failing as a whole. JSON Lines
files skip malformed lines (a demo killed mid-write leaves half a last line) and say how many.

Records are plain dataclasses validated by pydantic's ``TypeAdapter`` (types checked, extra keys
ignored), so a renamed or mistyped field is a clear message rather than a ``KeyError`` deep inside a
plot.

Example:
    >>> run = load_run(Path(".streamrec/demo"))  # doctest: +SKIP
    >>> run.shoppers[0].regret  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from serving.experiments.analysis import ExperimentReport, RequestOutcome, analyze_experiment
from serving.experiments.definitions import Experiment

__all__ = [
    "ExperimentRecord",
    "OpeEstimate",
    "OpeResult",
    "PipelineBatch",
    "RunData",
    "RunInfo",
    "ShopperRequest",
    "TrainedModel",
    "load_run",
    "RUN_FILE",
    "SHOPPERS_FILE",
    "EXPERIMENT_FILE",
    "OPE_FILE",
    "FRESHNESS_FILE",
    "LATENCY_FILE",
    "PIPELINE_FILE",
    "HISTORY_DIR",
]

RUN_FILE = "run.json"
SHOPPERS_FILE = "shoppers.jsonl"
EXPERIMENT_FILE = "experiment.json"
OPE_FILE = "ope.json"
FRESHNESS_FILE = "freshness.json"
LATENCY_FILE = "latency.json"
PIPELINE_FILE = "pipeline.jsonl"
# Per-epoch training history per registered model, ``<name>.json``, used when the registry manifest
# has no ``history`` key (models registered before ray_jobs.train.register_outcome stored it).
HISTORY_DIR = "history"
REGISTRY_KEY = "registry"


@dataclass(frozen=True)
class RunInfo:
    """``run.json``: when the demo ran, on which experiment, and what each stage produced."""

    started_at: str | None = None
    finished_at: str | None = None
    experiment: str | None = None
    registry: str | None = None
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    ok: bool | None = None  # the demo's own end-of-run check (every event accounted for)
    # Mid-traffic retrains: when serving answered with the new versions (unix seconds) and what.
    retrains: tuple[dict[str, Any], ...] = ()

    @property
    def duration_s(self) -> float | None:
        """Wall time between start and finish, when both parse as ISO timestamps."""
        try:
            start = datetime.fromisoformat(self.started_at or "")
            end = datetime.fromisoformat(self.finished_at or "")
            return (end - start).total_seconds()
        except (ValueError, TypeError):  # naive vs aware, or not ISO: no duration rather than a crash
            return None


@dataclass(frozen=True)
class ShopperRequest:
    """One request served to a simulated shopper, with what the shopper did with the slate.

    ``experiment`` is ``None`` for requests outside the A/B test (``/v1/recommendations``, where
    ``variant`` names the item source instead), and ``oracle_reward`` is ``None`` where the simulator
    could not compute one (recommendations, shoppers without a known future); ``candidate_reward``
    (the best slate among the request's own candidates) is ``None`` also where the impression did
    not log its candidates' items.
    """

    t: float
    user_id: str
    endpoint: Literal["bundles", "recommendations"]
    latency_ms: float
    experiment: str | None = None
    variant: str | None = None
    policy: str | None = None
    shown: tuple[str, ...] = ()
    clicked: tuple[str, ...] = ()
    purchased: tuple[str, ...] = ()
    revenue: float = 0.0
    reward: float = 0.0
    oracle_reward: float | None = None
    candidate_reward: float | None = None

    @property
    def regret(self) -> float | None:
        """Reward left on the table: the best reward this shopper's real future allowed, minus ours."""
        return None if self.oracle_reward is None else self.oracle_reward - self.reward

    @property
    def selection_regret(self) -> float | None:
        """The part of the regret the policy's choice left: the best slate among this request's own
        candidates minus the slate served (``None`` where the candidates were not logged)."""
        return None if self.candidate_reward is None or self.oracle_reward is None else self.candidate_reward - self.reward

    @property
    def candidate_regret(self) -> float | None:
        """The part no choice among the request's candidates could win: oracle minus their best slate."""
        return None if self.candidate_reward is None or self.oracle_reward is None else self.oracle_reward - self.candidate_reward


@dataclass(frozen=True)
class ExperimentRecord:
    """``experiment.json``: the body of ``GET /v1/experiments/{name}``.

    Attributes:
        definition: the experiment definition as served (variants, control, primary_metric, ...).
        live: the learner's live counters per variant.
        analysis: the server's analysis, or one computed here from ``shoppers.jsonl``.
        analysis_note: why the server had no analysis, or where ``analysis`` came from.
        analysis_source: "server" or "shoppers.jsonl".
    """

    definition: dict[str, Any]
    live: dict[str, dict[str, Any]]
    analysis: ExperimentReport | None
    analysis_note: str | None
    analysis_source: str | None

    @property
    def primary_metric(self) -> str:
        return str(self.definition.get("primary_metric", "ctr"))

    @property
    def alpha(self) -> float:
        return float(self.definition.get("alpha", 0.05))


@dataclass(frozen=True)
class OpeEstimate:
    estimator: str
    value: float | None  # None: undefined (SNIPS when the target never chose a logged action)
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True)
class OpeResult:
    """``ope.json``: off-policy estimates of a target policy from another policy's logs."""

    target_policy: str
    logging_policy: str
    n: int
    estimates: tuple[OpeEstimate, ...]
    on_policy_value: float | None = None


@dataclass(frozen=True)
class PipelineBatch:
    """One micro-batch of the feature pipeline."""

    t: float
    records: int
    valid: int
    duplicates: int
    dlq: int
    features_written: int
    lag: int
    elapsed_s: float
    dlq_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float | None:
        return self.records / self.elapsed_s if self.elapsed_s > 0 else None


@dataclass(frozen=True)
class TrainedModel:
    """The ``LATEST`` version of one registered model: its manifest metrics, config and curves."""

    name: str
    version: str
    created_at: str
    metrics: dict[str, Any]
    config: dict[str, Any]
    history: tuple[dict[str, Any], ...]
    history_source: str | None

    @property
    def monitor(self) -> str | None:
        """The validation metric the trainer early-stopped on (``train.monitor`` of the job)."""
        train = self.config.get("train")
        return str(train["monitor"]) if isinstance(train, dict) and "monitor" in train else None


@dataclass
class RunData:
    """Everything found in a run directory; ``None`` where a file is absent or unreadable."""

    run_dir: Path
    run: RunInfo | None = None
    shoppers: tuple[ShopperRequest, ...] | None = None
    experiment: ExperimentRecord | None = None
    ope: OpeResult | None = None
    freshness_s: tuple[float, ...] | None = None
    latency_ms: dict[str, tuple[float, ...]] | None = None
    latency_source: str | None = None
    pipeline: tuple[PipelineBatch, ...] | None = None
    models: tuple[TrainedModel, ...] | None = None
    # file (or "registry") -> why it was not (fully) used
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def experiment_name(self) -> str | None:
        if self.run is not None and self.run.experiment:
            return self.run.experiment
        if self.experiment is not None and self.experiment.definition.get("name"):
            return str(self.experiment.definition["name"])
        return None

    @property
    def retrains(self) -> tuple[float, ...]:
        """Unix times at which serving switched to retrained models during the shoppers' traffic."""
        if self.run is None:
            return ()
        return tuple(float(r["serving_at"]) for r in self.run.retrains if isinstance(r.get("serving_at"), (int, float)))

    def experiment_requests(self) -> tuple[ShopperRequest, ...]:
        """The shoppers' requests that belong to the run's A/B experiment (all experiments if unnamed)."""
        name = self.experiment_name
        return tuple(
            s for s in self.shoppers or ()
            if s.experiment is not None and s.variant is not None and (name is None or s.experiment == name)
        )


class _Unreadable(Exception):
    """A present file that cannot be used; the message goes into the report."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Unreadable(f"not valid JSON: {exc}") from exc


def _validate(adapter: TypeAdapter[Any], raw: Any) -> Any:
    try:
        return adapter.validate_python(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise _Unreadable(f"{exc.error_count()} invalid field(s), first: {where}: {first['msg']}") from exc


def _read_jsonl(path: Path, adapter: TypeAdapter[Any]) -> tuple[list[Any], str | None]:
    """Valid records, and a note on skipped lines (None when every line was valid)."""
    rows: list[Any] = []
    bad: list[str] = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise _Unreadable(str(exc)) from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(_validate(adapter, json.loads(line)))
        except (json.JSONDecodeError, _Unreadable) as exc:
            bad.append(f"line {number}: {exc}")
    note = f"{len(bad)} malformed line(s) skipped (first: {bad[0]})" if bad else None
    return rows, note


def _nan_for_none(value: Any) -> Any:
    # serving/app/api.py::_jsonable writes non-finite floats as null; every null in an
    # ExperimentReport is such a float (the report has no optional fields), so map them back.
    if value is None:
        return math.nan
    if isinstance(value, dict):
        return {k: _nan_for_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_for_none(v) for v in value]
    return value


_REPORT = TypeAdapter(ExperimentReport)


def parse_analysis(raw: dict[str, Any]) -> ExperimentReport:
    """An experiment analysis from its JSON (``GET /v1/experiments/{name}``; NaN arrives as null)."""
    return _REPORT.validate_python(_nan_for_none(raw))
_SHOPPER = TypeAdapter(ShopperRequest)
_BATCH = TypeAdapter(PipelineBatch)


def _definition(raw: dict[str, Any]) -> Experiment:
    # The served definition adds a derived "split" key that the model itself does not accept, and
    # leaves out the assignment salt (never published; the analysis does not need it).
    return Experiment.model_validate({"salt": "not-published", **{k: v for k, v in raw.items() if k != "split"}})


def _outcomes(shoppers: tuple[ShopperRequest, ...], experiment: str) -> list[RequestOutcome]:
    return [
        RequestOutcome(s.variant, bool(s.clicked), bool(s.purchased), s.revenue, s.user_id)
        for s in shoppers if s.experiment == experiment and s.variant is not None
    ]


def _load_experiment(path: Path, shoppers: tuple[ShopperRequest, ...] | None) -> ExperimentRecord:
    raw = _read_json(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("experiment"), dict):
        raise _Unreadable('expected an object with an "experiment" definition')
    definition, note = raw["experiment"], raw.get("analysis_note")
    if raw.get("analysis") is not None:
        analysis = _validate(_REPORT, _nan_for_none(raw["analysis"]))
        return ExperimentRecord(definition, raw.get("live") or {}, analysis, note, "server")
    # The server had no analysis (e.g. no feedback reached the learner): analyse the shoppers' own
    # log with the same code, so the verdict still rests on the real statistics.
    if shoppers:
        try:
            experiment = _definition(definition)
            outcomes = _outcomes(shoppers, experiment.name)
            if outcomes:
                analysis = analyze_experiment(experiment, outcomes)
                why = f"the server had none ({note or 'no reason given'}); computed from {SHOPPERS_FILE}"
                return ExperimentRecord(definition, raw.get("live") or {}, analysis, why, SHOPPERS_FILE)
        except (ValidationError, ValueError) as exc:
            note = f"{note or 'no server analysis'}; analysing {SHOPPERS_FILE} failed: {exc}"
    return ExperimentRecord(definition, raw.get("live") or {}, None, note, None)


@dataclass(frozen=True)
class _Freshness:
    samples_s: tuple[float, ...]


def _load_freshness(path: Path) -> tuple[float, ...]:
    return _validate(TypeAdapter(_Freshness), _read_json(path)).samples_s


def _load_latency(path: Path) -> dict[str, tuple[float, ...]]:
    raw = _validate(TypeAdapter(dict[str, list[float]]), _read_json(path))
    return {endpoint: tuple(values) for endpoint, values in raw.items()}


def _latency_from_shoppers(shoppers: tuple[ShopperRequest, ...]) -> dict[str, tuple[float, ...]]:
    by_endpoint: dict[str, list[float]] = {}
    for s in shoppers:
        by_endpoint.setdefault(s.endpoint, []).append(s.latency_ms)
    return {k: tuple(v) for k, v in sorted(by_endpoint.items())}


def _model_names(registry: Any) -> list[str]:
    import pyarrow.fs as pafs

    infos = registry.fs.get_file_info(pafs.FileSelector(registry.root, recursive=False))
    return sorted(Path(i.path).name for i in infos if i.type == pafs.FileType.Directory)


def _history(run_dir: Path, name: str, manifest: dict[str, Any]) -> tuple[tuple[dict[str, Any], ...], str | None]:
    if isinstance(manifest.get("history"), list):
        return tuple(manifest["history"]), "registry manifest"
    path = run_dir / HISTORY_DIR / f"{name}.json"
    if path.is_file():
        rows = _read_json(path)
        if isinstance(rows, list):
            return tuple(r for r in rows if isinstance(r, dict)), f"{HISTORY_DIR}/{name}.json"
    return (), None


def _load_models(run_dir: Path, root: str) -> tuple[TrainedModel, ...]:
    from features.registry import ModelRegistry

    if "://" not in root and not Path(root).is_dir():
        raise _Unreadable(f"registry {root} does not exist")
    registry = ModelRegistry(root)
    models = []
    for name in _model_names(registry):
        try:
            loaded = registry.load_latest(name)
        except (FileNotFoundError, ValueError, OSError, json.JSONDecodeError):
            continue  # not a model directory, or no complete version yet
        history, source = _history(run_dir, name, loaded.manifest)
        models.append(TrainedModel(
            name, loaded.version, str(loaded.manifest.get("created_at", "")),
            dict(loaded.manifest.get("metrics") or {}), loaded.config, history, source,
        ))
    return tuple(models)


def load_run(run_dir: Path) -> RunData:
    """Read every known file of ``run_dir`` (see the module docstring for what a missing one does).

    Args:
        run_dir: the directory the demo wrote.

    Returns:
        The typed contents; absent or unreadable parts are ``None`` (reasons in ``problems``).

    Raises:
        FileNotFoundError: ``run_dir`` is not a directory.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    data = RunData(run_dir=run_dir)

    def attempt(name: str, load: Any) -> Any:
        path = run_dir / name
        if not path.is_file():
            return None
        try:
            return load(path)
        except _Unreadable as exc:
            data.problems[name] = str(exc)
            return None

    def jsonl(adapter: TypeAdapter[Any]) -> Any:
        def load(path: Path) -> tuple[Any, ...]:
            rows, note = _read_jsonl(path, adapter)
            if note:
                data.problems[path.name] = note
            return tuple(sorted(rows, key=lambda r: r.t))  # both logs are plotted in time order
        return load

    data.run = attempt(RUN_FILE, lambda p: _validate(TypeAdapter(RunInfo), _read_json(p)))
    data.shoppers = attempt(SHOPPERS_FILE, jsonl(_SHOPPER))
    data.experiment = attempt(EXPERIMENT_FILE, lambda p: _load_experiment(p, data.shoppers))
    data.ope = attempt(OPE_FILE, lambda p: _validate(TypeAdapter(OpeResult), _read_json(p)))
    data.freshness_s = attempt(FRESHNESS_FILE, _load_freshness)
    data.latency_ms = attempt(LATENCY_FILE, _load_latency)
    if data.latency_ms is not None:
        data.latency_source = LATENCY_FILE
    elif data.shoppers:
        data.latency_ms, data.latency_source = _latency_from_shoppers(data.shoppers), SHOPPERS_FILE
    data.pipeline = attempt(PIPELINE_FILE, jsonl(_BATCH))
    if data.run is not None and data.run.registry:
        try:
            data.models = _load_models(run_dir, data.run.registry)
        except (_Unreadable, OSError) as exc:
            data.problems[REGISTRY_KEY] = str(exc)
    return data
