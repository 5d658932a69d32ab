"""Bundles mined from the event lake (``ray_jobs.data.lake_bundles``) and CrossCBR trained on them.

A hand-computed lake (written through the pipeline's own lake writer) pins the definition: which item
sets become bundles, with which ids and support, which user-bundle interactions fall in which split;
then the time split and stable ids, registration with the bundles' item lists that serving reads,
and ``streamrec train crosscbr --config ray_jobs/configs/crosscbr_lake.yaml`` on Ray (~35 s).
"""

from __future__ import annotations

import hashlib
import uuid

import numpy as np
import pandas as pd
import pytest
import torch

from ray_jobs.cli import cmd_train, registry_name
from ray_jobs.data import load_dataset
from ray_jobs.data.lake_bundles import BundleMining, MinedBundle, bundle_id, load_lake_bundles, mine_lake
from ray_jobs.registry import ModelRegistry, describe_data
from ray_jobs.train import register_outcome
from ray_jobs.trainers.checkpointing import BEST_FILE, save_final
from ray_jobs.trainers.config import JobConfig, TrainConfig
from ray_jobs.trainers.evaluate import evaluate
from ray_jobs.trainers.launch import TrainingOutcome, pin_lake
from serving.app.bundle_candidates import bundle_id_for
from serving.app.embeddings import load_embeddings
from streamrec.cli import build_parser
from support import free_port, make_settings

CATEGORY = {"i1": "c1", "i2": "c2", "i3": "c3", "i4": "c1", "i5": "c2"}
CATALOGUE = [{"id": "cat-1", "items": ["i4", "i1"]}]
# The cuts for test_days = valid_days = 1 (the last event is 2024-01-04T18:00Z).
VALID_FROM, TEST_FROM = pd.Timestamp("2024-01-02T18:00Z"), pd.Timestamp("2024-01-03T18:00Z")


def _category(item: str) -> str:
    return CATEGORY.get(item) or f"c{int(item[1:]) % 5}"


def _event(kind: str, user: str, session: str, ts: str, *items: str) -> dict:
    event = {"schema_version": 1, "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{user}{session}{ts}{kind}")),
             "type": kind, "user_id": user, "session_id": session, "ts": f"2024-01-{ts}Z"}
    if kind == "purchase":
        event["items"] = [{"item_id": i, "quantity": 1, "category_id": _category(i)} for i in items]
    else:
        (item,) = items
        event.update(item_id=item, category_id=_category(item))
    return event


# Baskets (carted or bought within one session):
#   u1/s1 {i1, i2, i3} day 1 (train)        u1/s7 {i1, i3} day 2 (train)      u2/s2 {i1, i2} day 1 (train)
#   u2/s3 {i1, i4} day 2, one purchase      u3/s4 {i2, i3} day 3 (valid)      u3/s5 {i1, i2} day 4 (test)
#   u4/s6 {i4, i5} day 4 (test)
# Views, favourites and removals never make a basket.
EVENTS = [
    _event("view", "u1", "s1", "01T10:00:00", "i1"),
    _event("add_to_cart", "u1", "s1", "01T10:01:00", "i1"),
    _event("add_to_cart", "u1", "s1", "01T10:02:00", "i2"),
    _event("purchase", "u1", "s1", "01T10:03:00", "i3"),
    _event("favorite", "u1", "s1", "01T10:04:00", "i4"),
    _event("view", "u4", "s0", "01T10:30:00", "i5"),
    _event("add_to_cart", "u2", "s2", "01T11:00:00", "i1"),
    _event("remove_from_cart", "u2", "s2", "01T11:01:00", "i5"),
    _event("add_to_cart", "u2", "s2", "01T11:05:00", "i2"),
    _event("purchase", "u2", "s3", "02T09:00:00", "i1", "i4"),
    _event("add_to_cart", "u1", "s7", "02T10:00:00", "i1"),
    _event("add_to_cart", "u1", "s7", "02T10:05:00", "i3"),
    _event("add_to_cart", "u3", "s4", "03T12:00:00", "i2"),
    _event("add_to_cart", "u3", "s4", "03T12:10:00", "i3"),
    _event("add_to_cart", "u3", "s5", "04T10:00:00", "i1"),
    _event("purchase", "u3", "s5", "04T10:20:00", "i2"),
    _event("add_to_cart", "u4", "s6", "04T17:00:00", "i4"),
    _event("add_to_cart", "u4", "s6", "04T18:00:00", "i5"),
]


