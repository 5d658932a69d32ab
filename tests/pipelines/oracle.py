"""A plain pandas computation of every feature over a set of events: the tests' oracle.

Written independently of ``pipelines.accumulators`` from the definitions in its docstring.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from features.entities import experiment_variant_key
from features.events import EVENT_TYPES

WEIGHTS = {"view": 1.0, "click": 1.0, "favorite": 2.0, "add_to_cart": 3.0, "remove_from_cart": 0.0,
           "purchase": 5.0, "bundle_purchase": 5.0}


def _secs(ts: str) -> float:
    return pd.Timestamp(ts).timestamp()


def _frames(events: list[dict[str, Any]]):
    base, lines = [], []
    for e in events:
        ts = _secs(e["ts"])
        base.append({"event_id": e["event_id"], "type": e["type"], "user_id": e["user_id"],
                     "session_id": e["session_id"], "ts": ts, "raw": e})
        t = e["type"]
        if t in ("view", "add_to_cart", "remove_from_cart", "favorite"):
            lines.append((e["event_id"], e["user_id"], e["session_id"], ts, 0, e["item_id"], e.get("category_id"), t, e.get("quantity", 1)))
        elif t in ("purchase", "bundle_purchase"):
            for i, line in enumerate(e["items"]):
                lines.append((e["event_id"], e["user_id"], e["session_id"], ts, i, line["item_id"], line.get("category_id"), t, line.get("quantity", 1)))
        elif t == "click" and e.get("item_id"):
            lines.append((e["event_id"], e["user_id"], e["session_id"], ts, 0, e["item_id"], None, "click", 1))
    ev = pd.DataFrame(base)
    li = pd.DataFrame(lines, columns=["event_id", "user_id", "session_id", "ts", "idx", "item_id", "category_id", "type", "qty"])
    return ev, li


def compute_features(events: list[dict[str, Any]], spec: Any, as_of: float | None = None) -> dict[str, pd.DataFrame]:
    """Features of every key as of ``as_of`` (default: the largest event time), one frame per view.

    ``events`` must already be de-duplicated by event id.
    """
    ev, li = _frames(events)
    T = ev["ts"].max() if as_of is None else as_of
    short, long_ = spec.window_short_s, spec.window_long_s
    out: dict[str, pd.DataFrame] = {}

    # users
    users = {}
    for user_id, g in ev.groupby("user_id"):
        row: dict[str, Any] = {"last_seen_unix": int(g["ts"].max())}
        ul = li[li.user_id == user_id].sort_values(["ts", "event_id", "idx"]).tail(spec.sequence_length)
        row["seq_item_ids"] = list(ul["item_id"])
        row["seq_event_types"] = list(ul["type"])
        row["seq_ts_unix"] = [int(x) for x in ul["ts"]]
        for kind in EVENT_TYPES:
            k = g[g.type == kind]
            row[f"{kind}_count_1h"] = int(((k.ts > T - short) & (k.ts <= T)).sum())
            row[f"{kind}_count_24h"] = int(((k.ts > T - long_) & (k.ts <= T)).sum())
        last = g["ts"].max()
        al = li[(li.user_id == user_id) & li.category_id.notna()].copy()
        al["w"] = al["type"].map(WEIGHTS)
        al = al[al.w > 0]
        al["score"] = al["w"] * np.exp(-(last - al["ts"]) / spec.affinity_decay_s)
        scores = al.groupby("category_id")["score"].sum()
        ranked = sorted((-float(f"{s:.12g}"), c) for c, s in scores.items())[: spec.top_categories]
        row["top_category_ids"] = [c for _, c in ranked]
        row["top_category_scores"] = [-s for s, _ in ranked]
        users[user_id] = row
    out["user_features"] = pd.DataFrame.from_dict(users, orient="index")

    # items
    sig = []
    for e, ts in zip(ev["raw"], ev["ts"]):
        if e["type"] == "view":
            sig.append((e["item_id"], "view", 1, ts))
        elif e["type"] == "add_to_cart":
            sig.append((e["item_id"], "cart", 1, ts))
        elif e["type"] in ("purchase", "bundle_purchase"):
            sig += [(x["item_id"], "purchase", x.get("quantity", 1), ts) for x in e["items"]]
        elif e["type"] == "impression" and e["surface"] == "recommendations":
            sig += [(s["id"], "impression", 1, ts) for s in e["slots"]]
        elif e["type"] == "click" and e.get("item_id"):
            sig.append((e["item_id"], "click", 1, ts))
    sg = pd.DataFrame(sig, columns=["item_id", "kind", "qty", "ts"])
    hours = long_ / short
    sg["s"] = sg["qty"] * ((sg.ts > T - short) & (sg.ts <= T))
    sg["l"] = sg["qty"] * ((sg.ts > T - long_) & (sg.ts <= T))
    sums = sg.groupby(["item_id", "kind"])[["s", "l", "qty"]].sum().unstack(fill_value=0)
    items = {}
    for item_id, r in sums.iterrows():
        get = lambda col, kind: int(r[(col, kind)]) if (col, kind) in r.index else 0  # noqa: E731
        row = {}
        for kind, name in (("view", "views"), ("cart", "carts"), ("purchase", "purchases")):
            row[f"{name}_1h"] = get("s", kind)
            row[f"{name}_24h"] = get("l", kind)
        row["rec_impressions"] = get("qty", "impression")
        row["rec_clicks"] = get("qty", "click")
        row["rec_ctr"] = (row["rec_clicks"] + spec.ctr_prior_clicks) / (row["rec_impressions"] + spec.ctr_prior_impressions)
        row["trending_score"] = (row["views_1h"] + 1) / (row["views_24h"] / hours + 1)
        items[item_id] = row
    out["item_features"] = pd.DataFrame.from_dict(items, orient="index")

    # co-occurrence
    cl = li[li.type.isin(["add_to_cart", "purchase", "bundle_purchase"])]
    sess_cats = (
        cl.groupby(["session_id", "item_id"])["category_id"]
        .agg(lambda s: frozenset(x for x in s if x is not None and not (isinstance(x, float) and math.isnan(x))))
        .reset_index()
    )
    own = sess_cats.groupby("item_id")["category_id"].agg(lambda s: frozenset().union(*s))
    n_sessions = sess_cats.groupby("item_id")["session_id"].nunique()
    pairs = sess_cats.merge(sess_cats, on="session_id", suffixes=("_a", "_b"))
    pairs = pairs[pairs.item_id_a != pairs.item_id_b]
    if pairs.empty:
        agg = pd.DataFrame(columns=["item_id_a", "item_id_b", "count", "cats_b"])
    else:
        agg = pairs.groupby(["item_id_a", "item_id_b"]).agg(
            count=("session_id", "nunique"), cats_b=("category_id_b", lambda s: frozenset().union(*s))
        ).reset_index()
    cooc = {}
    by_a = dict(tuple(agg.groupby("item_id_a")))
    empty = agg.iloc[0:0]
    for a in n_sessions.index:
        g = by_a.get(a, empty).sort_values(["count", "item_id_b"], ascending=[False, True])
        cross = [bool(own[a]) and bool(cb) and not (own[a] & cb) for cb in g["cats_b"]]
        top = g.head(spec.cooccurrence_top_k)
        gc = g[pd.Series(cross, index=g.index, dtype=bool)].head(spec.cooccurrence_top_k)
        n = int(n_sessions[a])
        cooc[a] = {
            "sessions": n,
            "co_item_ids": list(top.item_id_b),
            "co_counts": [int(x) for x in top["count"]],
            "co_scores": [c / n for c in top["count"]],
            "co_cross_category": cross[: len(top)],
            "cross_item_ids": list(gc.item_id_b),
            "cross_scores": [c / n for c in gc["count"]],
        }
    out["item_cooccurrence"] = pd.DataFrame.from_dict(cooc, orient="index")

    # bundles and experiments
    bundles: dict[str, list[int]] = {}
    variants: dict[str, list[int]] = {}
    request_variant: dict[str, str | None] = {}
    for e in sorted((r for r in ev["raw"]), key=lambda e: (_secs(e["ts"]), e["event_id"])):
        if e["type"] == "impression":
            if e["surface"] == "bundles":
                for s in e["slots"]:
                    bundles.setdefault(s["id"], [0, 0, 0])[0] += 1
            key = experiment_variant_key(e.get("experiment"), e.get("variant"))
            request_variant.setdefault(e["request_id"], key)
            if key is not None:
                variants.setdefault(key, [0, 0, 0])[0] += 1
        elif e["type"] == "click" and e.get("bundle_id"):
            bundles.setdefault(e["bundle_id"], [0, 0, 0])[1] += 1
        elif e["type"] == "bundle_purchase":
            bundles.setdefault(e["bundle_id"], [0, 0, 0])[2] += 1
    for e in ev["raw"]:
        if e["type"] in ("click", "bundle_purchase"):
            key = request_variant.get(e["request_id"])
            if key is not None:
                variants.setdefault(key, [0, 0, 0])[1 if e["type"] == "click" else 2] += 1

    def counters(d):
        return pd.DataFrame.from_dict(
            {k: {"impressions": v[0], "clicks": v[1], "purchases": v[2],
                 "ctr": (v[1] + spec.ctr_prior_clicks) / (v[0] + spec.ctr_prior_impressions)} for k, v in d.items()},
            orient="index",
        )

    out["bundle_features"] = counters(bundles)
    out["experiment_variant_features"] = counters(variants)
    return out
