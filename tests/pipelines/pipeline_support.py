"""Helpers of the pipeline tests: private topics on the session broker, Taobao events, comparisons."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from kafka import KafkaProducer

from features.events import event_to_json, parse_event
from streamrec.runtime.config import Settings
from streamrec.replay import read_taobao_rows, taobao_events
from streamrec.runtime.kafka import ensure_topics
from support import taobao_csv


def pipeline_settings(base: Settings, state_dir: Path, new_topics: bool = True, **pipeline: Any) -> Settings:
    """Settings on the test broker with private topics, group and state (isolated per test);
    ``new_topics=False`` keeps ``base``'s topics (a second, fresh pipeline on the same events)."""
    tag = uuid.uuid4().hex[:8]
    dumped = base.model_dump(mode="json")
    dumped["collector"]["auth_token"] = base.collector.auth_token.get_secret_value()
    if new_topics:
        dumped["kafka"]["topics"] = {"events": f"events-{tag}", "dlq": f"events.dlq-{tag}"}
    dumped["data"]["state_dir"] = str(state_dir)
    dumped["pipeline"] = {**dumped.get("pipeline", {}), "group_id": f"features-{tag}", **pipeline}
    dumped["feast"] = {**dumped.get("feast", {}), "project": f"t{tag}"}
    settings = Settings(**dumped)
    ensure_topics(settings.kafka)
    return settings


def produce(settings: Settings, events: list[Any], raw: list[bytes] | None = None) -> None:
    """Produce contract events (dicts or models) keyed by user_id, and optional raw values, acks=all."""
    producer = KafkaProducer(**settings.kafka.client_options(), acks="all", linger_ms=20, batch_size=256 * 1024)
    try:
        for event in events:
            model = parse_event(event) if isinstance(event, dict) else event
            producer.send(settings.kafka.topics.events, key=model.user_id.encode(), value=event_to_json(model))
        for value in raw or []:
            producer.send(settings.kafka.topics.events, key=b"raw", value=value)
        producer.flush()
    finally:
        producer.close()


_TAOBAO: list[dict[str, Any]] | None = None


def taobao_subset(settings_or_none: Settings | None = None, users: int | None = 60) -> list[dict[str, Any]]:
    """Contract events of the real Taobao slice (the first `users` users by id), event-time order."""
    global _TAOBAO
    if _TAOBAO is None:
        _TAOBAO = taobao_events(read_taobao_rows(taobao_csv(settings_or_none)))
    if users is None:
        return list(_TAOBAO)
    keep = sorted({e["user_id"] for e in _TAOBAO}, key=int)[:users]
    chosen = set(keep)
    return [e for e in _TAOBAO if e["user_id"] in chosen]


def offline_latest(settings: Settings, view_name: str):
    """The last row per key that the pipeline wrote to a view's offline folder (what is served now)."""
    import pandas as pd
    import pyarrow.parquet as pq

    from features.repo import offline_dir
    from features.views import JOIN_KEY_OF_VIEW

    files = sorted(offline_dir(settings, view_name).glob("*.parquet"))
    frames = [pq.read_table(f).to_pandas() for f in files]
    frame = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else frames[0]
    key = JOIN_KEY_OF_VIEW[view_name]
    frame = frame.sort_values("event_timestamp", kind="stable").drop_duplicates(key, keep="last")
    return frame.set_index(key).drop(columns=["event_timestamp"]).sort_index()


def assert_frames_match(actual, expected, label: str, rel: float = 1e-9) -> None:
    """Same keys, and per cell: equal (ints, strings, lists) or within `rel` (floats)."""
    import math

    import numpy as np

    assert sorted(actual.index) == sorted(expected.index), f"{label}: keys differ: " + str(
        (sorted(set(actual.index) ^ set(expected.index)))[:10]
    )
    mismatches = []
    for key in expected.index:
        for col in expected.columns:
            a, e = actual.at[key, col], expected.at[key, col]
            if isinstance(a, np.ndarray):
                a = a.tolist()
            if isinstance(e, np.ndarray):
                e = e.tolist()
            if isinstance(e, list):
                a = list(a)
                ok = len(a) == len(e) and all(
                    math.isclose(x, y, rel_tol=rel, abs_tol=1e-12) if isinstance(y, float) else x == y
                    for x, y in zip(a, e)
                )
            elif isinstance(e, float):
                ok = math.isclose(float(a), e, rel_tol=rel, abs_tol=1e-12)
            else:
                ok = a == e
            if not ok:
                mismatches.append((key, col, a, e))
    assert not mismatches, f"{label}: {len(mismatches)} cells differ, e.g. {mismatches[:3]}"