def _sha1_id(*items: str) -> str:
    """The id computed by hand: ``mb-`` + sha1 of the sorted ids joined by the unit separator."""
    return "mb-" + hashlib.sha1("\x1f".join(sorted(items)).encode()).hexdigest()[:16]


AB, AC, BC, ABC, DE = (_sha1_id("i1", "i2"), _sha1_id("i1", "i3"), _sha1_id("i2", "i3"),
                       _sha1_id("i1", "i2", "i3"), _sha1_id("i4", "i5"))


@pytest.fixture
def tiny_lake(tmp_path_factory, write_lake):
    root = tmp_path_factory.mktemp("bundle_lake") / "events"
    assert write_lake(root, EVENTS) == len(EVENTS)
    return root


def _interactions(mined) -> list[tuple[str, str, str, str]]:
    inter = mined.interactions
    return sorted(zip(inter["split"], inter["user_id"], inter["bundle_id"],
                      inter["ts"].dt.strftime("%dT%H:%M")))


def test_mined_bundles_and_interactions_by_hand(tiny_lake):
    mined = mine_lake(root=str(tiny_lake), catalogue=CATALOGUE, min_support=2)
    # {i1,i2}: u1, u2, u3; {i2,i3}: u1, u3. {i1,i3} only u1 (twice), {i1,i2,i3} only u1: below support.
    assert mined.bundles == sorted([
        MinedBundle("cat-1", ("i1", "i4"), support=1, n_categories=1, source="catalogue"),  # u2's purchase
        MinedBundle(AB, ("i1", "i2"), support=3, n_categories=2),
        MinedBundle(BC, ("i2", "i3"), support=2, n_categories=2),
    ], key=lambda b: b.id)  # sorted by id: cat-1, mb-437b... ({i2,i3}), mb-51c8... ({i1,i2})
    assert (mined.valid_from, mined.test_from) == (VALID_FROM, TEST_FROM)
    # One row per (user, bundle) at the time the second of its items entered a basket, earliest only:
    # u3 reaches {i1,i2} only on day 4; u1's second {i1,i3} basket touches no mined bundle twice.
    assert _interactions(mined) == sorted([
        ("train", "u1", AB, "01T10:02"), ("train", "u1", BC, "01T10:03"), ("train", "u2", AB, "01T11:05"),
        ("train", "u2", "cat-1", "02T09:00"), ("valid", "u3", BC, "03T12:10"), ("test", "u3", AB, "04T10:20"),
    ])
    # The user-item graph: every read item event before the validation cut, views and favourites too.
    assert sorted(map(tuple, mined.user_items.to_numpy())) == [
        ("u1", "i1"), ("u1", "i2"), ("u1", "i3"), ("u1", "i4"), ("u2", "i1"), ("u2", "i2"), ("u2", "i4"),
        ("u4", "i5")]


def test_support_size_and_category_settings(tiny_lake):
    everything = mine_lake(root=str(tiny_lake), catalogue=CATALOGUE, min_support=1)
    by_id = {b.id: b for b in everything.bundles}
    # min_support 1: every co-carted set of 2..3 items; {i1,i4} is the catalogue's, kept under its id.
    assert set(by_id) == {"cat-1", AB, AC, BC, ABC, DE}
    assert (by_id[ABC].items, by_id[ABC].support, by_id[ABC].n_categories) == (("i1", "i2", "i3"), 1, 3)
    assert by_id[DE].n_categories == 2 and by_id["cat-1"].source == "catalogue"
    # u4's day-4 basket {i4,i5} holds only i4 of the catalogue bundle: no interaction with it.
    assert ("test", "u4", DE, "04T18:00") in _interactions(everything)
    assert not any(u == "u4" and b == "cat-1" for _, u, b, _ in _interactions(everything))
    # u3's test basket {i1,i2} holds 2 of {i1,i2,i3}, but u3 reached that bundle on day 3 already.
    assert ("valid", "u3", ABC, "03T12:10") in _interactions(everything)
    # Sessions instead of users: u1's two {i1,i3} baskets count twice.
    sessions = mine_lake(root=str(tiny_lake), min_support=2, support_by="session")
    assert {b.id: b.support for b in sessions.bundles} == {AB: 3, AC: 2, BC: 2}
    pairs = mine_lake(root=str(tiny_lake), min_support=1, max_size=2)
    assert {b.id for b in pairs.bundles} == {AB, AC, BC, _sha1_id("i1", "i4"), DE}
    cross = mine_lake(root=str(tiny_lake), min_support=1, min_categories=3)
    assert [b.id for b in cross.bundles] == [ABC]
    top = mine_lake(root=str(tiny_lake), min_support=1, max_bundles=2)  # most categories, then support
    assert [b.id for b in sorted(top.bundles, key=lambda b: -b.n_categories)] == [ABC, AB]
    # A 10-minute gap rule instead of sessions: u3's day-4 cart and purchase (20 min apart) are two
    # baskets, u2's two carts 5 minutes apart still one.
    gap = mine_lake(root=str(tiny_lake), min_support=1, basket_key="gap", session_gap_s=600)
    assert ("train", "u2", AB, "01T11:05") in _interactions(gap)
    assert not any(u == "u3" and b == AB for _, u, b, _ in _interactions(gap))
    # Mining the training window only: bundles first formed later do not exist.
    train_only = mine_lake(root=str(tiny_lake), min_support=1, mine_from="train")
    assert DE not in {b.id for b in train_only.bundles} and AB in {b.id for b in train_only.bundles}
    with pytest.raises(ValueError, match="max_size"):
        BundleMining(max_size=1)
    with pytest.raises(ValueError, match="basket_types"):
        BundleMining(basket_types=("search",))
    with pytest.raises(ValueError, match="no bundles"):
        mine_lake(root=str(tiny_lake), min_support=5)


