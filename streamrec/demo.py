"""`streamrec demo`: the whole loop on the embedded defaults, on real data, with a report.

1. start the broker, Ray and the Serve apps (collector + recommender);
2. replay the Taobao slice *before* the cut through the collector (the history);
3. run the feature pipeline in follow mode (a separate process, as in production) until it has
   caught up, and measure feature freshness (produce -> visible in the Feast online store);
4. train LightGCN (retrieval) and SASRec (ranking) on the event lake with Ray Train and register
   them; wait until serving has hot-loaded them;
5. simulated shoppers, built from each user's real events *after* the cut, call `/v1/bundles`
   (A/B experiment: bandit policies against popularity) and `/v1/recommendations`, and send their
   real events, clicks and purchases back through the collector;
6. account for every event at every stage, read the experiment out, estimate the variants
   off-policy from the logs, write the report;
7. stop everything (`streamrec down`).

Everything it writes goes to the run directory (``settings.data.demo_dir``); the report is
``report.html`` there. With ``inject_faults`` it also kills the pipeline process, a recommender
replica and the bandit learner once each during the shoppers' traffic, and shows that the final
counts lose nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import httpx
from tqdm import tqdm

from streamrec import local_stack
from streamrec.runtime.config import Settings, bearer
from streamrec.replay import ReplaySummary, read_taobao_rows, replay_events, taobao_events
from streamrec.runtime.kafka import read_topic, topic_end_offsets

# History / future cut of the Taobao slice: 74% of the events (62,767) are history; 814 users
# have events after it and become shoppers.
DEFAULT_CUT = datetime(2017, 12, 2, tzinfo=timezone.utc)
FRESHNESS_USER = "freshness-probe"


@dataclass
class DemoOptions:
    cut: datetime = DEFAULT_CUT
    history_limit: int = 0  # first N history events only (0: all)
    shoppers: int = 300  # 0: every user with events after the cut (814; ~8 minutes of traffic on 2 cores)
    steps_per_shopper: int = 6
    concurrency: int = 8
    train: bool = True
    epochs: int | None = None  # None: the lake configs' bounded budgets
    freshness_probes: int = 12
    inject_faults: bool = False
    keep_running: bool = False
    run_dir: Path | None = None
    # The shoppers' visits per second, all together (a site's arrival rate; 0: as fast as served).
    # 6/s makes the default traffic ~4.7 min: the mid-traffic retrain (two Ray jobs, ~3 min on 2
    # cores) then serves well before it ends; at 8/s it reached serving 11 s and 0.4 s before the end.
    visits_per_s: float = 6.0
    # Retrain mid-traffic: the loop's own trigger (`streamrec retrain --watch`) fires once this share
    # of the shoppers' expected events has reached the lake (0: no retrain).
    retrain_after: float = 0.1


@dataclass
class StageCounts:
    """What each stage saw; ``run.json`` keeps it and the end-of-run check compares them."""

    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def record(self, stage: str, **counts: Any) -> None:
        self.stages.setdefault(stage, {}).update(counts)


def say(step: str, text: str) -> None:
    print(f"[{step}] {text}", flush=True)


def detail(text: str) -> None:
    print(f"      {text}", flush=True)


# -- stage 2: history ------------------------------------------------------------------------


def replay_history(settings: Settings, events: list[dict[str, Any]]) -> ReplaySummary:
    summary: ReplaySummary = asyncio.run(
        replay_events(events, settings.collector.base_url, settings.collector.auth_token.get_secret_value())
    )
    return summary


# -- stage 3: the pipeline process and freshness ------------------------------------------------


class PipelineProcess:
    """`streamrec pipeline run --follow` as its own process (killable, restartable)."""

    def __init__(self, settings: Settings, run_dir: Path) -> None:
        self.summaries = run_dir / "pipeline.jsonl"
        self.log = run_dir / "pipeline.log"
        # Its pid file sits with the stack's, so `streamrec down` stops it too if the demo dies.
        self.pid_file = local_stack.pipeline_process(settings).pid_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        cmd = [sys.executable, "-m", "streamrec.cli", "pipeline", "run", "--follow", "--summary-jsonl", str(self.summaries)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(str(self.proc.pid))

    def kill(self) -> None:
        """SIGKILL, as a crash: the batch in flight committed nothing and is redone after restart."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # finishes the batch in flight, then exits
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.kill()
        self.pid_file.unlink(missing_ok=True)

    def batches(self) -> list[dict[str, Any]]:
        if not self.summaries.exists():
            return []
        return [json.loads(line) for line in self.summaries.read_text().splitlines() if line.strip()]

    def wait_caught_up(self, settings: Settings, timeout_s: float = 600.0) -> int:
        """Until the pipeline's consumer group has committed everything in the topic now (every
        event produced before the call is in Feast and the lake). Fails fast if the process died.
        Returns the number of non-empty micro-batches so far."""
        from streamrec.runtime.kafka import committed_offsets

        topic, group = settings.kafka.topics.events, settings.pipeline.group_id
        targets = topic_end_offsets(settings.kafka, topic)
        deadline = time.monotonic() + timeout_s
        with tqdm(desc="      pipeline catching up", total=sum(targets.values()), unit="event", leave=False) as bar:
            while time.monotonic() < deadline:
                if self.proc is None or self.proc.poll() is not None:
                    tail = self.log.read_text(errors="replace").splitlines()[-5:] if self.log.exists() else []
                    raise RuntimeError("the pipeline process exited: " + " | ".join(tail))
                committed = committed_offsets(settings.kafka, topic, group)
                done = sum(min(committed.get(p) or 0, end) for p, end in targets.items())
                bar.update(done - bar.n)
                if all((committed.get(p) or 0) >= end for p, end in targets.items()):
                    return len(self.batches())
                time.sleep(1.0)
        raise TimeoutError(f"the pipeline did not catch up within {timeout_s:.0f}s (log: {self.log})")


