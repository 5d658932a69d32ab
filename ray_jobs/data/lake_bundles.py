"""Bundles mined from the event lake, and the user-bundle data CrossCBR trains on (dataset ``lake_bundles``).

Youshu's bundles have integer ids the live catalogue does not know, so a bundle model trained on it
never serves. This adapter defines bundles from what shoppers actually put together, in the lake
the collector's events end up in (read point-in-time and de-duplicated exactly like ``lake``):

* **basket**: the distinct items one user carted or bought (``add_to_cart``, and the line items of
  ``purchase`` and ``bundle_purchase``: ``basket_types``) within one session. With
  ``basket_key="session"`` a basket is one ``(user_id, session_id)`` (the Taobao replay starts a new
  session after 30 minutes of inactivity, ``streamrec.replay``); ``"gap"`` ignores session ids and
  starts a user's next basket when two consecutive basket events are more than ``session_gap_s``
  apart (for clients whose session ids span a day); ``"both"`` starts one on either. An item enters a
  basket at its first basket event there.
* **mined bundle**: a set of 2..``max_size`` items found together in the baskets of at least
  ``min_support`` distinct users (``support_by="user"``; ``"session"`` counts baskets), spanning at
  least ``min_categories`` categories. A basket of more than ``max_basket_items`` items contributes
  the subsets of its first ``max_basket_items`` items only (the subsets grow as n^3). When more than
  ``max_bundles`` qualify, cross-category sets win: ordered by category count, then support, then id.
  Id: ``<prefix>-<16 hex>``, the sha1 of the sorted item ids joined by ``\\x1f`` (the formula of
  serving's ``bundle_id_for``), so the same set keeps its id in every retrain.
* **catalogue bundles** (``catalogue``: ``[{id, items}]``, or ``catalogue_file``: a YAML file with a
  top-level ``catalogue:`` list such as ``deploy/local/experiments.yaml``) are always included under
  their own ids; a mined set equal to a catalogue bundle's items is dropped for it.
* **interaction**: user ``u`` interacts with bundle ``b`` when one of ``u``'s baskets holds at least
  2 of ``b``'s items (both, for a 2-item bundle); its time is when the second of those items entered
  the basket. A ``(user, bundle)`` pair counts once, at its earliest time.
* **time split**: ``end`` is the latest event read. Test: interactions at or after ``test_from``
  (default ``end - test_days``); valid: ``[valid_from, test_from)`` (default ``valid_from = test_from -
  valid_days``); train: before ``valid_from``. Pairs are unique across splits, so a held-out pair was
  never seen before; test ranking masks the user's train and valid bundles (``test_excludes_valid``).
* **graphs**: user-item = the item interactions of ``event_types`` strictly before ``valid_from`` (no
  look-ahead); bundle-item = the membership of every bundle.
* ``mine_from="all"`` (default) mines the bundles from every basket up to ``end``, like a bundle
  catalogue known at test time (as in Youshu): a bundle first formed in the test window is then cold
  (no training interaction; only its items' training interactions can rank it). ``"train"`` mines
  from basket events before ``valid_from`` only.

:func:`mine_lake` returns the mined bundles (with support and category count), the interactions with
their split and the user-item pairs; :func:`load_lake_bundles` (the ``lake_bundles`` dataset) indexes
them. Users, atomic items and bundles are indexed in sorted raw-id order; ``user_ids``, ``item_ids``
(the bundle ids) and ``bundles.item_ids`` (the atomic items) keep the raw ids, so the registry ships
each bundle's item list (manifest ``bundle_items``) for serving. ``source_snapshot`` is the lake
snapshot with ``id`` replaced by ``lake_bundles:<lake snapshot id>:bundles=<n>:sha256=<16 hex>``
(hash of the mining settings, the cuts and the bundles) and the lake's own id in ``lake_id``.

Example (the Taobao slice replayed into a lake; no item set there is carted by two users):
    >>> data = load_lake_bundles(root="/state/lake/events", min_support=1)  # doctest: +SKIP
    >>> data.summary()  # doctest: +SKIP
    'lake_bundles: 814 users, 9209 items, train 6874, valid 1181, test 1154'
    >>> data.item_ids[0], data.bundles.items_of_bundles(data.n_items)[0]  # doctest: +SKIP
    ('mb-00106bdbe9621460', ['1549622', '2186418', '2790816'])
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml

from features.entities import bundle_id_for
from ray_jobs.data.dataset import BundleGraphs, InteractionData
from ray_jobs.data.lake import EVENT_TYPES, LakeSnapshot, parse_until, read_lake_events

__all__ = [
    "load_lake_bundles",
    "mine_lake",
    "LakeBundles",
    "BundleMining",
    "MinedBundle",
    "item_rows",
    "baskets_of",
    "mine_bundles",
    "bundle_interactions",
    "split_cuts",
    "bundle_id",
    "read_catalogue",
    "BUNDLE_EVENT_TYPES",
    "BASKET_TYPES",
]

# Read from the lake: the item interactions of the user-item graph, and the basket events among them.
BUNDLE_EVENT_TYPES = ("view", "add_to_cart", "favorite", "purchase", "bundle_purchase")
BASKET_TYPES = ("add_to_cart", "purchase", "bundle_purchase")
_LINE_ITEM_TYPES = ("purchase", "bundle_purchase")
_REPO_ROOT = Path(__file__).resolve().parents[2]
_ROW_COLUMNS = ["type", "user_id", "session_id", "ts", "item_id", "category_id", "order"]
_BASKET_COLUMNS = ["basket", "user_id", "item_id", "ts"]


def bundle_id(items: Iterable[str], prefix: str = "mb") -> str:
    """The stable id of an item set: the contract's ``features.entities.bundle_id_for``, which
    serving uses for the bundles it builds.

    Example:
        >>> bundle_id(["b", "a"]) == bundle_id(("a", "b"))
        True
    """
    return bundle_id_for(items, prefix)


@dataclass(frozen=True)
class BundleMining:
    """How baskets are cut and which item sets become bundles (see the module docstring).

    Attributes:
        max_size: largest mined set (serving shows ``serving.bundle_size`` = 3 items).
        min_support: distinct users (or baskets, see ``support_by``) a set needs.
        support_by: ``"user"``: a user repeating a set in many sessions counts once; ``"session"``.
        min_categories: distinct item categories a mined set needs (2: cross-category only).
        max_basket_items: only the first this many items of a basket form subsets.
        max_bundles: keep at most this many mined sets (most categories, then support, then id).
        basket_types: event types whose items go into a basket.
        basket_key: ``"session"``, ``"gap"`` or ``"both"``: what starts a new basket.
        session_gap_s: the inactivity gap of ``"gap"`` / ``"both"``, seconds.
        prefix: id prefix of mined bundles.
    """

    max_size: int = 3
    min_support: int = 2
    support_by: Literal["user", "session"] = "user"
    min_categories: int = 1
    max_basket_items: int = 10
    max_bundles: int | None = None
    basket_types: tuple[str, ...] = BASKET_TYPES
    basket_key: Literal["session", "gap", "both"] = "session"
    session_gap_s: float = 1800.0
    prefix: str = "mb"

    def __post_init__(self) -> None:
        object.__setattr__(self, "basket_types", tuple(self.basket_types))
        if self.max_size < 2:
            raise ValueError(f"max_size must be >= 2, got {self.max_size}")
        if self.min_support < 1 or self.min_categories < 1:
            raise ValueError("min_support and min_categories must be >= 1")
        if self.max_basket_items < self.max_size:
            raise ValueError(f"max_basket_items ({self.max_basket_items}) must be >= max_size ({self.max_size})")
        if self.max_bundles is not None and self.max_bundles < 1:
            raise ValueError("max_bundles must be positive (or None)")
        if self.support_by not in ("user", "session"):
            raise ValueError(f"support_by must be 'user' or 'session', got {self.support_by!r}")
        if self.basket_key not in ("session", "gap", "both"):
            raise ValueError(f"basket_key must be 'session', 'gap' or 'both', got {self.basket_key!r}")
        if self.session_gap_s <= 0:
            raise ValueError("session_gap_s must be positive")
        unknown = set(self.basket_types) - set(BUNDLE_EVENT_TYPES)
        if unknown or not self.basket_types:
            raise ValueError(f"basket_types must be a non-empty subset of {BUNDLE_EVENT_TYPES}")
        if not self.prefix or "-" in self.prefix:
            raise ValueError(f"prefix must be non-empty without '-', got {self.prefix!r}")


@dataclass(frozen=True)
class MinedBundle:
    """One bundle: ``items`` sorted; ``support`` as counted by ``BundleMining.support_by`` (also for
    catalogue bundles, whose whole item set must be in a basket); ``source`` ``mined`` or ``catalogue``."""

    id: str
    items: tuple[str, ...]
    support: int
    n_categories: int
    source: Literal["mined", "catalogue"] = "mined"


# -- events -> item rows -> baskets -----------------------------------------------------------


def item_rows(events: pd.DataFrame) -> pd.DataFrame:
    """One row per (event, item) of lake events (``read_lake_events``' frame): ``type, user_id,
    session_id, ts, item_id, category_id, order`` (``order`` = lake order); a purchase or
    bundle_purchase gives one row per line item, an event without an item (a bundle click) none."""
    rows: list[tuple[Any, ...]] = []
    for order, (kind, user, ts, raw) in enumerate(
            zip(events["type"], events["user_id"], events["ts"], events["event_json"])):
        event = json.loads(raw)
        session = event.get("session_id")
        if kind in _LINE_ITEM_TYPES:
            rows.extend((kind, user, session, ts, line["item_id"], line.get("category_id"), order)
                        for line in event["items"])
        elif event.get("item_id") is not None:
            rows.append((kind, user, session, ts, event["item_id"], event.get("category_id"), order))
    frame = pd.DataFrame(rows, columns=_ROW_COLUMNS)
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame


def baskets_of(rows: pd.DataFrame, mining: BundleMining) -> pd.DataFrame:
    """The baskets of :func:`item_rows`: one row per (basket, item) with the item's first time there,
    columns ``basket, user_id, item_id, ts``. Baskets are numbered in (user, session, time) order
    (``"gap"``: (user, time)); a basket's items are in the order they entered it."""
    b = rows[rows["type"].isin(mining.basket_types)]
    if b.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in _BASKET_COLUMNS})
    by_session = mining.basket_key in ("session", "both")
    b = b.assign(session_id=b["session_id"].astype(str))
    keys = ["user_id", "session_id", "ts", "order"] if by_session else ["user_id", "ts", "order"]
    b = b.sort_values(keys, kind="stable")
    user = b["user_id"].to_numpy()
    new = np.ones(len(b), dtype=bool)
    new[1:] = user[1:] != user[:-1]
    if by_session:
        session = b["session_id"].to_numpy()
        new[1:] |= session[1:] != session[:-1]
    if mining.basket_key in ("gap", "both"):
        gap = b["ts"].diff().dt.total_seconds().to_numpy()
        new[1:] |= gap[1:] > mining.session_gap_s
    b = b.assign(basket=np.cumsum(new) - 1)
    b = b.drop_duplicates(["basket", "item_id"], keep="first")  # an item enters a basket once
    return b[_BASKET_COLUMNS].reset_index(drop=True)


