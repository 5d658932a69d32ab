"""`streamrec report`: a synthetic but realistic run directory rendered to one HTML page.

The experiment analysis in the run directory is the real one (``analyze_experiment`` on the
shoppers' outcomes, serialised by the recommender's own ``_jsonable``), and the trained models sit
in a real ``ModelRegistry``, so the report is tested against the shapes production writes.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from features.registry import ModelRegistry
from serving.app.api import _experiment_definition, _jsonable
from serving.experiments import Experiment, RequestOutcome, analyze_experiment
from streamrec.cli import main as cli_main
from streamrec.report import build_report, load_run, plot_training_curves
from streamrec.report.render import metric_effect, num, p_value, pct
from streamrec.report.verdict import decide

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
EXPERIMENT = Experiment.model_validate({
    "name": "bundle_policy_v1", "salt": "s1", "control": "popularity", "primary_metric": "ctr", "alpha": 0.05,
    "variants": [
        {"name": "popularity", "policy": "popularity", "share": 0.34},
        {"name": "linucb", "policy": "linucb", "share": 0.33},
        {"name": "thompson", "policy": "linear_thompson", "share": 0.33},
    ],
    "guardrails": [{"metric": "ctr", "alpha": 0.01, "min_requests": 200, "max_relative_drop": 0.05}],
})
POLICY = {v.name: v.policy for v in EXPERIMENT.variants}
# True click rates of the simulated shoppers: linucb is clearly better, thompson close to control.
TRUE_CTR = {"popularity": 0.10, "linucb": 0.16, "thompson": 0.105}
N_SHOPPERS = 3000
T0 = 1_700_000_000.0


# -- the synthetic run -------------------------------------------------------------------------

def make_shoppers(rng: np.random.Generator, ctr: dict[str, float], n: int = N_SHOPPERS) -> list[dict[str, Any]]:
    names = [v.name for v in EXPERIMENT.variants]
    shares = [v.share for v in EXPERIMENT.variants]
    rows = []
    for i in range(n):
        base = {"t": T0 + i * 0.4 + float(rng.random()), "user_id": f"u{int(rng.integers(0, 800))}", "step": i,
                "request_id": f"r{i}"}
        if rng.random() < 0.2:
            # /v1/recommendations, outside the A/B test, as streamrec/simulation/shoppers.py logs it
            shown = [f"i{int(x)}" for x in rng.choice(5000, size=5, replace=False)]
            clicked = shown[:1] if rng.random() < 0.05 else []
            rows.append({**base, "experiment": None, "variant": "lightgcn", "policy": None,
                         "endpoint": "recommendations", "latency_ms": float(rng.lognormal(3.0, 0.3)),
                         "shown": shown, "clicked": clicked, "purchased": [], "revenue": 0.0,
                         "reward": float(bool(clicked)), "oracle_reward": None})
            continue
        variant = str(rng.choice(names, p=shares))
        shown = [f"b{int(x)}" for x in rng.choice(500, size=3, replace=False)]
        clicked = shown[:1] if rng.random() < ctr[variant] else []
        purchased = clicked if clicked and rng.random() < 0.3 else []
        revenue = float(round(rng.lognormal(3.0, 0.5), 2)) if purchased else 0.0
        reward = float(len(clicked) + len(purchased))
        rows.append({
            **base, "experiment": EXPERIMENT.name, "variant": variant, "policy": POLICY[variant],
            "endpoint": "bundles", "latency_ms": float(rng.lognormal(3.5, 0.4)), "shown": shown,
            "shown_items": [["x", "y"] for _ in shown], "clicked": clicked, "purchased": purchased,
            "revenue": revenue, "reward": reward,
            # the simulator has no oracle for a few shoppers
            "oracle_reward": None if rng.random() < 0.05 else reward + float(rng.random() < 0.5),
        })
        oracle = rows[-1]["oracle_reward"]
        if oracle is not None and i % 10:  # a few impressions logged no candidate items
            rows[-1]["candidate_reward"] = reward + (oracle - reward) * (0.25 if i < n // 2 else 0.75)
    return rows


def in_experiment(shoppers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in shoppers if s["experiment"] == EXPERIMENT.name]


def outcomes_of(shoppers: list[dict[str, Any]]) -> list[RequestOutcome]:
    return [RequestOutcome(s["variant"], bool(s["clicked"]), bool(s["purchased"]), s["revenue"])
            for s in in_experiment(shoppers)]


WEIGHTS = {"arm": {"in_history": 0.6821, "novelty": -0.2513}, "user": {"views_24h": 0.1}, "bias": 0.05}


def experiment_body(shoppers: list[dict[str, Any]], with_analysis: bool = True) -> dict[str, Any]:
    """What GET /v1/experiments/{name} returns (serving/app/api.py::experiment_report)."""
    report = analyze_experiment(EXPERIMENT, outcomes_of(shoppers)) if with_analysis else None
    return {
        "experiment": _experiment_definition(EXPERIMENT),
        "live": {v.name: {"decisions": 10, "feature_weights": WEIGHTS if v.policy != "popularity" else None}
                 for v in EXPERIMENT.variants},
        "analysis": _jsonable(report) if report is not None else None,
        "analysis_note": None if report is not None else "no requests yet",
    }


HISTORY = [
    {"epoch": e, "train_loss": 0.69 * 0.8**e, "valid/recall@20": 0.02 + 0.01 * e, "valid/ndcg@20": 0.01 + 0.004 * e,
     "best_epoch": e, "train_time_s": 3.0}
    for e in range(5)
]
LIGHTGCN_METRICS = {"epoch": 4, "best_epoch": 4, "valid/recall@20": 0.0612, "test/recall@20": 0.0587,
                    "test/ndcg@20": 0.0331, "test/protocol": "full ranking, train items excluded",
                    "test/n_users": 1234, "valid/protocol": "full ranking", "valid/n_users": 1234}
SASREC_METRICS = {"epoch": 4, "best_epoch": 3, "test/hit_rate@10": 0.4321, "test/protocol": "1 + 100 sampled",
                  "test/n_users": 999}


def make_registry(root: Path, run_dir: Path) -> None:
    reg = ModelRegistry(root)
    emb = {"item": np.zeros((4, 2), dtype=np.float32)}
    reg.register("lightgcn", embeddings=emb, metrics=LIGHTGCN_METRICS, data_snapshot_id="sha256:x",
                 config={"model": "lightgcn", "train": {"monitor": "recall@20"}}, extra={"history": HISTORY})
    reg.register("sasrec", embeddings=emb, metrics=SASREC_METRICS, data_snapshot_id="sha256:y",
                 config={"model": "sasrec", "train": {"monitor": "ndcg@20"}})
    (run_dir / "history").mkdir()
    (run_dir / "history" / "sasrec.json").write_text(json.dumps(HISTORY + [{"epoch": 4, "done": True}]))
    reg.register("popularity", embeddings=emb, metrics={"test/recall@20": 0.0101}, data_snapshot_id="sha256:z",
                 config={"model": "popularity"})


PIPELINE = [
    {"t": T0 + 5 * i, "records": 1000 + 10 * i, "valid": 980 + 10 * i, "duplicates": 12, "dlq": 8,
     "dlq_reasons": {"schema_violation": 5, "late_event": 3} if i % 2 == 0 else {"schema_violation": 8},
     "features_written": 2000 + i, "lag": 500 - 50 * i, "elapsed_s": 2.0 + 0.1 * i}
    for i in range(10)
]
OPE = {"target_policy": "linucb", "logging_policy": "popularity", "n": 1020,
       "estimates": [{"estimator": "IPS", "value": 0.151, "ci_low": 0.121, "ci_high": 0.183},
                     {"estimator": "SNIPS", "value": 0.147, "ci_low": 0.129, "ci_high": 0.166},
                     {"estimator": "DR", "value": 0.158, "ci_low": 0.144, "ci_high": 0.171}],
       "on_policy_value": 0.1555}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("demo")
    rng = np.random.default_rng(7)
    shoppers = make_shoppers(rng, TRUE_CTR)
    write_jsonl(d / "shoppers.jsonl", shoppers)
    (d / "experiment.json").write_text(json.dumps(experiment_body(shoppers)))
    (d / "ope.json").write_text(json.dumps(OPE))
    (d / "freshness.json").write_text(json.dumps({"samples_s": rng.gamma(2.0, 1.5, size=400).tolist()}))
    write_jsonl(d / "pipeline.jsonl", PIPELINE)
    make_registry(d / "registry", d)
    (d / "run.json").write_text(json.dumps({
        "started_at": "2024-05-01T10:00:00+00:00", "finished_at": "2024-05-01T10:21:40+00:00",
        "experiment": EXPERIMENT.name, "registry": str(d / "registry"),
        "stages": {"replay": {"events": 62_767, "accepted": 62_767, "rejected": 0},
                   "training": {"models": [{"name": "lightgcn", "metrics": {"test/recall@20": 0.0587}}]},
                   "shoppers": {"requests": N_SHOPPERS},
                   "ope": {"linucb": {"estimate": 0.4123, "estimator": "DR", "control_logged_value": 0.2524,
                                      "online_ctr_difference": 0.1, "sign_agrees": True,
                                      "interval": [0.3012, 0.5234], "sign_established": True},
                            "thompson": {"estimate": 0.2011, "estimator": "DR", "control_logged_value": 0.2524,
                                         "online_ctr_difference": 0.05, "sign_agrees": False}}},
        "retrains": [{"serving_at": 1714557900.0, "versions": {"lightgcn": "v2"}, "during_traffic": True}],
        "notes": ["fault injected: killed the pipeline process once"], "ok": True, "options": {"epochs": "5"},
    }))
    return d


@pytest.fixture(scope="module")
def page(run_dir: Path) -> str:
    return build_report(run_dir).read_text()


def section_text(page: str, number: int) -> str:
    """Visible text of section ``number`` (tags stripped, entities decoded)."""
    match = re.search(rf'<section id="s{number}">(.*?)</section>', page, re.S)
    assert match, f"section {number} missing"
    return html.unescape(re.sub(r"<[^>]+>", " ", match.group(1)))


def verdict_text(page: str) -> str:
    match = re.search(r'<div class="verdict (\w+)" id="verdict">(.*?)<section id="s1">', page, re.S)
    assert match
    return match.group(1) + " " + html.unescape(re.sub(r"<[^>]+>", " ", match.group(2)))


def images(fragment: str) -> list[Image.Image]:
    out = []
    for b64 in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', fragment):
        raw = base64.b64decode(b64)
        assert raw.startswith(b"\x89PNG\r\n\x1a\n")
        img = Image.open(io.BytesIO(raw))
        img.verify()  # checksums and structure of the whole file
        out.append(Image.open(io.BytesIO(raw)))
    return out


# -- the full report ---------------------------------------------------------------------------

def test_verdict_box_names_the_winner_with_the_real_statistics(run_dir: Path, page: str) -> None:
    shoppers = [json.loads(line) for line in (run_dir / "shoppers.jsonl").read_text().splitlines()]
    report = analyze_experiment(EXPERIMENT, outcomes_of(shoppers))
    test = report.comparisons["linucb"]["ctr"]
    assert test.p_value < 0.05 / 2 and test.effect > 0  # the data really has a winner
    text = verdict_text(page)
    assert text.startswith("winner ")
    assert "Winner: linucb" in text
    assert metric_effect("ctr", test.effect) in text
    assert f"[{metric_effect('ctr', test.ci_low)}, {metric_effect('ctr', test.ci_high)}]" in text
    assert f"p = {p_value(test.p_value)}" in text
    assert "Bonferroni" in text and "SRM check passed" in text
    assert f"chi-square p = {p_value(report.srm.p_value)}" in text
    assert page.index('id="verdict"') < page.index('<section id="s1">')  # first thing after the title


def test_per_variant_table_matches_the_analysis(run_dir: Path, page: str) -> None:
    shoppers = [json.loads(line) for line in (run_dir / "shoppers.jsonl").read_text().splitlines()]
    report = analyze_experiment(EXPERIMENT, outcomes_of(shoppers))
    text = section_text(page, 1)
    for name, r in report.variants.items():
        assert f"{r.requests:,}" in text
        assert f"{pct(r.ctr.value)} [{pct(r.ctr.ci_low)}, {pct(r.ctr.ci_high)}]" in text
        assert pct(r.purchase_rate.value) in text
        assert num(r.revenue_per_request.value) in text
    assert sum(r.requests for r in report.variants.values()) == len(in_experiment(shoppers)) > 0.7 * N_SHOPPERS
    assert "lightgcn" not in text  # recommendations are not part of the experiment
    assert "Guardrails" in text and "continue" in text
    assert len(images(page.split('<section id="s1">')[1].split("</section>")[0])) == 1


def test_rates_and_regret_sections_match_the_shopper_log(run_dir: Path, page: str) -> None:
    shoppers = [json.loads(line) for line in (run_dir / "shoppers.jsonl").read_text().splitlines()]
    rates, regret = section_text(page, 2), section_text(page, 3)
    for variant in POLICY:
        rows = [s for s in in_experiment(shoppers) if s["variant"] == variant]
        clicks = sum(1 for s in rows if s["clicked"])
        assert f"{pct(clicks / len(rows))} [" in rates
        reward = sum(s["reward"] for s in rows)
        with_oracle = [s for s in rows if s["oracle_reward"] is not None]
        assert 0 < len(with_oracle) < len(rows)
        regret_sum = sum(s["oracle_reward"] - s["reward"] for s in with_oracle)
        assert num(reward) in regret and num(regret_sum) in regret
        assert num(regret_sum / len(with_oracle), 4) in regret
        regrets = [s["oracle_reward"] - s["reward"] for s in with_oracle]
        third = len(regrets) // 3
        assert num(float(np.mean(regrets[:third])), 4) in regret and num(float(np.mean(regrets[-third:])), 4) in regret
    assert "lightgcn" not in rates and "lightgcn" not in regret
    # the regret split into what the candidates missed and what the choice missed
    assert "Where the regret is" in regret
    for variant in POLICY:
        split = sorted((s for s in in_experiment(shoppers) if s["variant"] == variant and s.get("candidate_reward") is not None),
                       key=lambda s: s["t"])
        assert 0 < len(split) and f"{len(split):,}" in regret
        third = len(split) // 3
        choice = [s["candidate_reward"] - s["reward"] for s in split]
        missed = [s["oracle_reward"] - s["candidate_reward"] for s in split]
        total_first = float(np.mean([s["oracle_reward"] - s["reward"] for s in split[:third]]))
        for values in (choice, missed):
            assert num(float(np.mean(values[:third])), 4) in regret and num(float(np.mean(values[-third:])), 4) in regret
        assert num(float(np.mean(missed[-third:])) / total_first, 2) in regret
    # what each bandit learned to trust, by name
    assert "What each bandit learned to trust" in regret and "in_history" in regret and num(0.6821, 3) in regret


def test_ope_latency_freshness_pipeline_and_training_numbers(run_dir: Path, page: str) -> None:
    ope = section_text(page, 4)
    assert "Off-policy vs online, per bandit variant" in ope and "DR 0.4123" in ope
    flat = " ".join(ope.split())
    # The interval and whether it settles the sign; a run recorded before either was kept says so.
    assert "DR 0.4123 [0.3012, 0.5234] 0.2524" in flat and "sign established" in flat
    assert "DR 0.2011 not recorded 0.2524" in flat
    for e in OPE["estimates"]:
        assert f"{e['estimator']} {num(e['value'], 4)} [{num(e['ci_low'], 4)}, {num(e['ci_high'], 4)}]" in " ".join(ope.split())
    assert num(OPE["on_policy_value"], 4) in ope

    latency = " ".join(section_text(page, 5).split())
    shoppers = [json.loads(line) for line in (run_dir / "shoppers.jsonl").read_text().splitlines()]
    bundles = np.array([s["latency_ms"] for s in shoppers if s["endpoint"] == "bundles"])
    assert (f"bundles {len(bundles):,} {num(np.percentile(bundles, 50), 1)} ms {num(np.percentile(bundles, 95), 1)} ms "
            f"{num(np.percentile(bundles, 99), 1)} ms") in latency
    recommendations = [s["latency_ms"] for s in shoppers if s["endpoint"] == "recommendations"]
    assert f"recommendations {len(recommendations):,} {num(np.percentile(recommendations, 50), 1)} ms" in latency
    assert "Source: shoppers.jsonl" in latency
    fresh = np.array(json.loads((run_dir / "freshness.json").read_text())["samples_s"])
    assert f"{num(np.percentile(fresh, 50), 2)} s {num(np.percentile(fresh, 95), 2)} s" in latency

    pipeline = " ".join(section_text(page, 7).split())
    records = sum(b["records"] for b in PIPELINE)
    assert f"{len(PIPELINE)} {records:,}" in pipeline
    assert num(records / sum(b["elapsed_s"] for b in PIPELINE), 1) in pipeline
    assert "schema_violation 65" in pipeline and "late_event 15" in pipeline  # 5*5 + 5*8, 5*3

    training = " ".join(section_text(page, 6).split())
    assert "lightgcn test recall@20 0.0587 full ranking, train items excluded 1234" in training
    assert "sasrec test hit_rate@10 0.4321" in training
    assert "registry manifest" in training and "history/sasrec.json" in training
    assert "Training curves of popularity" in training and "not recorded in this run" in training


def test_run_stages_notes_and_end_of_run_check(page: str) -> None:
    assert "the demo's end-of-run check passed" in html.unescape(page.split('id="verdict"')[0])
    stages = " ".join(section_text(page, 8).split())
    assert "replay events=62,767; accepted=62,767; rejected=0" in stages
    assert 'models=[{"name":"lightgcn","metrics":{"test/recall@20":0.0587}}]' in stages
    assert f"requests={N_SHOPPERS:,}" in stages and "killed the pipeline process once" in stages


def test_every_plot_is_a_valid_png(page: str) -> None:
    imgs = images(page)
    # variants, rates, regret, learning curve, OPE, freshness, latency, 2 training curves, pipeline, DLQ
    assert len(imgs) == 11
    for img in imgs:
        assert img.format == "PNG" and img.width >= 500 and img.height >= 100
        extrema = img.convert("L").getextrema()
        assert extrema[0] < 128 < extrema[1]  # something drawn on a light background


def test_page_is_self_contained(page: str) -> None:
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "<script" not in page and "@import" not in page and "url(" not in page


# -- missing, unreadable and fallback inputs ---------------------------------------------------

def test_empty_run_dir_says_not_recorded_everywhere(tmp_path: Path) -> None:
    page = build_report(tmp_path, tmp_path / "out" / "r.html").read_text()
    assert verdict_text(page).startswith("no_data ")
    assert "experiment.json was not recorded in this run" in verdict_text(page)
    for number in range(1, 9):
        assert "not recorded in this run" in section_text(page, number)
    assert not images(page)


def test_unreadable_files_are_reported_and_the_rest_renders(run_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    (d / "ope.json").write_text("{not json")
    with (d / "pipeline.jsonl").open("a") as f:
        f.write('{"t": 1, "records": "many"}\n{"t": 2, "rec')  # a bad record and a half-written line
    (d / "freshness.json").write_text(json.dumps({"samples": [1.0]}))
    page = build_report(d).read_text()
    assert "ope.json could not be read: not valid JSON" in section_text(page, 4)
    assert "2 malformed line(s) skipped" in section_text(page, 7)
    assert f"{len(PIPELINE)} " in section_text(page, 7)  # the valid batches still count
    assert "freshness.json could not be read" in section_text(page, 5)
    assert "Winner: linucb" in verdict_text(page)


def test_server_without_analysis_falls_back_to_the_shopper_log(run_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir()
    shutil.copy(run_dir / "shoppers.jsonl", d)
    shoppers = [json.loads(line) for line in (d / "shoppers.jsonl").read_text().splitlines()]
    (d / "experiment.json").write_text(json.dumps(experiment_body(shoppers, with_analysis=False)))
    run = load_run(d)
    assert run.experiment is not None and run.experiment.analysis_source == "shoppers.jsonl"
    text = verdict_text(build_report(d).read_text())
    assert "Winner: linucb" in text and "computed from shoppers.jsonl" in text and "no requests yet" in text


def test_server_without_analysis_and_no_shoppers_is_no_data(tmp_path: Path) -> None:
    (tmp_path / "experiment.json").write_text(json.dumps(experiment_body([], with_analysis=False)))
    text = verdict_text(build_report(tmp_path).read_text())
    assert text.startswith("no_data ") and "no requests yet" in text


# -- the decision rule -------------------------------------------------------------------------

def fixed_outcomes(counts: dict[str, tuple[int, int]]) -> list[RequestOutcome]:
    """Exactly ``clicks`` clicked requests out of ``n`` per variant."""
    return [RequestOutcome(v, i < clicks, False, 0.0) for v, (n, clicks) in counts.items() for i in range(n)]


@pytest.mark.parametrize(
    ("counts", "kind", "headline"),
    [
        ({"popularity": (1000, 100), "linucb": (1000, 104), "thompson": (1000, 98)}, "no_difference",
         "No significant difference in CTR"),
        ({"popularity": (1000, 100), "linucb": (1000, 160), "thompson": (1000, 101)}, "winner", "Winner: linucb"),
        ({"popularity": (1000, 150), "linucb": (1000, 100), "thompson": (1000, 149)}, "stopped",
         "Stopped by guardrail: linucb"),
        # p about 0.04 for linucb: significant alone, not after Bonferroni over two comparisons
        ({"popularity": (2000, 200), "linucb": (2000, 240), "thompson": (2000, 200)}, "no_difference",
         "No significant difference"),
    ],
)
def test_decision_rule(counts: dict[str, tuple[int, int]], kind: str, headline: str) -> None:
    report = analyze_experiment(EXPERIMENT, fixed_outcomes(counts))
    verdict = decide(report, "ctr", 0.05)
    assert verdict.kind == kind and verdict.headline.startswith(headline)
    assert verdict.threshold == pytest.approx(0.025)


def test_control_wins_without_guardrail_and_srm_is_flagged() -> None:
    no_guardrail = EXPERIMENT.model_copy(update={"guardrails": ()})
    report = analyze_experiment(no_guardrail, fixed_outcomes(
        {"popularity": (1500, 150), "linucb": (1000, 60), "thompson": (1000, 99)}))
    verdict = decide(report, "ctr", 0.05)
    assert verdict.kind == "control_wins" and verdict.deciding is not None and verdict.deciding.variant == "linucb"
    assert verdict.srm_detected and verdict.srm_p_value is not None and verdict.srm_p_value < 0.001
    assert math.isclose(verdict.deciding.relative_lift, (0.06 - 0.10) / 0.10)


# -- plots, CLI, browser -----------------------------------------------------------------------

def test_plot_training_curves_writes_a_png(tmp_path: Path) -> None:
    out = plot_training_curves(HISTORY, tmp_path / "sub" / "curves.png", "recall@20", "lightgcn")
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 400


def test_cli_report_defaults_to_the_demo_dir(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from streamrec.runtime.config import reload_settings

    shutil.copytree(run_dir, tmp_path / "demo")
    monkeypatch.setenv("STREAMREC_DATA__STATE_DIR", str(tmp_path))
    reload_settings()
    try:
        assert cli_main(["report"]) == 0
        assert (tmp_path / "demo" / "report.html").is_file()
        assert cli_main(["report", "--run-dir", str(run_dir), "--out", str(tmp_path / "x.html")]) == 0
        assert "Winner: linucb" in (tmp_path / "x.html").read_text()
        assert cli_main(["report", "--run-dir", str(tmp_path / "nope")]) == 2
        assert "does not exist" in capsys.readouterr().err
    finally:
        monkeypatch.delenv("STREAMREC_DATA__STATE_DIR")
        reload_settings()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make system-deps installs it)")
def test_headless_chromium_renders_the_report(run_dir: Path, page: str, tmp_path: Path) -> None:
    report = run_dir / "report.html"
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    subprocess.run([*base, f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri()],
                   check=True, capture_output=True, timeout=180)
    with Image.open(shot) as img:
        assert img.size == (1280, 2000)
        grey = img.convert("L")
        assert grey.getextrema()[0] < 100  # text and plots drawn, not a blank page
        # the verdict box (green for a winner) is on the first screen
        top = img.convert("RGB").crop((0, 0, 1280, 400))
        assert any(g > r + 20 and g > b + 10 for r, g, b in top.getdata())
    dom = subprocess.run([*base, "--dump-dom", report.as_uri()], check=True, capture_output=True, text=True,
                         timeout=180).stdout
    assert 'id="verdict"' in dom and "Winner: linucb" in dom


def test_an_undefined_ope_estimate_renders_as_not_available(run_dir: Path, tmp_path: Path) -> None:
    # `streamrec ope` writes null for SNIPS when the target never chose an action the log shows.
    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    undefined = {**OPE, "estimates": [{"estimator": "SNIPS", "value": None, "ci_low": None, "ci_high": None},
                                      OPE["estimates"][2]]}
    (d / "ope.json").write_text(json.dumps(undefined))
    ope = " ".join(section_text(build_report(d).read_text(), 4).split())
    assert "SNIPS n/a [n/a, n/a] n/a" in ope
    assert f"DR {num(0.158, 4)}" in ope and "could not be read" not in ope