class RetrainWatcher:
    """`streamrec retrain --watch` as its own process: the loop's retrain trigger; this run's
    threshold puts one retrain mid-traffic."""

    def __init__(self, settings: Settings, run_dir: Path, min_new_events: int, epochs: int | None) -> None:
        self.log = run_dir / "retrain.log"
        self.env = {**os.environ, "STREAMREC_RETRAIN__MIN_NEW_EVENTS": str(min_new_events),
                    "STREAMREC_RETRAIN__CHECK_INTERVAL_S": "2"}
        if epochs:
            self.env["STREAMREC_RETRAIN__EPOCHS"] = str(epochs)
        # Its pid file sits with the stack's, so `streamrec down` stops it too if the demo dies.
        self.pid_file = local_stack.retrain_process(settings).pid_file
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "streamrec.cli", "retrain", "--watch", "--max-retrains", "1"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(str(self.proc.pid))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)


def watch_for_retrained_models(settings: Settings, initial: dict[str, str], user_id: str, stop: Any,
                               found: list[dict[str, Any]], timeout_s: float) -> None:
    """(In a thread) until serving answers with retrained versions of every model in ``initial``
    (name -> version trained before the traffic): appends when, and which versions, to ``found``."""
    from features.registry import ModelRegistry

    registry = ModelRegistry(settings.registry_root)
    deadline = time.monotonic() + timeout_s
    while not stop.is_set() and time.monotonic() < deadline:
        latest = {name: registry.latest_version(name) for name in initial}
        if all(latest[name] != version for name, version in initial.items()):
            try:
                wait_for_models_in_serving(settings, user_id, list(latest.values()), timeout_s=max(deadline - time.monotonic(), 1))
            except TimeoutError:
                return
            found.append({"serving_at": time.time(), "versions": latest})
            return
        stop.wait(2.0)


class OnlineFeatures:
    """Reads of the Feast online store, as serving does them."""

    def __init__(self, settings: Settings) -> None:
        from features.repo import get_feature_store

        self.store = get_feature_store(settings)

    def last_seen(self, user_id: str) -> int | None:
        rows = self.store.get_online_features(
            features=["user_features:last_seen_unix"], entity_rows=[{"user_id": user_id}]
        ).to_dict()
        return rows["last_seen_unix"][0]


