"""The report's figures as PNG bytes, plus :func:`plot_training_curves` for any training history.

Figures are built with matplotlib's object API (``Figure``, no pyplot state), rendered by the Agg
backend: no display, thread-safe, nothing left open between calls.

Example:
    >>> plot_training_curves([{"epoch": 0, "train_loss": 0.7, "valid/recall@20": 0.05}],
    ...                      Path("curves.png"))  # doctest: +SKIP
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")  # headless: the report is rendered on servers and in CI

from matplotlib.figure import Figure  # noqa: E402 - after the backend choice
from matplotlib.ticker import MaxNLocator  # noqa: E402

from serving.experiments.analysis import window_means  # noqa: E402
from streamrec.report.rundir import OpeResult, PipelineBatch, ShopperRequest  # noqa: E402
from streamrec.report.series import (  # noqa: E402
    by_variant,
    cumulative_rate,
    cumulative_sum,
    distribution,
    dlq_by_reason,
)

__all__ = [
    "dlq_figure",
    "freshness_figure",
    "latency_figure",
    "ope_figure",
    "pipeline_figure",
    "plot_training_curves",
    "rates_figure",
    "learning_figure",
    "regret_figure",
    "training_curves_figure",
    "variant_metric_figure",
    "png_bytes",
    "variant_colours",
]

DPI = 96
WIDE = (10.0, 3.6)
# The cumulative-rate axes are scaled to the bands after this many requests per variant: the first
# few requests swing between 0 and 1 and would squash the part of the curve that matters.
RATE_SCALE_AFTER = 30


def variant_colours(names: Sequence[str]) -> dict[str, str]:
    """One colour per variant, the same in every figure (matplotlib's default cycle)."""
    return {name: f"C{i % 10}" for i, name in enumerate(names)}


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG (tight layout)."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def variant_metric_figure(names: Sequence[str], values: Sequence[float], lows: Sequence[float],
                          highs: Sequence[float], label: str, control: str) -> bytes:
    """Point estimate and CI of the primary metric per variant, in the order given."""
    fig = Figure(figsize=(10.0, 0.5 + 0.55 * len(names)))
    ax = fig.add_subplot()
    y = list(range(len(names)))
    colours = variant_colours(names)
    for i, name in enumerate(names):
        colour = colours[name]
        lo, hi = lows[i], highs[i]
        err = [[values[i] - lo], [hi - values[i]]] if math.isfinite(lo) and math.isfinite(hi) else None
        ax.errorbar(values[i], i, xerr=err, fmt="o", color=colour, capsize=4)
    ax.set_yticks(y, [f"{n} (control)" if n == control else n for n in names])
    ax.invert_yaxis()
    ax.set_xlabel(label)
    ax.grid(axis="x", alpha=0.3)
    return png_bytes(fig)


def rates_figure(shoppers: Sequence[ShopperRequest], alpha: float, order: Sequence[str] = ()) -> bytes:
    """Cumulative CTR and purchase rate per variant over time, with Wilson bands."""
    fig = Figure(figsize=WIDE)
    axes = fig.subplots(1, 2, sharex=True)
    t0 = min(s.t for s in shoppers)
    metrics = (("CTR", lambda s: bool(s.clicked)), ("purchase rate", lambda s: bool(s.purchased)))
    groups = by_variant(shoppers, order)
    colours = variant_colours(list(groups))
    tops = [0.0, 0.0]
    for name, rows in groups.items():
        for j, (ax, (title, success)) in enumerate(zip(axes, metrics)):
            c = cumulative_rate(rows, success, alpha)
            minutes = (c.t - t0) / 60.0
            ax.plot(minutes, c.rate, color=colours[name], label=name)
            ax.fill_between(minutes, c.low, c.high, color=colours[name], alpha=0.18, linewidth=0)
            tops[j] = max(tops[j], float(c.high[min(RATE_SCALE_AFTER, c.n - 1):].max()))
    for ax, top, (title, _) in zip(axes, tops, metrics):
        ax.set_ylim(0.0, min(1.0, 1.15 * top) if top > 0 else 1.0)
        ax.set_title(f"cumulative {title} ({1 - alpha:.0%} Wilson band)", fontsize=10)
        ax.set_xlabel("minutes since the first request")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return png_bytes(fig)


def _mark_retrains(ax: Any, rows: Sequence[ShopperRequest], retrains: Sequence[float], first: bool) -> None:
    """A dashed line where serving switched to retrained models (at the first request after it)."""
    for n, at in enumerate(retrains):
        index = next((i for i, r in enumerate(rows) if r.t >= at), None)
        if index is not None:
            ax.axvline(index + 1, color="0.4", linestyle="--", linewidth=1,
                       label="retrained models serving" if first and n == 0 else None)


