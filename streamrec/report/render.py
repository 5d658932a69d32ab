"""Render a loaded run as one self-contained HTML page (inline CSS, plots as base64 PNG).

Nothing is fetched when the page opens: no scripts, stylesheets or fonts from elsewhere, so the
file reads the same offline, attached to a ticket, or years later. Every value from the run is
escaped with ``html.escape``; the page's only markup is the fixed skeleton below.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeGuard

from serving.experiments.analysis import third_means
from streamrec.report import plots
from streamrec.report.rundir import (
    EXPERIMENT_FILE,
    FRESHNESS_FILE,
    HISTORY_DIR,
    LATENCY_FILE,
    OPE_FILE,
    PIPELINE_FILE,
    REGISTRY_KEY,
    RUN_FILE,
    SHOPPERS_FILE,
    RunData,
    TrainedModel,
    load_run,
)
from streamrec.report.series import by_variant, cumulative_rate, cumulative_sum, distribution, dlq_by_reason
from streamrec.report.verdict import Comparison, Verdict, decide, metric_label, no_data
from streamrec.runtime.files import write_atomically

__all__ = ["build_report", "render_html", "REPORT_FILE"]

REPORT_FILE = "report.html"
RATE_METRICS = ("ctr", "purchase_rate")
Row = Sequence[str]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
       max-width: 1040px; padding: 16px 24px 48px; color: #1d232a; line-height: 1.4; }
h1 { font-size: 1.5rem; margin: 0.2rem 0; } h2 { font-size: 1.2rem; margin-top: 2rem;
     border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
.meta { color: #57606a; font-size: 0.9rem; margin-bottom: 12px; }
.verdict { border-radius: 8px; padding: 14px 18px; margin: 10px 0 16px; border: 2px solid; }
.verdict .headline { font-size: 1.35rem; font-weight: 700; margin-bottom: 6px; }
.verdict ul { margin: 6px 0 0; padding-left: 20px; }
.winner { background: #e8f5e9; border-color: #2e7d32; } .control_wins { background: #e3f2fd; border-color: #1565c0; }
.no_difference { background: #f3f4f6; border-color: #6b7280; } .stopped { background: #fdecea; border-color: #c62828; }
.no_data { background: #fff8e1; border-color: #b28704; }
.srm-bad { color: #b00020; font-weight: 700; } .srm-ok { color: #2e7d32; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 0.9rem; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: right; }
th { background: #f6f8fa; } td { white-space: nowrap; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; display: block; margin: 8px 0; }
.missing { color: #8c6d00; background: #fff8e1; padding: 6px 10px; border-radius: 4px; }
.note { color: #57606a; font-size: 0.85rem; }
"""


# -- formatting --------------------------------------------------------------------------------

def _finite(x: float | None) -> TypeGuard[float]:
    return x is not None and math.isfinite(x)


def num(x: float | None, digits: int = 3) -> str:
    """A number with ``digits`` decimals, or "n/a"."""
    return f"{x:,.{digits}f}" if _finite(x) else "n/a"


def pct(x: float | None, digits: int = 2) -> str:
    return f"{100 * x:.{digits}f}%" if _finite(x) else "n/a"


def p_value(p: float | None) -> str:
    return f"{p:.3g}" if _finite(p) else "n/a"


def metric_value(metric: str, x: float | None) -> str:
    return pct(x) if metric in RATE_METRICS else num(x)


def metric_effect(metric: str, x: float | None) -> str:
    """A difference: percentage points for rates, plain units otherwise, always signed."""
    if not _finite(x):
        return "n/a"
    return f"{100 * x:+.2f} pp" if metric in RATE_METRICS else f"{x:+,.3f}"


def interval(metric: str, low: float | None, high: float | None, effect: bool = False) -> str:
    f = metric_effect if effect else metric_value
    return f"[{f(metric, low)}, {f(metric, high)}]"


# -- building blocks ---------------------------------------------------------------------------

def _e(text: Any) -> str:
    return html.escape(str(text))


