"""The event-lake adapter on a lake written by the feature pipeline's own writer from real Taobao events.

Checked: the split and raw ids equal the Taobao CSV adapter's (the lake is the same data through the
production path); ``until`` really cuts at event time (a case where a leak changes the split); the
behaviour filter; the snapshot id (stable on re-reads and re-runs of the same offsets, changed by new
events, blind to events after the cut-off); URI roots; the driver pinning every worker to one snapshot.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import pytest

from ray_jobs.data import LakeChangedError, load_dataset
from ray_jobs.data.lake import read_lake_snapshot
from ray_jobs.trainers.config import JobConfig
from ray_jobs.trainers.launch import pin_lake

CUTOFF = "2017-12-01T12:00:00Z"  # mid-day: partitions after its date are pruned, that date is filtered


def _raw_pairs(data, split: str) -> list[tuple[str, str]]:
    pairs = getattr(data, split)
    return sorted(zip(data.user_ids[pairs[:, 0]].astype(str), data.item_ids[pairs[:, 1]].astype(str)))


def _csv_frame(datasets_dir) -> pd.DataFrame:
    path = datasets_dir / "taobao_userbehavior_subset" / "UserBehavior_head.csv"
    return pd.read_csv(path, header=None, names=["user", "item", "category", "behavior", "ts"], dtype=str)


def test_lake_equals_the_taobao_adapter(taobao_lake, datasets_dir):
    lake = load_dataset("lake", root=str(taobao_lake))
    taobao = load_dataset("taobao", datasets_dir)
    assert (lake.n_users, lake.n_items, lake.sequential) == (taobao.n_users, taobao.n_items, True)
    for split in ("train", "valid", "test"):
        assert _raw_pairs(lake, split) == _raw_pairs(taobao, split), split
    # raw ids are the source's strings, in sorted order (what the registry stores for serving)
    assert set(lake.item_ids) == {str(i) for i in taobao.item_ids}
    assert list(lake.user_ids) == sorted(lake.user_ids)
    # the same category partition of the items (codes differ: string vs integer order)
    by_raw = dict(zip(taobao.item_ids.astype(str), taobao.item_category))
    pairs = {(int(c), int(by_raw[i])) for i, c in zip(lake.item_ids, lake.item_category)}
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})
    snap = lake.source_snapshot
    assert snap["rows"] == 84_287 and snap["max_event_time"] == "2017-12-03T15:59:23Z"
    assert snap["id"].startswith("lake:2017-09-11..2017-12-03(")


def test_until_cuts_at_event_time(taobao_lake, datasets_dir):
    cutoff = datetime.fromisoformat(CUTOFF)
    full = load_dataset("lake", root=str(taobao_lake))
    cut = load_dataset("lake", root=str(taobao_lake), until=CUTOFF)
    # The expectation, computed independently from the CSV: rows with timestamp <= cutoff.
    csv = _csv_frame(datasets_dir)
    kept = csv[csv["ts"].astype(int) <= int(cutoff.timestamp())]
    assert cut.source_snapshot["rows"] == len(kept) < len(csv)
    assert set(cut.item_ids) == set(kept["item"]) and set(cut.user_ids) == set(kept["user"])
    assert pd.Timestamp(cut.source_snapshot["max_event_time"]) <= cutoff
    # A leak would show: most users' held-out item changes when later events are read.
    changed = set(_raw_pairs(full, "test")) - set(_raw_pairs(cut, "test"))
    assert len(changed) > 100
    late_items = set(csv["item"]) - set(kept["item"])  # items first seen after the cut-off
    assert late_items and not late_items & set(cut.item_ids)
    assert {i for _, i in _raw_pairs(cut, "test")} <= set(kept["item"])


def test_until_is_inclusive_and_read_as_utc(taobao_lake, taobao_events):
    first = taobao_events[0]["ts"]  # the earliest event: a cut-off exactly there keeps it
    exact = read_lake_snapshot(taobao_lake, until=first)
    same_naive = read_lake_snapshot(taobao_lake, until=first.rstrip("Z"))  # no offset: UTC
    before = read_lake_snapshot(taobao_lake, until=datetime.fromisoformat(first) - pd.Timedelta(seconds=1))
    n_first = sum(e["ts"] == first for e in taobao_events)
    assert exact.rows == same_naive.rows == n_first and before.rows == 0
    assert exact.id == same_naive.id


def test_behaviour_filter_matches_taobao_behaviours(taobao_lake, datasets_dir):
    lake = load_dataset("lake", root=str(taobao_lake), event_types=["add_to_cart", "purchase"])
    taobao = load_dataset("taobao", datasets_dir, behaviors=("cart", "buy"))
    for split in ("train", "valid", "test"):
        assert _raw_pairs(lake, split) == _raw_pairs(taobao, split), split
    assert lake.source_snapshot["event_types"] == ["add_to_cart", "purchase"]
    with pytest.raises(ValueError, match="event_types"):
        load_dataset("lake", root=str(taobao_lake), event_types=["remove_from_cart"])


def test_snapshot_id_is_stable_and_tracks_the_lake(taobao_events, write_lake, tmp_path):
    root = tmp_path / "events"
    head, tail = taobao_events[:20_000], taobao_events[20_000:20_500]
    write_lake(root, head)
    first = read_lake_snapshot(root)
    assert read_lake_snapshot(root) == first  # re-read
    assert read_lake_snapshot(f"file://{root}").id == first.id  # URI root, same data
    write_lake(root, head)  # the pipeline re-running the same offsets replaces, never duplicates
    assert read_lake_snapshot(root).id == first.id
    write_lake(root, head[:300], start=len(head))  # the topic carrying duplicates: de-duplicated by event_id
    assert read_lake_snapshot(root).id == first.id
    pinned = read_lake_snapshot(root, until=first.max_event_time)
    assert pinned.id == first.id  # pinning the cut-off to the latest event changes nothing
    write_lake(root, tail, start=len(head) + 300)  # new, later events
    grown = read_lake_snapshot(root)
    assert grown.id != first.id and grown.rows == first.rows + len({e["event_id"] for e in tail})
    assert grown.max_event_time > first.max_event_time
    assert read_lake_snapshot(root, until=first.max_event_time).id == first.id  # point-in-time is blind to them


def test_missing_or_empty_lake(tmp_path, write_lake, taobao_events):
    with pytest.raises(FileNotFoundError, match="feature pipeline"):
        load_dataset("lake", root=str(tmp_path / "nothing"))
    write_lake(tmp_path / "events", taobao_events[:50])
    with pytest.raises(ValueError, match="no \\['purchase'\\] events"):
        load_dataset("lake", root=str(tmp_path / "events"), event_types=["purchase"], until=taobao_events[0]["ts"])


def test_driver_pins_every_worker_to_one_snapshot(taobao_events, write_lake, tmp_path):
    root = tmp_path / "events"
    write_lake(root, taobao_events[:5_000])
    job = JobConfig(name="j", model="lightgcn", dataset={"name": "lake", "options": {"root": str(root)}})
    pinned = pin_lake(job).dataset.options
    snap = read_lake_snapshot(root)
    assert pinned["until"] == snap.max_event_time and pinned["expect_snapshot"] == snap.id
    assert load_dataset("lake", **pinned).source_snapshot["id"] == snap.id
    # A late event inside the pinned window arrives: a worker reading now must refuse to train.
    late = dict(taobao_events[0], event_id="00000000-0000-4000-8000-000000000001")
    write_lake(root, [late], start=5_000)
    with pytest.raises(LakeChangedError):
        load_dataset("lake", **pinned)
    # Events after the pinned cut-off do not disturb it.
    write_lake(root, taobao_events[5_000:5_100], start=5_001)
    options = pin_lake(job).dataset.options
    assert load_dataset("lake", **options).source_snapshot["id"] == options["expect_snapshot"]
    assert options["expect_snapshot"] != pinned["expect_snapshot"]
    assert read_lake_snapshot(root, until=options["until"]).rows == 5_000 + 1 + 100
    empty = JobConfig(name="j", model="lightgcn", dataset={"name": "lake", "options": {
        "root": str(root), "until": "2001-01-01T00:00:00Z"}})
    with pytest.raises(ValueError, match="nothing to train on"):
        pin_lake(empty)


def test_default_root_is_the_pipelines(monkeypatch, tmp_path):
    from ray_jobs.data.lake import default_lake_root, lake_root_of
    from streamrec.runtime.config import reload_settings
    from support import free_port, make_settings

    settings = make_settings(tmp_path / "state", free_port())
    assert lake_root_of(settings) == tmp_path.resolve() / "state" / "lake" / "events"
    monkeypatch.setenv("STREAMREC_DATA__STATE_DIR", str(tmp_path / "other"))
    try:
        reload_settings()
        assert default_lake_root() == (tmp_path / "other").resolve() / "lake" / "events"
    finally:
        monkeypatch.undo()
        reload_settings()