def test_interaction_data_time_split_and_ids(tiny_lake):
    data = load_lake_bundles(root=str(tiny_lake), catalogue=CATALOGUE, min_support=2)
    assert data.name == "lake_bundles" and data.bundles is not None
    assert list(data.user_ids) == ["u1", "u2", "u3", "u4"] and list(data.item_ids) == ["cat-1", BC, AB]
    assert list(data.bundles.item_ids) == ["i1", "i2", "i3", "i4", "i5"]
    assert data.bundles.items_of_bundles(data.n_items) == [["i1", "i4"], ["i2", "i3"], ["i1", "i2"]]
    u, b = {x: r for r, x in enumerate(data.user_ids)}, {x: r for r, x in enumerate(data.item_ids)}
    assert sorted(map(tuple, data.train.tolist())) == sorted(
        [(u["u1"], b[AB]), (u["u1"], b[BC]), (u["u2"], b[AB]), (u["u2"], b["cat-1"])])
    assert data.valid.tolist() == [[u["u3"], b[BC]]] and data.test.tolist() == [[u["u3"], b[AB]]]
    assert data.test_excludes_valid  # test ranking masks the user's train and valid bundles
    assert data.bundles.user_item.shape == (8, 2)
    assert sorted(map(tuple, data.bundles.bundle_item.tolist())) == [(0, 0), (0, 3), (1, 1), (1, 2), (2, 0), (2, 1)]
    snap = data.source_snapshot
    assert snap["id"].startswith(f"lake_bundles:{snap['lake_id']}:bundles=3:sha256=")
    assert (snap["valid_from"], snap["test_from"]) == ("2024-01-02T18:00:00Z", "2024-01-03T18:00:00Z")
    # Explicit cuts: everything before 2024-01-04 is train, day 4 is test, no validation day.
    cut = load_lake_bundles(root=str(tiny_lake), catalogue=CATALOGUE, min_support=2,
                            valid_from="2024-01-04T00:00:00Z", test_from="2024-01-04T00:00:00Z")
    assert len(cut.valid) == 0 and cut.test.tolist() == [[u["u3"], b[AB]]] and len(cut.train) == 5
    assert cut.source_snapshot["id"] != snap["id"]  # other cuts, other data


def test_no_held_out_interaction_before_its_cut(taobao_lake):
    """On the whole Taobao slice: train strictly before the validation cut, test at or after the test
    cut, no pair in two splits, and no user-item edge from the held-out days."""
    mined = mine_lake(root=str(taobao_lake), min_support=1)
    inter = mined.interactions
    assert (inter.loc[inter["split"] == "train", "ts"] < mined.valid_from).all()
    valid = inter.loc[inter["split"] == "valid", "ts"]
    assert ((valid >= mined.valid_from) & (valid < mined.test_from)).all()
    assert (inter.loc[inter["split"] == "test", "ts"] >= mined.test_from).all()
    assert mined.test_from == pd.Timestamp("2017-12-02T15:59:23Z")  # 24 h before the last event
    assert not inter.duplicated(["user_id", "bundle_id"]).any()
    assert len(inter[inter["split"] == "test"]) > 100 and len(inter[inter["split"] == "valid"]) > 100
    data = load_lake_bundles(root=str(taobao_lake), min_support=1)
    seen = {tuple(p) for p in np.concatenate([data.train, data.valid]).tolist()}
    assert not seen & {tuple(p) for p in data.test.tolist()}
    assert len(data.bundles.user_item) == len(mined.user_items) < 84_287
    assert all(2 <= len(items) <= 3 for items in data.bundles.items_of_bundles(data.n_items))