def dedupe(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    out = []
    for e in events:
        if e["event_id"] not in seen:
            seen.add(e["event_id"])
            out.append(e)
    return out


T0 = 1_511_600_000  # 2017-11-25T08:53:20Z


def ev(kind: str, user: str, dt_s: float, session: str = "s1", **fields: Any) -> dict[str, Any]:
    """A contract event at T0 + dt_s with a fresh id."""
    from datetime import datetime, timezone

    event = {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "type": kind,
        "user_id": user,
        "session_id": session,
        "ts": datetime.fromtimestamp(T0 + dt_s, tz=timezone.utc).isoformat().replace("+00:00", "Z"),
    }
    event.update(fields)
    return event


def mixed_events() -> list[dict[str, Any]]:
    """Every event type: item events out of order, sessions with cross-category carts, impressions,
    clicks before and after their impression, bundle purchases, two experiment variants."""
    line = lambda item, cat, q=1: {"item_id": item, "quantity": q, "category_id": cat}  # noqa: E731
    slot = lambda i, pos: {"id": i, "position": pos, "propensity": 0.5}  # noqa: E731
    return [
        ev("view", "u1", 0, item_id="i1", category_id="c1"),
        ev("add_to_cart", "u1", 60, item_id="i1", category_id="c1"),
        ev("add_to_cart", "u1", 120, item_id="i2", category_id="c2", quantity=2),
        ev("purchase", "u1", 300, items=[line("i1", "c1"), line("i2", "c2", 2)], currency="EUR", order_id="o1"),
        ev("view", "u1", -7200, session="s0", item_id="i3", category_id="c1"),
        ev("favorite", "u1", 4000, session="s3", item_id="i3", category_id="c1"),
        ev("remove_from_cart", "u1", 4100, session="s3", item_id="i2", category_id="c2"),
        ev("search", "u1", 5, query="shoes", result_item_ids=["i1", "i2"]),
        ev("view", "u2", 10, session="s2", item_id="i1", category_id="c1"),
        ev("add_to_cart", "u2", 20, session="s2", item_id="i1", category_id="c1"),
        ev("add_to_cart", "u2", 30, session="s2", item_id="i3", category_id="c1"),
        ev("add_to_cart", "u2", 40, session="s2", item_id="i2", category_id="c2"),
        ev("impression", "u1", 50, request_id="r1", surface="recommendations", slots=[slot("i1", 0), slot("i2", 1)],
           policy="p", experiment="e1", variant="A"),
        ev("click", "u1", 55, request_id="r1", item_id="i2", position=1),
        ev("impression", "u2", 70, session="s2", request_id="r2", surface="bundles", slots=[slot("b1", 0), slot("b2", 1)],
           experiment="e1", variant="B"),
        ev("click", "u2", 65, session="s2", request_id="r2", bundle_id="b1", position=0),
        ev("bundle_purchase", "u2", 90, session="s2", request_id="r2", bundle_id="b1",
           items=[line("i1", "c1"), line("i4", "c4")], currency="EUR"),
        ev("impression", "u3", 95000, session="s9", request_id="r3", surface="recommendations", slots=[slot("i4", 0)]),
        ev("view", "u3", 95010, session="s9", item_id="i4", category_id="c4"),
    ]


def write_config(settings: Settings, path: Path) -> Path:
    """The settings as a STREAMREC_CONFIG YAML file (for subprocesses)."""
    import yaml

    # Only the sections the pipeline reads: a full dump would tie the file to this process's
    # version of every other section.
    dumped = settings.model_dump(mode="json", include={"kafka", "broker", "data", "pipeline", "feast"})
    path.write_text(yaml.safe_dump(dumped))
    return path


def subprocess_env(config: Path) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env["STREAMREC_CONFIG"] = str(config)
    env["PYTHONUNBUFFERED"] = "1"
    return env