def probe_event(settings: Settings, item_id: str, n: int) -> dict[str, Any]:
    from features.events import SCHEMA_VERSION
    import uuid

    return {
        "schema_version": SCHEMA_VERSION, "event_id": str(uuid.uuid4()), "type": "view",
        "user_id": FRESHNESS_USER, "session_id": f"{FRESHNESS_USER}-{n}", "item_id": item_id,
        "ts": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
    }


def measure_freshness(settings: Settings, online: OnlineFeatures, item_id: str, n: int, timeout_s: float = 60.0) -> float | None:
    """Seconds from the collector's acknowledgement (acks=all) of one new event to the Feast
    online store showing it; None when it did not show within ``timeout_s``."""
    event = probe_event(settings, item_id, n)
    event_ts = int(datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp())
    reply = httpx.post(f"{settings.collector.base_url}/v1/events", json=[event], headers=bearer(settings.collector.auth_token), timeout=30)
    reply.raise_for_status()
    acked = time.monotonic()
    while time.monotonic() - acked < timeout_s:
        seen = online.last_seen(FRESHNESS_USER)
        if seen is not None and seen >= event_ts:
            return time.monotonic() - acked
        time.sleep(0.05)
    return None


# -- stage 4: training -------------------------------------------------------------------------


def train_model(settings: Settings, model: str, config: Path, serve_as: str, epochs: int | None, log: Path) -> dict[str, Any]:
    """`streamrec train` in its own process (it joins the local Ray head), as a user runs it."""
    cmd = [sys.executable, "-m", "streamrec.cli", "train", model, "--config", str(config), "--serve-as", serve_as]
    if epochs:
        cmd += ["--epochs", str(epochs)]
    started = time.monotonic()
    with log.open("ab") as fh:
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-8:]
        raise RuntimeError(f"training {model} failed (exit {done.returncode}): " + " | ".join(tail))
    from features.registry import ModelRegistry

    registry = ModelRegistry(settings.registry_root)
    name = getattr(settings.serving, {"item": "item_model", "ranker": "ranker_model", "bundle": "bundle_model"}[serve_as])
    version = registry.latest_version(name)
    loaded = registry.load(name, version)
    return {"model": model, "name": name, "version": version, "seconds": round(time.monotonic() - started, 1),
            "metrics": loaded.manifest.get("metrics", {})}


def wait_for_models_in_serving(settings: Settings, user_id: str, versions: list[str], timeout_s: float = 120.0) -> str:
    """Until /v1/recommendations says it retrieves and ranks with the new versions (serving
    hot-reloads the registry every ``serving.refresh_s``); returns its ``source``."""
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = httpx.get(f"{settings.collector.base_url}/v1/recommendations", params={"user_id": user_id, "k": 5},
                         headers=bearer(settings.collector.auth_token), timeout=30).json()
        described = json.dumps({k: v for k, v in body.items() if k != "items"})
        if all(version in described for version in versions):
            return f"{body.get('source')} (retrieval: {(body.get('ranker') or {}).get('retrieval', body.get('source'))})"
        time.sleep(2.0)
    raise TimeoutError(f"serving did not load model versions {versions} within {timeout_s:.0f}s "
                       f"(source: {body.get('source')!r}, ranker: {body.get('ranker')!r})")


# -- stage 5: shoppers (with optional fault injection) -------------------------------------------


def serve_replica_pids(settings: Settings, deployment: str) -> list[int]:
    """PIDs of the live replicas of a recommender deployment, from Ray's state API."""
    return local_stack.serve_replica_pids(settings, "recommender", deployment)


def kill_replica(settings: Settings, deployment: str) -> str:
    pids = serve_replica_pids(settings, deployment)
    if not pids:
        return f"no live {deployment} replica found"
    os.kill(pids[0], signal.SIGKILL)
    return f"SIGKILL {deployment} replica pid {pids[0]}"


def fault_plan(settings: Settings, pipeline: PipelineProcess) -> list[tuple[str, Callable[[], str]]]:
    def kill_pipeline() -> str:
        pid = pipeline.proc.pid if pipeline.proc else None
        pipeline.kill()
        time.sleep(2.0)
        pipeline.start()
        pipeline.restarts += 1
        return f"SIGKILL pipeline pid {pid}, restarted"

    return [
        ("pipeline", kill_pipeline),
        ("recommender replica", lambda: kill_replica(settings, "RecommenderAPI")),
        ("bandit learner", lambda: kill_replica(settings, "BanditLearner")),
    ]