def regret_figure(shoppers: Sequence[ShopperRequest], order: Sequence[str] = (), retrains: Sequence[float] = ()) -> bytes:
    """Cumulative regret and cumulative reward per variant against requests served; dashed lines
    where retrained models began serving."""
    fig = Figure(figsize=WIDE)
    regret_ax, reward_ax = fig.subplots(1, 2)
    groups = by_variant(shoppers, order)
    colours = variant_colours(list(groups))
    for n, (name, rows) in enumerate(groups.items()):
        with_oracle = [r for r in rows if r.regret is not None]
        regret_ax.plot(range(1, len(with_oracle) + 1), cumulative_sum(r.regret or 0.0 for r in with_oracle).total,
                       color=colours[name], label=name)
        reward_ax.plot(range(1, len(rows) + 1), cumulative_sum(r.reward for r in rows).total, color=colours[name],
                       label=name)
        if n == 0:  # the retrain is one moment: marked on the first variant's axis of requests
            _mark_retrains(regret_ax, with_oracle, retrains, True)
            _mark_retrains(reward_ax, rows, retrains, False)
    regret_ax.set_title("cumulative regret (oracle reward - reward)", fontsize=10)
    reward_ax.set_title("cumulative reward", fontsize=10)
    regret_ax.set_xlabel("requests with an oracle reward")
    reward_ax.set_xlabel("requests served to the variant")
    for ax in (regret_ax, reward_ax):
        ax.grid(alpha=0.3)
    regret_ax.legend(fontsize=8)
    return png_bytes(fig)