def _table(headers: Row, rows: Iterable[Row]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _missing(what: str) -> str:
    return f'<p class="missing">{_e(what)}: not recorded in this run.</p>'


def _problem(data: RunData, name: str) -> str:
    why = data.problems.get(name)
    return f'<p class="missing">{_e(name)} could not be read: {_e(why)}</p>' if why else ""


def _section(number: int, title: str, body: str) -> str:
    return f'<section id="s{number}"><h2>{number}. {_e(title)}</h2>{body}</section>'


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


# -- 1. verdict --------------------------------------------------------------------------------

def _verdict(data: RunData) -> Verdict:
    record = data.experiment
    if record is None and EXPERIMENT_FILE in data.problems:
        return no_data(f"No experiment result: {EXPERIMENT_FILE} could not be read ({data.problems[EXPERIMENT_FILE]}).")
    if record is None:
        return no_data(f"No experiment result: {EXPERIMENT_FILE} was not recorded in this run.")
    if record.analysis is None:
        return no_data(f"No analysis yet: {record.analysis_note or 'the server returned none'}.")
    return decide(record.analysis, record.primary_metric, record.alpha)


def _comparison_line(v: Verdict, c: Comparison, control: str) -> str:
    lift = f" ({pct(c.relative_lift, 1)} relative)" if _finite(c.relative_lift) else ""
    return (f"{c.variant} vs {control}: {metric_label(c.metric)} {metric_value(c.metric, c.treatment_value)} vs "
            f"{metric_value(c.metric, c.control_value)}, difference {metric_effect(c.metric, c.effect)}{lift}, "
            f"{1 - v.alpha:.0%} CI {interval(c.metric, c.ci_low, c.ci_high, effect=True)}, p = {p_value(c.p_value)}")


def _verdict_box(v: Verdict, data: RunData) -> str:
    lines: list[str] = []
    report = data.experiment.analysis if data.experiment else None
    if report is not None:
        if v.deciding is not None:
            lines.append(_e(_comparison_line(v, v.deciding, report.control)))
        rule = f"significance level {v.threshold:.3g}"
        if len(report.comparisons) > 1:
            rule += f" (alpha {v.alpha:g} / {len(report.comparisons)} comparisons, Bonferroni)"
        lines.append(_e(f"Primary metric: {metric_label(v.metric)}; {rule}."))
        for g in v.stopped:
            lines.append(_e(f"Guardrail stopped {g.variant}: {g.reason}"))
        srm = (f'<span class="srm-bad">Sample ratio mismatch (chi-square p = {p_value(v.srm_p_value)}): '
               "traffic did not follow the configured split; treat these results as suspect.</span>"
               if v.srm_detected else
               f'<span class="srm-ok">SRM check passed</span> (chi-square p = {_e(p_value(v.srm_p_value))}: '
               "traffic split matches the configured shares).")
        lines.append(srm)
        if data.experiment and data.experiment.analysis_source == SHOPPERS_FILE:
            lines.append(_e(f"Analysis source: {data.experiment.analysis_note}."))
    items = "".join(f"<li>{line}</li>" for line in lines)
    return (f'<div class="verdict {v.kind}" id="verdict"><div class="headline">{_e(v.headline)}</div>'
            f"{'<ul>' + items + '</ul>' if items else ''}</div>")


def _variants_section(data: RunData, v: Verdict) -> str:
    record = data.experiment
    if record is None:
        return _problem(data, EXPERIMENT_FILE) or _missing(f"Per-variant results ({EXPERIMENT_FILE})")
    report = record.analysis
    if report is None:
        return _missing(f"Per-variant results ({record.analysis_note or 'no analysis'})")
    level = f"{1 - record.alpha:.0%}"
    shares = {str(x.get("name")): x for x in record.definition.get("variants", []) if isinstance(x, dict)}
    rows = []
    for name, r in report.variants.items():
        spec = shares.get(name, {})
        rows.append([
            name + (" (control)" if name == report.control else ""), str(spec.get("policy", "")),
            pct(spec.get("share"), 0) if "share" in spec else "n/a", f"{r.requests:,}",
            f"{pct(r.ctr.value)} {interval('ctr', r.ctr.ci_low, r.ctr.ci_high)}",
            f"{pct(r.purchase_rate.value)} {interval('purchase_rate', r.purchase_rate.ci_low, r.purchase_rate.ci_high)}",
            f"{num(r.revenue_per_request.value)} {interval('revenue_per_request', r.revenue_per_request.ci_low, r.revenue_per_request.ci_high)}",
        ])
    table = _table(["variant", "policy", "share", "requests", f"CTR [{level} CI]",
                    f"purchase rate [{level} CI]", f"revenue / request [{level} CI]"], rows)
    names = list(report.variants)
    est = [report.variants[n].metric(v.metric) for n in names]  # type: ignore[arg-type]
    figure = plots.variant_metric_figure(names, [e.value for e in est], [e.ci_low for e in est],
                                         [e.ci_high for e in est], f"{metric_label(v.metric)} ({level} CI)",
                                         report.control)
    control = report.variants[report.control]
    rows = []
    for name, tests in report.comparisons.items():
        for m, t in tests.items():
            base = control.metric(m).value
            rows.append([name, metric_label(m), metric_effect(m, t.effect),
                         interval(m, t.ci_low, t.ci_high, effect=True), pct(t.effect / base, 1) if base else "n/a",
                         p_value(t.p_value), "yes" if _finite(t.p_value) and t.p_value < v.threshold else "no"])
    comparisons = _table(["treatment vs control", "metric", "difference", f"{level} CI", "relative lift",
                          "p-value", f"p < {v.threshold:.3g}"], rows)
    guardrails = _table(["variant", "guardrail metric", "stop", "one-sided p", "reason"],
                        [[g.variant, metric_label(g.metric), "STOP" if g.stop else "continue", p_value(g.p_value),
                          g.reason] for g in report.guardrails]) if report.guardrails else _note("No guardrails defined.")
    return (_img(figure, "primary metric per variant") + table + "<h3>Comparisons with control</h3>"
            + comparisons + "<h3>Guardrails</h3>" + guardrails)


# -- 2. and 3. shopper simulations ------------------------------------------------------------

def _variant_order(data: RunData) -> list[str]:
    """The definition's variant order (control first as configured), for every table and plot."""
    if data.experiment is None:
        return []
    return [str(v["name"]) for v in data.experiment.definition.get("variants", []) if isinstance(v, dict) and "name" in v]


def _no_experiment_requests(data: RunData, what: str) -> str | None:
    """The "not recorded" paragraph when the shopper log has no requests of the experiment."""
    if not data.shoppers:
        return _problem(data, SHOPPERS_FILE) or _missing(f"{what} ({SHOPPERS_FILE})")
    if not data.experiment_requests():
        return _missing(f"{what} ({SHOPPERS_FILE} has no requests of experiment {data.experiment_name or '(any)'})")
    return None


def _rates_section(data: RunData) -> str:
    missing = _no_experiment_requests(data, "Simulated shopper requests in the experiment")
    if missing is not None:
        return missing
    requests = data.experiment_requests()
    alpha = data.experiment.alpha if data.experiment else 0.05
    order = _variant_order(data)
    rows = []
    for name, group in by_variant(requests, order).items():
        ctr = cumulative_rate(group, lambda s: bool(s.clicked), alpha)
        buy = cumulative_rate(group, lambda s: bool(s.purchased), alpha)
        rows.append([name, f"{ctr.n:,}", f"{ctr.successes:,}", f"{pct(ctr.rate[-1])} [{pct(ctr.low[-1])}, {pct(ctr.high[-1])}]",
                     f"{buy.successes:,}", f"{pct(buy.rate[-1])} [{pct(buy.low[-1])}, {pct(buy.high[-1])}]"])
    return (_problem(data, SHOPPERS_FILE) + _img(plots.rates_figure(requests, alpha, order), "CTR and purchase rate over time")
            + _table(["variant", "requests", "with a click", f"final CTR [{1 - alpha:.0%} Wilson, per request]",
                      "with a purchase", f"final purchase rate [{1 - alpha:.0%} Wilson, per request]"], rows)
            + _note(f"From {SHOPPERS_FILE}: the shoppers' own record of each slate of the experiment, counted per "
                    f"request. The y axes are scaled to the bands after each variant's first "
                    f"{plots.RATE_SCALE_AFTER} requests."))


def _regret_section(data: RunData) -> str:
    missing = _no_experiment_requests(data, "Bandit reward and regret")
    if missing is not None:
        return missing
    requests = data.experiment_requests()
    rows = []
    for name, group in by_variant(requests, _variant_order(data)).items():
        reward = cumulative_sum(s.reward for s in group).final
        regrets = [s.regret for s in group if s.regret is not None]
        regret = cumulative_sum(regrets).final
        first, last = third_means(regrets)
        rows.append([name, ", ".join(sorted({s.policy or "?" for s in group})), f"{len(group):,}", num(reward),
                     num(reward / len(group), 4), f"{len(regrets):,}", num(regret) if regrets else "n/a",
                     num(regret / len(regrets), 4) if regrets else "n/a", num(first, 4), num(last, 4),
                     _ratio(last, first)])
    return (_img(plots.regret_figure(requests, _variant_order(data), data.retrains), "cumulative regret and reward")
            + _img(plots.learning_figure(requests, _variant_order(data), data.retrains), "reward per request over time")
            + _table(["variant", "policy", "requests", "cumulative reward", "reward / request",
                      "with oracle reward", "cumulative regret", "regret / request", "regret / request, first third",
                      "last third", "last / first"], rows)
            + _note("Regret = oracle_reward - reward: the best reward achievable with that shopper's real future, "
                    "minus the reward of the slate served; requests without an oracle reward are left out of it. "
                    "A variant that learns from its feedback ends with less regret per request than it started "
                    "with (last / first < 1); a fixed one stays near 1. The oracle chooses among every bundle shown "
                    "during the run and the request's own logged candidates.")
            + _regret_split_table(data)
            + _weights_table(data))


def _regret_split_table(data: RunData) -> str:
    """Regret split into what the request's candidates missed and what the policy's choice among
    them missed, per third: only the second is the policy's to learn away."""
    rows = []
    for name, group in by_variant(data.experiment_requests(), _variant_order(data)).items():
        split = [s for s in group if s.selection_regret is not None]
        if not split:
            continue
        total_first, _ = third_means([s.regret or 0.0 for s in split])
        choice_first, choice_last = third_means([s.selection_regret or 0.0 for s in split])
        missed_first, missed_last = third_means([s.candidate_regret or 0.0 for s in split])
        rows.append([name, f"{len(split):,}", num(choice_first, 4), num(choice_last, 4), _ratio(choice_last, choice_first),
                     num(missed_first, 4), num(missed_last, 4), _ratio(missed_last, total_first)])
    if not rows:
        return _note("The impressions did not log their candidates' items: no split of the regret.")
    return ("<h3>Where the regret is: the candidates or the choice</h3>"
            + _table(["variant", "requests with logged candidates", "choice regret / request, first third", "last third",
                      "last / first", "candidate regret / request, first third", "last third",
                      "regret last / first with a perfect choice in the last third"], rows)
            + _note("Choice regret = the best slate among the request's own candidates (logged with its impression) "
                    "minus the slate served: what the policy can learn away. Candidate regret = oracle minus that best "
                    "slate: what no choice among those candidates could win (mostly the shopper's next items, which no "
                    "candidate held). The last column is the regret ratio of the table above that a policy choosing "
                    "perfectly in the last third would reach: the last third's candidate regret over the first third's "
                    "whole regret."))


def _ratio(numerator: float, denominator: float) -> str:
    return num(numerator / denominator, 2) if _finite(numerator) and _finite(denominator) and denominator > 0 else "n/a"


def _weights_table(data: RunData) -> str:
    """The weight each variant learned on each named feature (from the learner's live state)."""
    record = data.experiment
    live = record.live if record is not None else {}
    learned = {name: v.get("feature_weights") for name, v in live.items() if isinstance(v, dict) and v.get("feature_weights")}
    if not learned:
        return _note("No variant with shared linear weights (no feature weights to show).")
    features = list(next(iter(learned.values()))["arm"])
    rows = [[f] + [num(w["arm"].get(f), 3) for w in learned.values()] for f in features]
    return ("<h3>What each bandit learned to trust</h3>"
            + _table(["arm feature (serving/recommend/bundle_features.py)", *learned], rows)
            + _note("The learned weight of each named feature of a (user, bundle) pair in the variant's linear "
                    "reward model (model scores are standardised within each request; the rest are in [0, 1])."))


# -- 4. OPE ------------------------------------------------------------------------------------

def _ope_section(data: RunData) -> str:
    ope = data.ope
    if ope is None:
        return _problem(data, OPE_FILE) or _missing(f"Off-policy estimates ({OPE_FILE})")
    if not ope.estimates:
        return _missing(f"Off-policy estimates ({OPE_FILE} has no estimates)")
    rows = [[e.estimator, num(e.value, 4), _ope_interval((e.ci_low, e.ci_high)),
             num(e.value - ope.on_policy_value, 4) if None not in (e.value, ope.on_policy_value) else "n/a"]
            for e in ope.estimates]
    logged = (f"The logging policy's own value (mean logged reward): {num(ope.on_policy_value, 4)}."
              if ope.on_policy_value is not None else "The logging policy's value was not recorded in this run.")
    return (_img(plots.ope_figure(ope), "off-policy estimates")
            + _table(["estimator", "value", "CI", "value - logged value"], rows)
            + _note(f"Target policy {ope.target_policy}, estimated from {ope.n:,} logged decisions of "
                    f"{ope.logging_policy}. {logged}")
            + _ope_signs(data))


def _ope_signs(data: RunData) -> str:
    """Per bandit variant: does the estimate from the control's log point the way the A/B went?"""
    stage = data.run.stages.get("ope", {}) if data.run is not None else {}
    if not stage:
        return ""
    rows = [[name, f"{r['estimator']} {num(r['estimate'], 4)}", _ope_interval(r.get("interval")),
             num(r["control_logged_value"], 4), metric_effect("ctr", r["online_ctr_difference"]),
             "yes" if r["sign_agrees"] else "NO", _established(r.get("sign_established"))]
            for name, r in stage.items() if isinstance(r, dict)]
    return ("<h3>Off-policy vs online, per bandit variant</h3>"
            + _table(["variant", "estimate from the control's log", "interval", "control's logged value",
                      "online CTR difference", "same sign", "sign established"], rows)
            + _note("Each variant's value estimated from the control's impressions alone (slot 0), minus the "
                    "control's logged value, against the online difference: OPE can tell the direction of a "
                    "change before it is run. The sign is established only where the estimate's interval "
                    "excludes the control's logged value; otherwise the estimate cannot tell the direction, "
                    "whichever side its point value falls on."))


def _ope_interval(interval: Any) -> str:
    """An OPE estimate's interval, as its table and the per-variant signs show it."""
    if not isinstance(interval, (list, tuple)) or len(interval) != 2:
        return "not recorded"
    return f"[{num(interval[0], 4)}, {num(interval[1], 4)}]"


def _established(value: Any) -> str:
    return "not recorded" if value is None else ("yes" if value else "no: the interval includes the logged value")


# -- 5. freshness and latency ------------------------------------------------------------------

def _dist_row(name: str, values: Sequence[float], unit: str, digits: int) -> Row:
    d = distribution(values)
    return [name, f"{d.n:,}", f"{num(d.p50, digits)} {unit}", f"{num(d.p95, digits)} {unit}",
            f"{num(d.p99, digits)} {unit}", f"{num(d.max, digits)} {unit}"]


def _latency_section(data: RunData) -> str:
    parts = ["<h3>Feature freshness</h3>"]
    if data.freshness_s:
        parts += [_img(plots.freshness_figure(data.freshness_s), "feature freshness histogram"),
                  _table(["", "samples", "p50", "p95", "p99", "max"],
                         [_dist_row("produce → visible online", data.freshness_s, "s", 2)])]
    else:
        parts.append(_problem(data, FRESHNESS_FILE) or _missing(f"Feature freshness ({FRESHNESS_FILE})"))
    parts.append("<h3>Endpoint latency</h3>")
    if data.latency_ms:
        parts += [_problem(data, LATENCY_FILE), _img(plots.latency_figure(data.latency_ms), "latency ECDF"),
                  _table(["endpoint", "requests", "p50", "p95", "p99", "max"],
                         [_dist_row(k, v, "ms", 1) for k, v in data.latency_ms.items()]),
                  _note(f"Source: {data.latency_source}.")]
    else:
        parts.append(_problem(data, LATENCY_FILE) or _missing(f"Endpoint latency ({LATENCY_FILE} or {SHOPPERS_FILE})"))
    return "".join(parts)


# -- 6. training -------------------------------------------------------------------------------

def _metric_rows(model: TrainedModel) -> list[Row]:
    rows: list[Row] = []
    for key, value in sorted(model.metrics.items()):
        split, _, name = key.partition("/")
        if split in ("valid", "test") and name not in ("protocol", "n_users") and isinstance(value, (int, float)):
            rows.append([model.name, split, name, num(float(value), 4),
                         str(model.metrics.get(f"{split}/protocol", "")),
                         str(model.metrics.get(f"{split}/n_users", ""))])
    return rows


def _training_section(data: RunData) -> str:
    if data.run is None or not data.run.registry:
        return _missing(f"Registered models (no registry path in {RUN_FILE})")
    if data.models is None:
        return _problem(data, REGISTRY_KEY) or _missing("Registered models")
    if not data.models:
        return _missing(f"Registered models (registry {data.run.registry} holds none)")
    parts = [_table(["model", "version", "created", "epochs", "best epoch", "curves from"],
                    [[m.name, m.version, m.created_at, str(m.metrics.get("epoch", "n/a")),
                      str(m.metrics.get("best_epoch", "n/a")), m.history_source or "not recorded"]
                     for m in data.models])]
    for model in data.models:
        if model.history:
            fig = plots.training_curves_figure(model.history, model.monitor, model.name)
            parts.append(_img(plots.png_bytes(fig), f"training curves of {model.name}"))
        else:
            parts.append(_missing(f"Training curves of {model.name} (no history in the registry manifest "
                                  f"nor {HISTORY_DIR}/{model.name}.json)"))
    rows = [row for m in data.models for row in _metric_rows(m)]
    parts.append("<h3>Offline metrics (best epoch)</h3>")
    parts.append(_table(["model", "split", "metric", "value", "protocol", "users"], rows)
                 if rows else _missing("Offline metrics"))
    return "".join(parts)


# -- 7. pipeline -------------------------------------------------------------------------------

def _pipeline_section(data: RunData) -> str:
    batches = data.pipeline
    if not batches:
        return _problem(data, PIPELINE_FILE) or _missing(f"Pipeline micro-batches ({PIPELINE_FILE})")
    rates = [r for r in (b.events_per_s for b in batches) if r is not None]
    d = distribution(rates)
    total_records = sum(b.records for b in batches)
    total_s = sum(b.elapsed_s for b in batches)
    summary = _table(
        ["batches", "records", "valid", "duplicates", "DLQ", "features written", "events/s overall",
         "events/s p50 per batch", "final lag"],
        [[f"{len(batches):,}", f"{total_records:,}", f"{sum(b.valid for b in batches):,}",
          f"{sum(b.duplicates for b in batches):,}", f"{sum(b.dlq for b in batches):,}",
          f"{sum(b.features_written for b in batches):,}",
          num(total_records / total_s, 1) if total_s > 0 else "n/a", num(d.p50, 1), f"{batches[-1].lag:,}"]],
    )
    reasons = dlq_by_reason(batches)
    dlq = (_img(plots.dlq_figure(batches), "dead letters by reason")
           + _table(["DLQ reason", "records"], [[k, f"{n:,}"] for k, n in reasons.items()])
           if reasons else _note("No dead-lettered records in this run."))
    return (_problem(data, PIPELINE_FILE) + _img(plots.pipeline_figure(batches), "pipeline throughput")
            + summary + "<h3>Dead-letter queue</h3>" + dlq)


# -- page --------------------------------------------------------------------------------------

def _header(data: RunData) -> str:
    run = data.run
    name = data.experiment_name or "unnamed run"
    if run is None:
        meta = _problem(data, RUN_FILE) or _missing(f"Run metadata ({RUN_FILE})")
    else:
        duration = f", {num(run.duration_s, 0)} s" if run.duration_s is not None else ""
        check = {True: "; the demo's end-of-run check passed", False: "; the demo's end-of-run check FAILED",
                 None: ""}[run.ok]
        meta = (f'<div class="meta">Run {_e(run.started_at or "?")} → {_e(run.finished_at or "?")}{_e(duration)}'
                f"{_e(check)}; directory {_e(data.run_dir)}</div>")
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return (f"<header><h1>Experiment report: {_e(name)}</h1>{meta}"
            f'<div class="meta">Generated {_e(generated)} by streamrec report.</div></header>')


def _short(value: Any, limit: int = 160) -> str:
    """A stage value on one line (nested values as compact JSON), cut at ``limit`` characters."""
    text = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else (
        value if isinstance(value, str) else json.dumps(value, default=str, separators=(",", ":")))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _run_section(data: RunData) -> str:
    run = data.run
    if run is None:
        return _problem(data, RUN_FILE) or _missing(f"Run stages ({RUN_FILE})")
    rows = [[stage, "; ".join(f"{k}={_short(v)}" for k, v in info.items())] for stage, info in run.stages.items()]
    notes = "".join(f"<li>{_e(n)}</li>" for n in run.notes)
    problems = "".join(f"<li>{_e(k)}: {_e(v)}</li>" for k, v in data.problems.items())
    return ((_table(["stage", "what it recorded"], rows) if rows else _missing("Stage counts"))
            + (f"<h3>Notes</h3><ul>{notes}</ul>" if notes else "")
            + (f"<h3>Files not fully read</h3><ul>{problems}</ul>" if problems else ""))


SECTIONS: tuple[tuple[str, Callable[[RunData], str]], ...] = (
    ("Per-variant CTR and purchase rate over time", _rates_section),
    ("Bandit reward and regret", _regret_section),
    ("Off-policy evaluation", _ope_section),
    ("Feature freshness and endpoint latency", _latency_section),
    ("Training curves and offline metrics", _training_section),
    ("Pipeline throughput and dead letters", _pipeline_section),
    ("Run stages and notes", _run_section),
)


def render_html(data: RunData) -> str:
    """The whole page for ``data``."""
    verdict = _verdict(data)
    body = [_header(data), _verdict_box(verdict, data),
            _section(1, "Experiment outcome per variant", _variants_section(data, verdict))]
    body += [_section(i, title, make(data)) for i, (title, make) in enumerate(SECTIONS, start=2)]
    title = _e(f"streamrec report: {verdict.headline}")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>")


def build_report(run_dir: Path, out: Path | None = None) -> Path:
    """Render ``run_dir`` into one self-contained HTML file.

    Args:
        run_dir: the directory ``streamrec demo`` wrote (see :mod:`streamrec.report.rundir`).
        out: the HTML file (default ``run_dir / "report.html"``).

    Returns:
        The path written.

    Example:
        >>> build_report(Path(".streamrec/demo"))  # doctest: +SKIP
        PosixPath('.streamrec/demo/report.html')
    """
    out = Path(out) if out is not None else Path(run_dir) / REPORT_FILE
    page = render_html(load_run(Path(run_dir)))
    # Write then rename: a reader (browser, CI artefact upload) never sees half a page.
    write_atomically(out, page, mode=0o644)  # a report is meant to be shared
    return out