async def run_shopper_phase(settings: Settings, shoppers: list[Any], category_of: dict[str, str], opts: DemoOptions,
                            experiment: str, online: OnlineFeatures, probe_item: str, pipeline: PipelineProcess,
                            ) -> tuple[Any, list[float], list[str]]:
    from streamrec.simulation.shoppers import run_shoppers

    total = sum(min(opts.steps_per_shopper, len(s.future_events)) for s in shoppers)
    freshness: list[float] = []
    faults_done: list[str] = []
    with tqdm(total=total, desc="      shoppers", unit="visit") as bar:
        task = asyncio.create_task(run_shoppers(
            settings.collector.base_url, settings.collector.auth_token.get_secret_value(), shoppers, category_of,
            steps_per_shopper=opts.steps_per_shopper, concurrency=opts.concurrency, experiment=experiment, progress=bar,
            visits_per_s=opts.visits_per_s or None,
        ))
        faults = fault_plan(settings, pipeline) if opts.inject_faults else []

        async def inject_faults() -> None:
            # Its own loop (a freshness probe can take up to a minute): one fault each at 20%, 40%, 60%.
            while faults and not task.done():
                await asyncio.sleep(0.5)
                done_share = bar.n / max(total, 1)
                if done_share >= 0.2 * (len(faults_done) + 1):
                    name, action = faults.pop(0)
                    faults_done.append(f"{name}: {await asyncio.to_thread(action)} at {done_share:.0%} of the visits")
                    tqdm.write(f"      fault injected: {faults_done[-1]}")

        async def probe_freshness() -> None:
            n = 0
            while n < opts.freshness_probes and not task.done():
                await asyncio.sleep(3.0)
                seconds = await asyncio.to_thread(measure_freshness, settings, online, probe_item, n)
                n += 1
                if seconds is not None:
                    freshness.append(seconds)

        await asyncio.gather(task, inject_faults(), probe_freshness())
        run = await task
    return run, freshness, faults_done


# -- stage 6: accounting, read-out -------------------------------------------------------------


def wait_learner_applied(settings: Settings, timeout_s: float = 180.0) -> dict[str, Any]:
    """Until the bandit learner has folded in every record now in the topics it reads."""
    targets = {
        f"{topic}:{p}": end
        for topic in (settings.kafka.topics.events, settings.kafka.topics.feedback)
        for p, end in topic_end_offsets(settings.kafka, topic).items()
    }
    deadline = time.monotonic() + timeout_s
    stats: dict[str, Any] = {}
    while time.monotonic() < deadline:
        stats = httpx.get(f"{settings.collector.base_url}/v1/learner", headers=bearer(settings.serving.admin_token), timeout=30).json()
        offsets = stats.get("offsets", {})
        if all(offsets.get(tp, 0) >= end for tp, end in targets.items() if end > 0):
            return stats
        time.sleep(1.0)
    raise TimeoutError(f"the bandit learner did not reach the end offsets {targets} within {timeout_s:.0f}s: {stats.get('offsets')}")


def account_events(settings: Settings, accepted_ids: set[str], counts: StageCounts) -> bool:
    """Every accepted event is in Kafka once by id, and in the lake; the DLQ explains the rest."""
    from pipelines.lake import read_event_lake

    records = read_topic(settings.kafka, settings.kafka.topics.events)
    in_kafka = {json.loads(r.value)["event_id"] for r in records}
    dlq = read_topic(settings.kafka, settings.kafka.topics.dlq)
    lake = read_event_lake(settings.data.lake_dir)
    in_lake = set(lake["event_id"].astype(str)) if len(lake) else set()
    missing_kafka = accepted_ids - in_kafka
    missing_lake = accepted_ids - in_lake
    counts.record("kafka", records=len(records), distinct_event_ids=len(in_kafka), dlq=len(dlq),
                  dlq_reasons=dict(Counter(json.loads(r.value)["reason"] for r in dlq)))
    counts.record("lake", rows=len(lake), distinct_event_ids=len(in_lake))
    counts.record("accounting", accepted_by_collector=len(accepted_ids), missing_in_kafka=len(missing_kafka),
                  missing_in_lake=len(missing_lake))
    return not missing_kafka and not missing_lake