def test_ids_are_stable_across_runs_and_a_growing_lake(tiny_lake, tmp_path, write_lake):
    first = load_lake_bundles(root=str(tiny_lake), catalogue=CATALOGUE, min_support=2)
    again = load_lake_bundles(root=str(tiny_lake), catalogue=CATALOGUE, min_support=2)
    assert list(first.item_ids) == list(again.item_ids)
    assert first.source_snapshot["id"] == again.source_snapshot["id"]
    assert AB == bundle_id(["i2", "i1"]) == bundle_id_for(("i1", "i2"), "mb")  # serving's formula
    # A new user carting {i4, i5} later: {i4,i5} becomes a bundle; the old ids are unchanged.
    grown = tmp_path / "events"
    write_lake(grown, EVENTS)
    write_lake(grown, [_event("add_to_cart", "u5", "s9", "04T18:30:00", "i4"),
                       _event("add_to_cart", "u5", "s9", "04T18:31:00", "i5")], start=len(EVENTS))
    later = load_lake_bundles(root=str(grown), catalogue=CATALOGUE, min_support=2)
    assert list(later.item_ids) == ["cat-1", BC, AB, DE]  # sorted ids
    assert later.source_snapshot["lake_id"] != first.source_snapshot["lake_id"]
    # Point-in-time: cut before the new events, the grown lake gives the first lake's data.
    pinned = load_lake_bundles(root=str(grown), catalogue=CATALOGUE, min_support=2,
                               until="2024-01-04T18:00:00Z")
    assert pinned.source_snapshot["id"] == first.source_snapshot["id"]


def test_pin_inlines_the_catalogue_and_pins_the_lake(tiny_lake):
    job = JobConfig.from_yaml("ray_jobs/configs/crosscbr_lake.yaml",
                              {"dataset": {"options": {"root": str(tiny_lake)}}})
    options = pin_lake(job).dataset.options
    assert "catalogue_file" not in options
    assert [b["id"] for b in options["catalogue"]] == [
        "starter-kit", "trending-mix", "daily-picks", "home-and-style", "weekend-set"]  # experiments.yaml
    assert options["until"] == "2024-01-04T18:00:00Z" and options["expect_snapshot"].startswith("lake:")
    data = load_dataset("lake_bundles", **options)
    assert data.source_snapshot["lake_id"] == options["expect_snapshot"]
    assert {"starter-kit", AB, BC} <= set(data.item_ids)


def test_crosscbr_registers_bundles_that_serving_loads(tiny_lake, fit_local, tmp_path):
    """What a lake CrossCBR registers: bundle embeddings with their raw ids and item lists, which
    serving's registry loader turns into a bundle table with ``bundle_items``."""
    data = load_lake_bundles(root=str(tiny_lake), catalogue=CATALOGUE, min_support=1)
    model = fit_local("crosscbr", data, epochs=2, overrides={"embedding_dim": 8, "batch_size": 4})
    full = TrainConfig(protocol="full", ks=[2], monitor="recall@2")
    report = evaluate(model, data, "test", full)
    assert report.n_users == 2 and 0.0 <= report.metrics["recall@2"] <= 1.0  # u3 and u4 hold test bundles
    job = JobConfig(name="crosscbr_lake", model="crosscbr", model_params={"embedding_dim": 8},
                    dataset={"name": "lake_bundles", "options": {"root": str(tiny_lake)}})
    run = tmp_path / "run"
    save_final(run, model.export_embeddings(), report.metrics, describe_data(data))
    torch.save(model.state_dict(), run / BEST_FILE)
    outcome = TrainingOutcome(metrics=report.metrics, artifacts_dir=run, job=job, run_name="r")
    # No broker: registration's deletion step reads no tombstone (a warning), and drops nobody.
    settings = make_settings(tmp_path / "state", free_port(), kafka={"metadata_timeout_s": 0.5})
    register_outcome(outcome, str(tmp_path / "registry"), name="crosscbr", settings=settings)

    manifest = ModelRegistry(tmp_path / "registry").load_latest("crosscbr").manifest
    assert manifest["ids"]["bundle"] == list(data.item_ids) and manifest["ids"]["user"] == list(data.user_ids)
    assert manifest["ids"]["item"] == list(data.bundles.item_ids)
    assert manifest["bundle_items"][list(data.item_ids).index(AB)] == ["i1", "i2"]
    assert manifest["data_snapshot_id"] == data.source_snapshot["id"]
    table = load_embeddings(tmp_path / "registry", "crosscbr", "bundle")
    assert table is not None and table.ids == list(data.item_ids) and table.matrix.shape == (data.n_items, 16)
    assert table.extra["bundle_items"][table.row_of["cat-1"]] == ("i1", "i4")
    assert table.extra["bundle_items"][table.row_of[DE]] == ("i4", "i5")