def learning_figure(shoppers: Sequence[ShopperRequest], order: Sequence[str] = (), retrains: Sequence[float] = (),
                    windows: int = 10) -> bytes:
    """Reward and regret per request in consecutive windows of each variant's requests: a
    learning variant's curves rise (reward) and fall (regret); retrains are dashed lines (time)."""
    fig = Figure(figsize=WIDE)
    reward_ax, time_ax = fig.subplots(1, 2)
    groups = by_variant(shoppers, order)
    colours = variant_colours(list(groups))
    start = min((r.t for rows in groups.values() for r in rows), default=0.0)
    for name, rows in groups.items():
        ends, means = window_means([r.reward for r in rows], windows)
        reward_ax.plot(ends, means, marker="o", color=colours[name], label=name)
        with_oracle = [r for r in rows if r.regret is not None]
        r_ends, r_means = window_means([r.regret or 0.0 for r in with_oracle], windows)
        r_times = np.array([with_oracle[e - 1].t - start for e in r_ends]) if len(r_ends) else np.array([])
        time_ax.plot(r_times, r_means, marker="o", color=colours[name], label=name)
    for n, at in enumerate(retrains):
        time_ax.axvline(at - start, color="0.4", linestyle="--", linewidth=1,
                        label="retrained models serving" if n == 0 else None)
    reward_ax.set_title(f"reward per request, {windows} windows of each variant's requests", fontsize=10)
    reward_ax.set_xlabel("requests served to the variant")
    time_ax.set_title("regret per request over the run", fontsize=10)
    time_ax.set_xlabel("seconds since the first request")
    for ax in (reward_ax, time_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return png_bytes(fig)


def ope_figure(ope: OpeResult) -> bytes:
    """Each estimator's value with its CI, and the target policy's on-policy value as a line."""
    fig = Figure(figsize=(10.0, 0.9 + 0.55 * len(ope.estimates)))
    ax = fig.add_subplot()
    for i, e in enumerate(ope.estimates):
        if e.value is None or e.ci_low is None or e.ci_high is None:  # undefined: its row stays empty
            continue
        ax.errorbar(e.value, i, xerr=[[e.value - e.ci_low], [e.ci_high - e.value]], fmt="o",
                    color=f"C{i}", capsize=4)
    ax.set_yticks(range(len(ope.estimates)), [e.estimator for e in ope.estimates])
    ax.invert_yaxis()
    if ope.on_policy_value is not None:
        ax.axvline(ope.on_policy_value, color="0.3", linestyle="--", label="on-policy value")
        ax.legend(fontsize=8)
    ax.set_xlabel(f"estimated value of {ope.target_policy} (logs of {ope.logging_policy}, n={ope.n})")
    ax.grid(axis="x", alpha=0.3)
    return png_bytes(fig)


def freshness_figure(samples_s: Sequence[float]) -> bytes:
    """Histogram of produce -> visible-online seconds, with p50/p95 marked."""
    d = distribution(samples_s)
    fig = Figure(figsize=(10.0, 3.2))
    ax = fig.add_subplot()
    ax.hist(d.values, bins=min(40, max(5, d.n // 3)), color="C0", alpha=0.8)
    for value, name in ((d.p50, "p50"), (d.p95, "p95")):
        ax.axvline(value, color="0.2", linestyle="--", linewidth=1)
        ax.annotate(name, (value, 1), xycoords=("data", "axes fraction"), va="top", fontsize=8)
    ax.set_xlabel("seconds from produce to visible in the Feast online store")
    ax.set_ylabel("events")
    ax.grid(alpha=0.3)
    return png_bytes(fig)


def latency_figure(latency_ms: Mapping[str, Sequence[float]]) -> bytes:
    """ECDF of end-to-end latency per endpoint (log x axis: tails matter)."""
    fig = Figure(figsize=(10.0, 3.2))
    ax = fig.add_subplot()
    for i, (endpoint, values) in enumerate(latency_ms.items()):
        d = distribution(values)
        if d.n:
            ax.step(d.values, [(j + 1) / d.n for j in range(d.n)], where="post", color=f"C{i}", label=endpoint)
    if any(v > 0 for values in latency_ms.values() for v in values):
        ax.set_xscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("share of requests ≤ x")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return png_bytes(fig)


def pipeline_figure(batches: Sequence[PipelineBatch]) -> bytes:
    """Events per second of each micro-batch, and its records split into valid / duplicate / DLQ."""
    fig = Figure(figsize=WIDE)
    rate_ax, mix_ax = fig.subplots(1, 2)
    x = list(range(1, len(batches) + 1))
    rate_ax.plot(x, [b.events_per_s or 0.0 for b in batches], marker=".", color="C0")
    rate_ax.set_title("throughput per micro-batch", fontsize=10)
    rate_ax.set_ylim(bottom=0)
    rate_ax.set_ylabel("events / s")
    bottom = [0.0] * len(batches)
    for label, key, colour in (("valid", "valid", "C2"), ("duplicates", "duplicates", "C1"), ("DLQ", "dlq", "C3")):
        heights = [float(getattr(b, key)) for b in batches]
        mix_ax.bar(x, heights, bottom=bottom, color=colour, label=label)
        bottom = [a + h for a, h in zip(bottom, heights)]
    mix_ax.set_title("valid, duplicate and dead-lettered records per micro-batch", fontsize=10)
    mix_ax.legend(fontsize=8)
    for ax in (rate_ax, mix_ax):
        ax.set_xlabel("micro-batch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    return png_bytes(fig)


def dlq_figure(batches: Sequence[PipelineBatch]) -> bytes:
    """Dead letters by reason over the run (horizontal bars, most frequent on top)."""
    totals = dlq_by_reason(batches)
    fig = Figure(figsize=(10.0, 0.8 + 0.4 * max(1, len(totals))))
    ax = fig.add_subplot()
    ax.barh(list(totals), list(totals.values()), color="C3")
    ax.invert_yaxis()
    ax.set_xlabel("dead-lettered records")
    ax.grid(axis="x", alpha=0.3)
    return png_bytes(fig)


def _valid_key(history: Sequence[Mapping[str, Any]], monitor: str | None) -> str | None:
    """``valid/<monitor>`` when recorded, else the first ``valid/`` metric with a number."""
    keys = [k for h in history for k, v in h.items()
            if k.startswith("valid/") and isinstance(v, (int, float)) and not isinstance(v, bool)
            and not k.endswith("/n_users")]
    if monitor and f"valid/{monitor}" in keys:
        return f"valid/{monitor}"
    return keys[0] if keys else None


def training_curves_figure(history: Sequence[Mapping[str, Any]], monitor: str | None = None,
                           title: str = "") -> Figure:
    """Train loss and one validation metric per epoch (epochs without validation are skipped).

    Args:
        history: per-epoch dicts with ``epoch``, ``train_loss`` and ``valid/<metric>`` keys, as the
            Ray Train worker loop reports them (``ray_jobs/trainers/worker_loop.py``).
        monitor: the validation metric to draw (default: the first one found).
        title: prefix of the panel titles (e.g. the model name).
    """
    epochs = [h for h in history if "epoch" in h and not h.get("done")]
    fig = Figure(figsize=(8.0, 3.0))
    loss_ax, valid_ax = fig.subplots(1, 2)
    loss = [(h["epoch"], h["train_loss"]) for h in epochs if isinstance(h.get("train_loss"), (int, float))]
    if loss:
        loss_ax.plot(*zip(*loss), marker=".", color="C0")
    key = _valid_key(epochs, monitor)
    points = [(h["epoch"], h[key]) for h in epochs if key and isinstance(h.get(key), (int, float))]
    if points:
        valid_ax.plot(*zip(*points), marker="o", color="C1")
    prefix = f"{title}: " if title else ""
    loss_ax.set_title(f"{prefix}train loss", fontsize=10)
    valid_ax.set_title(f"{prefix}{key or 'no validation metric recorded'}", fontsize=10)
    for ax in (loss_ax, valid_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    return fig


def plot_training_curves(history: Sequence[Mapping[str, Any]], out_png: Path, monitor: str | None = None,
                         title: str = "") -> Path:
    """Write :func:`training_curves_figure` to ``out_png`` and return the path.

    Example:
        >>> plot_training_curves(outcome.history, Path("lightgcn.png"), "recall@20")  # doctest: +SKIP
    """
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    out_png.write_bytes(png_bytes(training_curves_figure(history, monitor, title)))
    return out_png