def read_experiment(settings: Settings, name: str) -> dict[str, Any]:
    reply = httpx.get(f"{settings.collector.base_url}/v1/experiments/{name}", headers=bearer(settings.serving.reader_token), timeout=30)
    reply.raise_for_status()
    return reply.json()


def logged_candidates(settings: Settings, experiment: str) -> dict[str, list[tuple[str, ...]]]:
    """Request id -> the items of every candidate bundle its policy chose from, as the impression
    logged them (its candidates header): the oracle then knows what each request could have shown."""
    from serving.ope.impression_log import read_impression_log

    log = read_impression_log(settings, experiment)
    return {d.request_id: [d.candidate_items[i] for i in d.candidate_ids if i in d.candidate_items]
            for d in log.decisions if d.candidate_items}


@dataclass(frozen=True)
class OpeSignCheck:
    """Does an off-policy estimate point the way the online A/B went, and can it tell?"""

    agrees: bool  # (estimate - logged value) has the sign of the online difference
    established: bool  # the estimate's interval excludes the logged value: the estimate has a sign at all

    @property
    def verdict(self) -> str:
        said = "agrees" if self.agrees else "DISAGREES"
        return said if self.established else f"{said}, but not established (the interval includes the logged value)"


def ope_sign_check(estimate: float, interval: tuple[float | None, float | None], logged: float,
                   online_diff: float) -> OpeSignCheck:
    """The sign of ``estimate - logged`` against ``online_diff``; established only where the
    estimate's interval lies wholly on one side of ``logged`` (an estimate whose interval spans it
    says nothing about the direction, whichever side its point value falls on).

    Example:
        >>> ope_sign_check(0.30, (0.26, 0.34), 0.24, +0.1)
        OpeSignCheck(agrees=True, established=True)
        >>> ope_sign_check(-0.02, (-0.68, 0.65), 0.24, +0.27).verdict
        'DISAGREES, but not established (the interval includes the logged value)'
    """
    low, high = interval
    established = low is not None and high is not None and (low > logged or high < logged)
    return OpeSignCheck(agrees=(estimate - logged) * online_diff > 0, established=established)