def test_serve_as_bundle_names(tmp_path):
    settings = make_settings(tmp_path / "state", free_port())
    s = settings.serving
    assert registry_name("crosscbr", "lake_bundles", "crosscbr_lake", settings) == s.bundle_model == "crosscbr"
    assert registry_name("crosscbr", "youshu", "crosscbr_youshu", settings) == "crosscbr_youshu"
    assert registry_name("lightgcn", "lake_bundles", "lightgcn_lb", settings) == "lightgcn_lb"  # rows are bundles
    assert registry_name("sasrec", "lake_bundles", "sasrec_lb", settings) == "sasrec_lb"


def _shopping_days(n_users: int, seed: int = 0) -> list[dict]:
    """Seeded shoppers over 40 items in 5 categories: each views 2 items and carts 3 per session, one
    session on each of days 1-4 (train, train, valid, test): a few hundred bundles."""
    rng = np.random.default_rng(seed)
    items = [f"i{k:02d}" for k in range(40)]
    events = []
    for u in range(n_users):
        for day in range(1, 5):
            picks = rng.choice(items, size=5, replace=False)
            for minute, (kind, item) in enumerate(zip(["view"] * 2 + ["add_to_cart"] * 3, picks)):
                events.append(_event(kind, f"v{u}", f"v{u}-d{day}", f"0{day}T12:{minute:02d}:00", item))
    return events


@pytest.mark.ray  # ~35 s on the shared 2-core box (Ray start-up included): not marked slow
def test_streamrec_train_crosscbr_on_the_lake_publishes_the_bundle_model(ray_local, tiny_lake, tmp_path, capsys,
                                                                         write_lake):
    """`streamrec train crosscbr --config crosscbr_lake.yaml` on a small lake: 2 epochs on Ray Train,
    published under serving.bundle_model with the catalogue, the pinned lake and the bundle item lists."""
    write_lake(tiny_lake, _shopping_days(24), start=len(EVENTS))
    settings = make_settings(tmp_path / "state", free_port())
    args = build_parser().parse_args([
        "train", "crosscbr", "--config", "ray_jobs/configs/crosscbr_lake.yaml", "--epochs", "2",
        "--lake-root", str(tiny_lake), "--storage-path", str(tmp_path / "rr"), "--private-ray",
    ])  # --private-ray: never a stack's head; the module's Ray instance is the one in use
    assert cmd_train(args, settings) == 0
    assert "serving.bundle_model" in capsys.readouterr().out
    registered = ModelRegistry(settings.data.state_dir / "registry").load_latest(settings.serving.bundle_model)
    manifest = registered.manifest
    assert manifest["model"] == "crosscbr" and manifest["dataset"] == "lake_bundles"
    assert manifest["metrics"]["test/protocol"].startswith("full ranking")
    assert "test/recall@20" in manifest["metrics"] and "test/ndcg@20" in manifest["metrics"]
    options = registered.config["dataset"]["options"]
    assert options["expect_snapshot"] == manifest["data_snapshot"]["lake_id"]
    assert len(options["catalogue"]) == 5 and manifest["data_snapshot_id"].startswith("lake_bundles:lake:")
    ids = manifest["ids"]["bundle"]
    assert "starter-kit" in ids and AB in ids and manifest["bundle_items"][ids.index(AB)] == ["i1", "i2"]
    assert registered.embeddings["bundle"].shape == (len(ids), 2 * 64)  # [item-level; bundle-level] views
    assert len(ids) > 100 and manifest["metrics"]["test/n_users"] >= 24