def _item_categories(rows: pd.DataFrame) -> dict[str, str]:
    """Item -> the first category seen for it (in lake order)."""
    known = rows.dropna(subset=["category_id"]).sort_values("order", kind="stable")
    return dict(known.drop_duplicates("item_id")[["item_id", "category_id"]].itertuples(index=False, name=None))


# -- mining ---------------------------------------------------------------------------------


def _grouped(baskets: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """``(user, items in entry order)`` per basket, in basket order."""
    out: list[tuple[str, list[str]]] = []
    for _, g in baskets.groupby("basket", sort=True):
        out.append((str(g["user_id"].iloc[0]), [str(i) for i in g["item_id"]]))
    return out


def _n_categories(items: Iterable[str], categories: Mapping[str, str]) -> int:
    return len({categories[i] for i in items if categories.get(i) is not None})


def mine_bundles(baskets: pd.DataFrame, mining: BundleMining, categories: Mapping[str, str] | None = None,
                 catalogue: Sequence[Mapping[str, Any]] = ()) -> list[MinedBundle]:
    """The bundles of ``baskets`` (:func:`baskets_of`) and ``catalogue``, sorted by id.

    Args:
        baskets: ``basket, user_id, item_id, ts`` rows (items in entry order within a basket).
        mining: support, size and category thresholds.
        categories: item -> category (items without one add no category).
        catalogue: ``{"id": ..., "items": [...]}`` bundles, always kept under their own ids.

    Returns:
        :class:`MinedBundle` per mined set and per catalogue bundle, sorted by id.
    """
    categories = categories or {}
    grouped = _grouped(baskets)
    supporters: dict[tuple[str, ...], set[Any]] = defaultdict(set)
    for basket_no, (user, items) in enumerate(grouped):
        key = user if mining.support_by == "user" else basket_no
        head = sorted(items[: mining.max_basket_items])
        for size in range(2, min(mining.max_size, len(head)) + 1):
            for combo in itertools.combinations(head, size):
                supporters[combo].add(key)
    catalogue_sets = {tuple(sorted(str(i) for i in b["items"])) for b in catalogue}
    mined = [
        MinedBundle(bundle_id(items, mining.prefix), items, len(keys), _n_categories(items, categories))
        for items, keys in supporters.items()
        if len(keys) >= mining.min_support and items not in catalogue_sets
    ]
    mined = [b for b in mined if b.n_categories >= mining.min_categories]
    if mining.max_bundles is not None and len(mined) > mining.max_bundles:
        mined = sorted(mined, key=lambda b: (-b.n_categories, -b.support, b.id))[: mining.max_bundles]
    basket_sets = [(user if mining.support_by == "user" else n, set(items)) for n, (user, items) in enumerate(grouped)]
    for spec in catalogue:
        members = tuple(sorted(str(i) for i in spec["items"]))
        support = len({key for key, s in basket_sets if s.issuperset(members)})
        mined.append(MinedBundle(str(spec["id"]), members, support, _n_categories(members, categories), "catalogue"))
    ids = [b.id for b in mined]
    if len(set(ids)) != len(ids):
        raise ValueError("bundle ids are not unique (a catalogue id repeats, or equals a mined id)")
    return sorted(mined, key=lambda b: b.id)


def bundle_interactions(baskets: pd.DataFrame, bundles: Sequence[MinedBundle]) -> pd.DataFrame:
    """User-bundle interactions: ``user_id, bundle_id, ts``, one row per pair at its earliest time.

    A basket interacts with every bundle of which it holds at least 2 items, at the time the second
    of them entered the basket.
    """
    of_item: dict[str, list[int]] = defaultdict(list)
    for row, b in enumerate(bundles):
        for item in b.items:
            of_item[item].append(row)
    rows: list[tuple[str, str, pd.Timestamp]] = []
    for _, g in baskets.groupby("basket", sort=True):
        user = str(g["user_id"].iloc[0])
        times: dict[int, list[pd.Timestamp]] = defaultdict(list)
        for item, ts in zip(g["item_id"], g["ts"]):  # entry order: times ascend within a bundle
            for row in of_item.get(str(item), ()):
                times[row].append(ts)
        rows.extend((user, bundles[row].id, sorted(t)[1]) for row, t in times.items() if len(t) >= 2)
    frame = pd.DataFrame(rows, columns=["user_id", "bundle_id", "ts"])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    frame = frame.sort_values(["ts", "user_id", "bundle_id"], kind="stable")
    return frame.drop_duplicates(["user_id", "bundle_id"], keep="first").reset_index(drop=True)


# -- split, catalogue, adapter ----------------------------------------------------------------


def split_cuts(end: pd.Timestamp, valid_days: float = 1.0, test_days: float = 1.0,
               valid_from: str | datetime | None = None,
               test_from: str | datetime | None = None) -> tuple[pd.Timestamp, pd.Timestamp]:
    """``(valid_from, test_from)``: explicit times when given, else counted back from ``end``.

    Example:
        >>> split_cuts(pd.Timestamp("2017-12-03T12:00:00Z"))
        (Timestamp('2017-12-01 12:00:00+0000', tz='UTC'), Timestamp('2017-12-02 12:00:00+0000', tz='UTC'))
    """
    if valid_days < 0 or test_days <= 0:
        raise ValueError("test_days must be positive and valid_days non-negative")
    test = pd.Timestamp(parse_until(test_from)) if test_from is not None else end - timedelta(days=test_days)
    valid = (pd.Timestamp(parse_until(valid_from)) if valid_from is not None
             else test - timedelta(days=valid_days))
    if valid > test:
        raise ValueError(f"valid_from ({valid}) is after test_from ({test})")
    return valid, test


def read_catalogue(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The ``catalogue:`` list (``{id, items}``) of a YAML file such as ``deploy/local/experiments.yaml``;
    a relative path that is not found from the working directory is read from the repository root."""
    p = Path(path)
    if not p.is_absolute() and not p.exists():
        p = _REPO_ROOT / p
    doc = yaml.safe_load(p.read_text()) or {}
    return [{"id": str(b["id"]), "items": [str(i) for i in b["items"]]} for b in doc.get("catalogue", [])]


def _index(values: Iterable[str]) -> tuple[np.ndarray, dict[str, int]]:
    ids = np.array(sorted(set(values)), dtype=object)
    return ids, {v: r for r, v in enumerate(ids)}


def _pairs(a: Iterable[int], b: Iterable[int]) -> np.ndarray:
    out = np.array(list(zip(a, b)), dtype=np.int64)
    return out.reshape(-1, 2)


def _iso(ts: pd.Timestamp) -> str:
    return ts.tz_convert("UTC").isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class LakeBundles:
    """Everything mined from one lake read, before indexing (what :func:`load_lake_bundles` indexes).

    Attributes:
        bundles: mined and catalogue bundles, sorted by id.
        interactions: ``user_id, bundle_id, ts, split`` (``train`` / ``valid`` / ``test``), one row
            per pair at its earliest time, in time order.
        user_items: the user-item graph's ``user_id, item_id`` pairs (before ``valid_from``).
        valid_from, test_from: the split's cuts.
        lake: the lake snapshot read.
        settings: mining settings and cuts, JSON-ready (hashed into the data snapshot id).
    """

    bundles: list[MinedBundle]
    interactions: pd.DataFrame
    user_items: pd.DataFrame
    valid_from: pd.Timestamp
    test_from: pd.Timestamp
    lake: LakeSnapshot
    settings: dict[str, Any]

    def snapshot(self) -> dict[str, Any]:
        """The lake snapshot's dict with ``id`` = ``lake_bundles:<lake id>:bundles=<n>:sha256=<16 hex>``
        (the mining settings, cuts and bundles hashed) and the lake's own id as ``lake_id``."""
        digest = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode())
        digest.update("\n".join(f"{b.id}\t{','.join(b.items)}" for b in self.bundles).encode())
        lake = self.lake.as_dict()
        n = len(self.bundles)
        return {**lake, **self.settings, "lake_id": lake["id"], "bundles": n,
                "id": f"lake_bundles:{lake['id']}:bundles={n}:sha256={digest.hexdigest()[:16]}"}


def mine_lake(
    root: str | os.PathLike[str] | None = None,
    until: str | datetime | None = None,
    event_types: Sequence[str] = BUNDLE_EVENT_TYPES,
    expect_snapshot: str | None = None,
    catalogue: Sequence[Mapping[str, Any]] | None = None,
    catalogue_file: str | None = None,
    valid_days: float = 1.0,
    test_days: float = 1.0,
    valid_from: str | None = None,
    test_from: str | None = None,
    mine_from: Literal["all", "train"] = "all",
    **mining: Any,
) -> LakeBundles:
    """Read the lake point-in-time and mine its bundles, interactions and user-item graph.

    Args:
        root, until, expect_snapshot: as :func:`ray_jobs.data.lake.load_lake` (``expect_snapshot`` is
            the *lake* snapshot id, which the launcher pins).
        event_types: event types read: the user-item graph's, and the basket types among them.
        catalogue, catalogue_file: catalogue bundles (``[{id, items}]``) inline and/or from a YAML
            file's ``catalogue:`` (the launcher inlines the file when it pins the job).
        valid_days, test_days, valid_from, test_from: the time split (see :func:`split_cuts`).
        mine_from: ``"all"`` baskets up to the end, or only ``"train"`` basket events.
        **mining: :class:`BundleMining` fields (``min_support``, ``max_size``, ...).

    Raises:
        LakeChangedError: the lake no longer gives ``expect_snapshot``.
        ValueError: no events, no bundles, or bad settings.
    """
    cfg = BundleMining(**mining)
    types = tuple(event_types)
    if not set(cfg.basket_types) <= set(types) or not set(types) <= set(EVENT_TYPES):
        raise ValueError(f"event_types {list(types)} must be lake event types and include the basket "
                         f"types {list(cfg.basket_types)}")
    if mine_from not in ("all", "train"):
        raise ValueError(f"mine_from must be 'all' or 'train', got {mine_from!r}")
    events, snapshot = read_lake_events(root, until, types, expect_snapshot)
    rows = item_rows(events)
    if rows.empty:
        raise ValueError(f"no {list(types)} events in the lake at {snapshot.root}")
    valid_cut, test_cut = split_cuts(rows["ts"].max(), valid_days, test_days, valid_from, test_from)
    all_catalogue = [*(catalogue or ()), *(read_catalogue(catalogue_file) if catalogue_file else ())]
    baskets = baskets_of(rows, cfg)
    mined_from = baskets if mine_from == "all" else baskets[baskets["ts"] < valid_cut]
    bundles = mine_bundles(mined_from, cfg, _item_categories(rows), all_catalogue)
    if not bundles:
        raise ValueError(f"no bundles: no item set reaches min_support={cfg.min_support} in the lake at "
                         f"{snapshot.root} and no catalogue was given")
    inter = bundle_interactions(baskets, bundles)
    inter["split"] = np.where(inter["ts"] < valid_cut, "train", np.where(inter["ts"] < test_cut, "valid", "test"))
    ui = rows[rows["ts"] < valid_cut].drop_duplicates(["user_id", "item_id"])[["user_id", "item_id"]]
    settings = {"mining": asdict(cfg), "mine_from": mine_from, "valid_from": _iso(valid_cut),
                "test_from": _iso(test_cut)}
    return LakeBundles(bundles, inter, ui.reset_index(drop=True), valid_cut, test_cut, snapshot, settings)


def load_lake_bundles(datasets_dir: str | os.PathLike[str] | None = None, **options: Any) -> InteractionData:
    """Mine bundles from the event lake (:func:`mine_lake`, which takes ``options``) and return the
    user-bundle data with its item graphs.

    Args:
        datasets_dir: ignored (the lake is not a shared dataset).
        **options: :func:`mine_lake`'s arguments.

    Returns:
        An :class:`InteractionData` named ``lake_bundles`` whose items are the bundles, with raw user,
        bundle and atomic item ids and the data snapshot described in the module docstring.
    """
    mined = mine_lake(**options)
    bundles, inter, ui = mined.bundles, mined.interactions, mined.user_items
    user_ids, user_row = _index([*ui["user_id"], *inter["user_id"]])
    item_ids, item_row = _index([*ui["item_id"], *(i for b in bundles for i in b.items)])
    bundle_ids = np.array([b.id for b in bundles], dtype=object)
    bundle_row = {b: r for r, b in enumerate(bundle_ids)}

    def split(name: str) -> np.ndarray:
        part = inter[inter["split"] == name]
        return _pairs((user_row[u] for u in part["user_id"]), (bundle_row[b] for b in part["bundle_id"]))

    graphs = BundleGraphs(
        n_atomic_items=len(item_ids),
        user_item=_pairs((user_row[u] for u in ui["user_id"]), (item_row[i] for i in ui["item_id"])),
        bundle_item=_pairs((r for r, b in enumerate(bundles) for _ in b.items),
                           (item_row[i] for b in bundles for i in b.items)),
        item_ids=item_ids,
    )
    return InteractionData(
        name="lake_bundles",
        n_users=len(user_ids),
        n_items=len(bundle_ids),
        train=split("train"),
        valid=split("valid"),
        test=split("test"),
        test_excludes_valid=True,
        bundles=graphs,
        user_ids=user_ids,
        item_ids=bundle_ids,
        source_snapshot=mined.snapshot(),
    )