def run_ope(settings: Settings, experiment: dict[str, Any], run_dir: Path, counts: StageCounts) -> str:
    """`streamrec ope` of each bandit variant from the control's log alone, and whether the estimated
    difference with the control has the sign of the online difference (``ope.json``: the first
    variant's, for the report; every variant's in ``run.json`` stage ``ope``)."""
    from streamrec.report.render import num

    definition = experiment["experiment"]
    control = definition.get("control")
    variants = [v["name"] for v in definition["variants"] if v["name"] != control]
    if not variants or not control:
        return "no treatment variant to evaluate"
    analysis = experiment.get("analysis") or {}
    online = {name: v["ctr"]["value"] for name, v in (analysis.get("variants") or {}).items()}
    lines = []
    for n, variant in enumerate(variants):
        out = run_dir / ("ope.json" if n == 0 else f"ope_{variant}.json")
        cmd = [sys.executable, "-m", "streamrec.cli", "ope", "--experiment", definition["name"], "--policy", variant,
               "--logging-variant", control, "--json", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            lines.append(f"streamrec ope {variant} failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-300:]}")
            continue
        result = json.loads(out.read_text())
        estimates = {e["estimator"]: e for e in result["estimates"] if e["value"] is not None}
        chosen = estimates.get("DR", estimates.get("SNIPS"))
        logged = result["on_policy_value"]
        online_diff = online.get(variant, float("nan")) - online.get(control, float("nan"))
        if chosen is None:  # SNIPS alone, without support in the control's log
            lines.append(f"OPE {variant} from the {control} log: undefined (the log never shows what it would choose)")
            continue
        estimate, interval = chosen["value"], (chosen.get("ci_low"), chosen.get("ci_high"))
        check = ope_sign_check(estimate, interval, logged, online_diff)
        counts.record("ope", **{variant: {"estimate": estimate, "estimator": chosen["estimator"],
                                          "interval": list(interval), "control_logged_value": logged,
                                          "online_ctr_difference": online_diff, "sign_agrees": check.agrees,
                                          "sign_established": check.established}})
        lines.append(f"OPE {variant} from the {control} log: {estimate:.4f} [{num(interval[0], 4)}, {num(interval[1], 4)}] "
                     f"vs {control}'s logged {logged:.4f} (slot-0 reward); online CTR difference {online_diff:+.4f}: "
                     f"sign {check.verdict}")
    return "\n      ".join(lines)


def verdict_line(experiment: dict[str, Any]) -> str:
    """The report's first-screen verdict, from the server's live analysis."""
    from streamrec.report.rundir import parse_analysis
    from streamrec.report.verdict import decide

    analysis = experiment.get("analysis")
    if not analysis:
        return f"no analysis ({experiment.get('analysis_note')})"
    definition = experiment.get("experiment") or {}
    verdict = decide(parse_analysis(analysis),
                     definition.get("primary_metric", "ctr"), float(definition.get("alpha", 0.05)))
    srm = "sample ratio mismatch!" if verdict.srm_detected else "no sample ratio mismatch"
    requests = ", ".join(f"{name} {v['requests']}" for name, v in analysis["variants"].items())
    return f"{verdict.headline} ({srm}; requests: {requests})"


# -- the demo ------------------------------------------------------------------------------------


# What the demo derives from the log. The embedded broker is memory-only, so every demo starts with
# an empty log: state derived from an earlier log (offsets, features, models) would not match it.
DERIVED_STATE = ("bandit", "feast", "lake", "pipeline", "registry")


def reset_derived_state(settings: Settings) -> list[str]:
    removed = []
    for name in DERIVED_STATE:
        path = settings.data.state_dir / name
        if path.exists():
            shutil.rmtree(path)
            removed.append(name)
    return removed


def prepare_run_dir(settings: Settings, opts: DemoOptions) -> Path:
    run_dir = opts.run_dir or settings.data.demo_dir
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    return run_dir


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, default=str))


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def run_demo(settings: Settings, opts: DemoOptions | None = None) -> int:
    opts = opts or DemoOptions()
    started_at, started = datetime.now(timezone.utc), time.monotonic()
    run_dir = prepare_run_dir(settings, opts)
    counts = StageCounts()
    ok = True
    pipeline = PipelineProcess(settings, run_dir)
    retrainer: RetrainWatcher | None = None
    watcher: threading.Thread | None = None
    retrain_stop = threading.Event()
    retrains: list[dict[str, Any]] = []
    experiment_name = "bundle_policy_v1"
    if local_stack.status(settings).get("ray") == "running":
        raise local_stack.StackError("a local stack is already running: `streamrec down` first (the demo starts its own)")
    # SIGTERM (kill, a CI timeout) unwinds like Ctrl-C, so the `finally` below stops what it started.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        say("1/7", "starting the embedded stack (tansu broker, Ray, Serve: collector + recommender) ...")
        removed = reset_derived_state(settings)
        if removed:
            detail(f"reset state derived from an earlier (memory-only) log: {', '.join(removed)}")
        for name, state in local_stack.up(settings).items():
            detail(f"{name}: {state}")

        from streamrec.simulation.shoppers import ShopperModel, add_oracle_rewards, split_shoppers, write_jsonl

        rows = read_taobao_rows(settings.data.taobao_csv)
        category_of = {r.item_id: r.category_id for r in rows}
        history, shoppers = split_shoppers(taobao_events(rows), opts.cut)
        history = history[: opts.history_limit or None]
        known = {e["user_id"] for e in history}
        shoppers = [s for s in shoppers if s.user_id in known][: opts.shoppers or None]
        say("2/7", f"replaying {len(history):,} real Taobao events before {opts.cut.date()} through the collector ...")
        replay = replay_history(settings, history)
        detail(replay.as_text())
        counts.record("replay", events=len(history), accepted=replay.accepted, rejected=replay.rejected)
        accepted_ids = set(replay.accepted_event_ids)

        say("3/7", "feature pipeline: `streamrec pipeline run --follow` (Kafka -> Beam -> Feast + lake) ...")
        from features.repo import apply_feature_repo

        apply_feature_repo(settings)
        pipeline.start()
        pipeline.wait_caught_up(settings)
        batches = pipeline.batches()
        detail(f"caught up after {len(batches)} micro-batches: {sum(b['records'] for b in batches):,} events in, "
               f"{sum(b['features_written'] for b in batches):,} feature rows, DLQ {sum(b['dlq'] for b in batches)}")
        online = OnlineFeatures(settings)
        popular_item = Counter(e.get("item_id") for e in history if "item_id" in e).most_common(1)[0][0]

        models: list[dict[str, Any]] = []
        if opts.train:
            say("4/7", "training on the event lake with Ray Train and registering (LightGCN retrieval, SASRec ranking, "
                       "CrossCBR on bundles mined from the lake) ...")
            configs = Path(__file__).resolve().parents[1] / "ray_jobs" / "configs"
            for model, serve_as in (("lightgcn", "item"), ("sasrec", "ranker"), ("crosscbr", "bundle")):
                result = train_model(settings, model, configs / f"{model}_lake.yaml", serve_as, opts.epochs, run_dir / "training.log")
                models.append(result)
                detail(f"{model}: registered {result['name']}@{result['version']} in {result['seconds']}s; "
                       + ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items()
                                   if k.startswith("test/") and isinstance(v, float))
                       + f" ({result['metrics'].get('test/protocol', 'protocol not recorded')})")
            # /v1/recommendations names the item model and the ranker; the bundle model shows in bundle reasons.
            source = wait_for_models_in_serving(settings, shoppers[0].user_id if shoppers else "0",
                                                [m["version"] for m in models if m["model"] != "crosscbr"])
            detail(f"serving hot-loaded it: /v1/recommendations source = {source}")
        else:
            say("4/7", "training skipped (--no-train): serving uses its cold-start fallbacks")
        counts.record("training", models=models)

        say("5/7", f"{len(shoppers)} simulated shoppers (their real later events) through experiment {experiment_name} ...")
        visits = sum(min(opts.steps_per_shopper, len(s.future_events)) for s in shoppers)
        if models and opts.retrain_after > 0:
            from ray_jobs.retrain import RetrainRecord, lake_position, save_record

            # The models above were trained on the lake up to here: the trigger counts from it.
            save_record(settings, RetrainRecord(lake_position(settings), time.time()))
            # ~2.6 events per visit (the organic event and the clicks / purchases on what was shown).
            threshold = max(int(opts.retrain_after * visits * 2.6), 100)
            retrainer = RetrainWatcher(settings, run_dir, threshold, opts.epochs)
            retrainer.start()
            detail(f"retrain trigger watching: a retrain is due after {threshold:,} new events in the lake "
                   f"(`streamrec retrain --watch`, log {retrainer.log.name})")
            watcher = threading.Thread(target=watch_for_retrained_models, daemon=True, args=(
                settings, {m["name"]: m["version"] for m in models if m["model"] in {j.model for j in settings.retrain.jobs}},
                shoppers[0].user_id, retrain_stop, retrains, 1200.0))
            watcher.start()
        shopper_run, freshness, faults = asyncio.run(
            run_shopper_phase(settings, shoppers, category_of, opts, experiment_name, online, popular_item, pipeline)
        )
        if watcher is not None:
            traffic_ended = time.time()
            watcher.join(timeout=900)  # a retrain in flight finishes (and serves) before the stack stops
            for r in retrains:
                r["during_traffic"] = r["serving_at"] <= traffic_ended
                detail(f"retrained models serving {'mid-traffic' if r['during_traffic'] else 'after the traffic'}: "
                       + ", ".join(f"{k}@{v}" for k, v in r["versions"].items()))
            if not retrains:
                counts.notes.append("the mid-traffic retrain did not reach serving (see retrain.log)")
        accepted_ids |= shopper_run.accepted_event_ids
        bundle_items = {b: items for r in shopper_run.records if r["endpoint"] == "bundles"
                        for b, items in zip(r["shown"], r.get("shown_items", []))}
        candidates = logged_candidates(settings, experiment_name)
        add_oracle_rewards(shopper_run.records, {s.user_id: s for s in shoppers}, bundle_items, category_of, ShopperModel(),
                           candidates)
        detail(f"oracle rewards: {len(candidates):,} logged candidate sets read back from the impressions")
        write_jsonl(run_dir / "shoppers.jsonl", shopper_run.records)
        write_json(run_dir / "freshness.json", {"samples_s": freshness})
        latency: dict[str, list[float]] = {}
        for r in shopper_run.records:
            latency.setdefault(r["endpoint"], []).append(r["latency_ms"])
        write_json(run_dir / "latency.json", latency)
        counts.record("shoppers", shoppers=len(shoppers), requests=len(shopper_run.records),
                      events_sent=shopper_run.events_sent, events_accepted=shopper_run.events_accepted,
                      feedback_events=shopper_run.feedback_events, errors=shopper_run.errors, faults=faults)
        for f in faults:
            counts.notes.append(f"fault injected: {f}")
        detail(f"{len(shopper_run.records):,} requests, {shopper_run.events_accepted:,} events accepted "
               f"({shopper_run.feedback_events:,} clicks/purchases), errors {shopper_run.errors or 'none'}")
        if freshness:
            s = sorted(freshness)
            detail(f"feature freshness (ack -> Feast online): p50 {s[len(s) // 2]:.2f}s, max {s[-1]:.2f}s over {len(s)} probes")

        say("6/7", "accounting for every event, reading the experiment out ...")
        pipeline.wait_caught_up(settings)
        learner = wait_learner_applied(settings)
        counts.record("pipeline", batches=len(pipeline.batches()), restarts=pipeline.restarts,
                      events_in=sum(b["records"] for b in pipeline.batches()),
                      features_written=sum(b["features_written"] for b in pipeline.batches()))
        counts.record("learner", **learner.get("counters", {}), restored=learner.get("restored"))
        accounted = account_events(settings, accepted_ids, counts)
        ok = ok and accounted
        acc = counts.stages["accounting"]
        detail(f"accepted by the collector {acc['accepted_by_collector']:,}; missing in Kafka {acc['missing_in_kafka']}, "
               f"missing in the lake {acc['missing_in_lake']}; learner applied {learner.get('counters', {}).get('feedback_applied', 0):,} "
               f"feedback events, {learner.get('counters', {}).get('feedback_duplicates', 0)} duplicates ignored")
        experiment = read_experiment(settings, experiment_name)
        write_json(run_dir / "experiment.json", experiment)
        detail(f"experiment {experiment_name}: {verdict_line(experiment)}")
        detail(run_ope(settings, experiment, run_dir, counts))
    except Exception:
        ok = False
        raise
    finally:
        retrain_stop.set()
        if retrainer is not None:
            retrainer.stop()
        pipeline.stop()
        write_json(run_dir / "run.json", {
            "started_at": started_at.isoformat(), "finished_at": datetime.now(timezone.utc).isoformat(),
            "experiment": experiment_name, "registry": settings.registry_root,
            "stages": counts.stages, "notes": counts.notes, "ok": ok, "retrains": retrains, "options": {k: str(v) for k, v in asdict(opts).items()},
        })
        report = write_report(run_dir)
        if not opts.keep_running:
            say("7/7", "stopping the stack ...")
            for name, state in local_stack.down(settings).items():
                detail(f"{name}: {state}")
    print(f"demo finished in {time.monotonic() - started:.0f}s: {'the loop closed' if ok else 'FAILED'}; report: {report}")
    if opts.keep_running and settings.storefront_served:
        print(f"the stack is still up: shop as a shopper at {settings.collector.base_url}/shop/ "
              "(its events, bundles and feedback go through the same loop); `streamrec down` stops it")
    return 0 if ok else 1


def write_report(run_dir: Path) -> str:
    try:
        from streamrec.report import build_report
    except ImportError as exc:
        return f"not written ({exc})"
    try:
        return str(build_report(run_dir))
    except Exception as exc:  # noqa: BLE001 - the report must not hide the demo's own outcome
        return f"not written ({type(exc).__name__}: {exc})"
