"""Per-key feature state and the exact feature definitions (Python and numpy, no Beam, no I/O).

The Beam composites in ``pipelines.transforms`` group events by key and fold them into these
accumulators; the same accumulators would sit in a stateful DoFn on a streaming runner. Every
accumulator is *order independent*: folding the same set of events in any order and in any number
of micro-batches gives the same features, which is what makes one batch and many batches agree.

Definitions (``T`` is the *as-of time*: the largest event time among all accepted events so far,
i.e. the event-time watermark; ``w`` a window length):

* An event is *in window w* when ``T - w < ts <= T``.
* *Interactions* of an event: view / add_to_cart / remove_from_cart / favorite -> one
  ``(item_id, type)``; purchase and bundle_purchase -> one per line item; click with ``item_id``
  -> one ``(item_id, "click")``. Other events have none.
* User features: ``last_seen_unix`` (largest ts of any of the user's events, unix seconds);
  the last ``sequence_length`` interactions ordered by ``(ts, event_id, line index)``, oldest
  first (item ids, types, unix seconds); ``<type>_count_1h`` / ``_24h`` = number of the user's
  events of each type in the short / long window; category affinity
  ``A(c) = sum_i weight(type_i) * exp(-(last_seen - ts_i) / affinity_decay_s)`` over interactions
  with a category (weights in ``AFFINITY_WEIGHTS``), relative to the user's own last-seen time
  (so it does not change while the user is idle; multiply by ``exp(-(now - last_seen)/decay)``
  for an absolute value); top ``top_categories`` by affinity (ties: category id), scores rounded
  to 12 significant digits.
* Item features: views / carts (events) and purchases (units over purchase and bundle_purchase
  lines) in the short and long windows; ``rec_impressions`` (slots of impressions on the
  ``recommendations`` surface) and ``rec_clicks`` (clicks naming the item), all time;
  ``rec_ctr = (clicks + prior_clicks) / (impressions + prior_impressions)``;
  ``trending_score = (views_1h + 1) / (views_24h / (window_long/window_short) + 1)``: last hour
  against the average hour of the last day.
* Item co-occurrence: sessions are ``session_id``s; an item is *in* a session when the session has
  an add_to_cart or purchase (line) of it. ``count(a, b)`` = number of sessions containing both
  (a != b); ``sessions(a)`` = number of sessions containing a; ``score(a, b) = count /
  sessions(a)`` (P(b in session | a in session)). Categories of an item in a session = the
  category ids on its cart/purchase lines there; ``cats(a)`` = union over a's sessions;
  ``cats_a(b)`` = union of b's categories over the sessions shared with a. The pair is
  *cross-category* when both are non-empty and disjoint. Top ``cooccurrence_top_k`` partners by
  (count desc, item id), and separately the top-k cross-category partners.
* Bundle: impressions (slots on the ``bundles`` surface), clicks (clicks naming the bundle),
  purchases (bundle_purchase events), all time, and the CTR with the prior.
* Experiment variant ``(experiment, variant)``: impressions = impression events carrying both;
  clicks and bundle purchases are attributed to it through ``request_id`` (whichever of the
  impression and the click arrives first); never-matched clicks count nowhere.

Lateness: see ``LatenessPolicy``.

Example:
    >>> spec = FeatureSpec()
    >>> state = UserState()
    >>> # state.add(event, spec) for each event; state.features("u1", as_of, spec) -> dict row
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple

import numpy as np

from features.events import EVENT_TYPES

# Weight of an interaction type in the user-category affinity.
AFFINITY_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "click": 1.0,
    "favorite": 2.0,
    "add_to_cart": 3.0,
    "remove_from_cart": 0.0,
    "purchase": 5.0,
    "bundle_purchase": 5.0,
}
COOCCURRENCE_TYPES = ("add_to_cart", "purchase", "bundle_purchase")


@dataclass(frozen=True)
class FeatureSpec:
    """Windows and sizes of the features (units in the names). Built from ``PipelineConfig``."""

    window_short_s: int = 3600
    window_long_s: int = 86_400
    allowed_lateness_s: int = 86_400
    sequence_length: int = 50
    top_categories: int = 5
    affinity_decay_s: float = 86_400.0
    cooccurrence_top_k: int = 20
    ctr_prior_clicks: float = 1.0
    ctr_prior_impressions: float = 20.0

    @classmethod
    def from_config(cls, config: Any) -> "FeatureSpec":
        return cls(**{name: getattr(config, name) for name in cls.__dataclass_fields__})

    @property
    def state_retention_s(self) -> int:
        """Sessions and requests are kept until their last event is this far behind T."""
        return 2 * self.allowed_lateness_s

    def ctr(self, clicks: int, impressions: int) -> float:
        return (clicks + self.ctr_prior_clicks) / (impressions + self.ctr_prior_impressions)


@dataclass(frozen=True)
class LatenessPolicy:
    """What happens to late and out-of-order events.

    ``W`` is the watermark (largest accepted event time) *before* a micro-batch. An event with
    ``ts < W - allowed_lateness_s`` is *late*: it goes to the dead-letter topic with reason
    ``late_event`` and changes no feature. Any other event, however out of order, is folded in
    exactly: windowed counts as of the new T include it when it lies in the window, sequences are
    re-ordered by event time. De-duplication remembers event ids for ``allowed_lateness_s`` of
    event time behind T, so every duplicate that is not itself late is recognised.
    """

    allowed_lateness_s: int

    def is_late(self, ts: float, watermark: float | None) -> bool:
        return watermark is not None and ts < watermark - self.allowed_lateness_s


def event_seconds(event: Any) -> float:
    return event.ts.timestamp()


def interactions(event: Any) -> list[tuple[str, str | None, str, int]]:
    """``(item_id, category_id, type, quantity)`` for each item the event is about."""
    kind = event.type
    if kind in ("view", "add_to_cart", "remove_from_cart", "favorite"):
        # Not getattr(event, "quantity", 1): a missing attribute goes through pydantic's
        # __getattr__ and an exception (3 us, most of a user update's cost).
        quantity = event.quantity if kind in ("add_to_cart", "remove_from_cart") else 1
        return [(event.item_id, event.category_id, kind, quantity)]
    if kind in ("purchase", "bundle_purchase"):
        return [(line.item_id, line.category_id, kind, line.quantity) for line in event.items]
    if kind == "click" and event.item_id is not None:
        return [(event.item_id, None, "click", 1)]
    return []


def _window_changed(times: Iterable[float], previous: float | None, as_of: float, spec: FeatureSpec) -> bool:
    """Did an event leave the short or long window while the as-of time moved from previous to as_of?"""
    if previous is None or as_of <= previous:
        return False
    return any(
        previous - w < ts <= as_of - w for ts in times for w in (spec.window_short_s, spec.window_long_s)
    )


def _window_totals(
    events: Iterable[tuple[float, str, int]], as_of: float, spec: FeatureSpec, kinds: Iterable[str]
) -> tuple[dict[str, int], dict[str, int]]:
    """Quantities per kind of the ``(ts, kind, quantity)`` events in the short and in the long
    window, ``as_of - window < ts <= as_of``, in one pass over them; other kinds are not counted."""
    short = dict.fromkeys(kinds, 0)
    long = dict(short)
    short_from, long_from = as_of - spec.window_short_s, as_of - spec.window_long_s
    for ts, kind, quantity in events:
        if ts <= as_of and kind in long:
            if long_from < ts:
                long[kind] += quantity
            if short_from < ts:
                short[kind] += quantity
    return short, long


def _round(x: float) -> float:
    return float(f"{x:.12g}")


# --- users ---------------------------------------------------------------------------------

# (ts, event_id, type, interactions): all a user's features read from an event, as plain values
# (Beam encodes them without pickling; sorting them orders events by time, then id).
UserUpdate = tuple[float, str, str, tuple[tuple[str, "str | None", str, int], ...]]


def user_update(event: Any) -> UserUpdate:
    return (event_seconds(event), str(event.event_id), event.type, tuple(interactions(event)))


@dataclass
class UserState:
    """What a user's features need: last-seen, the sequence tail, recent events, affinities."""

    last_seen: float | None = None
    # (ts, event_id, line index, item_id, type), at most sequence_length, any order.
    sequence: list[tuple[float, str, int, str, str]] = field(default_factory=list)
    # (ts, type) of events that may still be in the long window.
    recent: list[tuple[float, str]] = field(default_factory=list)
    # category -> affinity relative to last_seen.
    affinity: dict[str, float] = field(default_factory=dict)

    def add(self, event: Any, spec: FeatureSpec) -> None:
        self.add_update(user_update(event), spec)

    def add_update(self, update: UserUpdate, spec: FeatureSpec) -> None:
        """Fold in one event in its ``user_update`` form."""
        ts, event_id, event_type, lines = update
        if self.last_seen is None or ts > self.last_seen:
            if self.last_seen is not None:
                factor = math.exp(-(ts - self.last_seen) / spec.affinity_decay_s)
                self.affinity = {c: a * factor for c, a in self.affinity.items()}
            self.last_seen = ts
        self.recent.append((ts, event_type))
        for index, (item_id, category_id, kind, _qty) in enumerate(lines):
            self.sequence.append((ts, event_id, index, item_id, kind))
            weight = AFFINITY_WEIGHTS.get(kind, 0.0)
            if category_id is not None and weight > 0:
                self.affinity[category_id] = self.affinity.get(category_id, 0.0) + weight * math.exp(
                    -(self.last_seen - ts) / spec.affinity_decay_s
                )
        if len(self.sequence) > spec.sequence_length:
            self.sequence = sorted(self.sequence)[-spec.sequence_length :]

    def add_updates(self, updates: Iterable[UserUpdate], spec: FeatureSpec) -> None:
        """``add_update`` of each of ``updates`` in turn, to the same state bit for bit (tested),
        with less work: a user's batch folds ~100 events (the Taobao slice), and these two parts
        of ``add_update`` were half of its cost.

        * The decay of the affinities: each category is multiplied by the same factors in the same
          order, but when the category is next added to (or at the end), not every category at
          every event that moves last-seen on.
        * The cut of the sequence to its last ``sequence_length``: once, at the end (when an event
          was folded in). The cut keeps the largest entries, and the largest of a cut list and
          further entries are the largest of all of them; once the sequence is longer than the
          limit, each ``add_update`` cuts it (sorted), so after it, it is the sorted tail of all
          its entries, as here.
        """
        decay = spec.affinity_decay_s
        affinity, recent, sequence = self.affinity, self.recent, self.sequence
        last_seen = self.last_seen
        factors: list[float] = []  # the decay factors of this call, in order
        applied: dict[str, int] = {}  # category -> how many of them its affinity has (absent: none)
        added = False
        for ts, event_id, event_type, lines in updates:
            added = True
            if last_seen is None or ts > last_seen:
                if last_seen is not None:
                    factors.append(math.exp(-(ts - last_seen) / decay))
                last_seen = ts
            recent.append((ts, event_type))
            for index, (item_id, category_id, kind, _qty) in enumerate(lines):
                sequence.append((ts, event_id, index, item_id, kind))
                weight = AFFINITY_WEIGHTS.get(kind, 0.0)
                if category_id is not None and weight > 0:
                    a = affinity.get(category_id)
                    if a is None:
                        a = 0.0
                    else:  # math.prod multiplies left to right, one float product at a time: the same bits
                        a = math.prod(factors[applied.get(category_id, 0):], start=a)
                    affinity[category_id] = a + weight * math.exp(-(last_seen - ts) / decay)
                    applied[category_id] = len(factors)
        if factors:
            for category, a in affinity.items():
                affinity[category] = math.prod(factors[applied.get(category, 0):], start=a)
        self.last_seen = last_seen
        if added and len(sequence) > spec.sequence_length:
            self.sequence = sorted(sequence)[-spec.sequence_length :]

    def window_changed(self, previous: float | None, as_of: float, spec: FeatureSpec) -> bool:
        """Whether the windowed counts changed only because time moved on (no new event)."""
        return _window_changed((ts for ts, _ in self.recent), previous, as_of, spec)

    def prune(self, as_of: float, spec: FeatureSpec) -> None:
        self.recent = [(ts, k) for ts, k in self.recent if ts > as_of - spec.window_long_s]

    def features(self, user_id: str, as_of: float, spec: FeatureSpec) -> dict[str, Any]:
        seq = sorted(self.sequence)[-spec.sequence_length :]
        row: dict[str, Any] = {
            "user_id": user_id,
            "last_seen_unix": int(self.last_seen) if self.last_seen is not None else None,
            "seq_item_ids": [s[3] for s in seq],
            "seq_event_types": [s[4] for s in seq],
            "seq_ts_unix": [int(s[0]) for s in seq],
        }
        short, long = _window_totals(((ts, k, 1) for ts, k in self.recent), as_of, spec, EVENT_TYPES)
        for kind in EVENT_TYPES:
            row[f"{kind}_count_1h"] = short[kind]
            row[f"{kind}_count_24h"] = long[kind]
        top = sorted(((-_round(a), c) for c, a in self.affinity.items()))[: spec.top_categories]
        row["top_category_ids"] = [c for _, c in top]
        row["top_category_scores"] = [-a for a, _ in top]
        return row


# --- items ---------------------------------------------------------------------------------


@dataclass
class ItemState:
    """Recent views/carts/purchases of an item and its all-time recommendation impressions/clicks."""

    # (ts, kind, quantity) with kind in view / cart / purchase.
    recent: list[tuple[float, str, int]] = field(default_factory=list)
    rec_impressions: int = 0
    rec_clicks: int = 0

    def add_signal(self, ts: float, kind: str, quantity: int) -> None:
        if kind == "impression":
            self.rec_impressions += quantity
        elif kind == "click":
            self.rec_clicks += quantity
        else:
            self.recent.append((ts, kind, quantity))

    def window_changed(self, previous: float | None, as_of: float, spec: FeatureSpec) -> bool:
        """Whether the windowed counts changed only because time moved on (no new event)."""
        return _window_changed((ts for ts, _, _ in self.recent), previous, as_of, spec)

    def has_signals(self) -> bool:
        """Whether the state holds anything worth keeping (else the item is forgotten)."""
        return bool(self.recent or self.rec_impressions or self.rec_clicks)

    def prune(self, as_of: float, spec: FeatureSpec) -> None:
        self.recent = [r for r in self.recent if r[0] > as_of - spec.window_long_s]

    def features(self, item_id: str, as_of: float, spec: FeatureSpec) -> dict[str, Any]:
        short, long = _window_totals(self.recent, as_of, spec, _ITEM_KINDS)
        return _item_row(item_id, (short["view"], short["cart"], short["purchase"]),
                         (long["view"], long["cart"], long["purchase"]), self.rec_impressions, self.rec_clicks, spec)


# The windowed kinds of ``ItemState.recent`` (their features: views, carts, purchases).
_ITEM_KINDS = ("view", "cart", "purchase")


def _item_row(item_id: str, short: tuple[int, int, int], long: tuple[int, int, int], impressions: int, clicks: int,
              spec: FeatureSpec) -> dict[str, Any]:
    """An item's feature row from its (views, carts, purchases) in the short and the long window
    and its recommendation impressions and clicks."""
    # One dict literal (no formatted names): a batch builds a row for each item it touched
    # (54k of the Taobao slice).
    views_1h, views_24h = short[0], long[0]
    hours = spec.window_long_s / spec.window_short_s
    return {
        "item_id": item_id,
        "views_1h": views_1h,
        "views_24h": views_24h,
        "carts_1h": short[1],
        "carts_24h": long[1],
        "purchases_1h": short[2],
        "purchases_24h": long[2],
        "rec_impressions": impressions,
        "rec_clicks": clicks,
        "rec_ctr": spec.ctr(clicks, impressions),
        "trending_score": (views_1h + 1) / (views_24h / hours + 1),
    }


# --- items, by columns ------------------------------------------------------------------------

# The kinds of item signals (``item_signals``) in sorted order: ordering signals by a kind's index
# orders them as sorting their ``(ts, kind, quantity)`` tuples does.
ITEM_SIGNAL_KINDS = ("cart", "click", "impression", "purchase", "view")
_KIND_INDEX = {kind: index for index, kind in enumerate(ITEM_SIGNAL_KINDS)}
_KIND_NAMES = np.array(ITEM_SIGNAL_KINDS, dtype=object)
_CART, _CLICK, _IMPRESSION, _PURCHASE, _VIEW = range(len(ITEM_SIGNAL_KINDS))


class ItemSignalColumns(NamedTuple):
    """Item signals (``item_signals``) by columns: the distinct items, and per signal the index of
    its item among them, its event time, the index of its kind in ``ITEM_SIGNAL_KINDS`` and its
    quantity."""

    items: list[str]
    item_index: np.ndarray  # int64
    times: np.ndarray  # float64
    kinds: np.ndarray  # int8
    quantities: np.ndarray  # int64

    @classmethod
    def of(cls, signals: list[tuple[str, float, str, int]]) -> "ItemSignalColumns":
        """The columns of ``(item_id, ts, kind, quantity)`` signals (items numbered in order of
        first appearance)."""
        if not signals:
            return cls([], np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(0, np.int8), np.zeros(0, np.int64))
        items, times, kinds, quantities = zip(*signals)
        index = dict.fromkeys(items)  # first appearance order, in C
        for code, item in enumerate(index):
            index[item] = code
        return cls(list(index), np.array(list(map(index.__getitem__, items)), dtype=np.int64),
                   np.array(times, dtype=np.float64), np.array(list(map(_KIND_INDEX.__getitem__, kinds)), dtype=np.int8),
                   np.array(quantities, dtype=np.int64))

    def by_group(self, group_of_item: Iterable[int], groups: int) -> list[tuple[int, "ItemSignalColumns"]]:
        """The signals split by their item's group (``group_of_item``: one per item), one part per
        group present, each with only its own items (in their order here)."""
        item_group = np.fromiter(group_of_item, dtype=np.int64, count=len(self.items))
        items_by_group = np.argsort(item_group, kind="stable")
        item_bounds = np.searchsorted(item_group[items_by_group], np.arange(groups + 1)).tolist()
        # Each item's number within its group, and the signals ordered by group (stable).
        renumbered = np.empty(len(self.items), dtype=np.int64)
        signal_group = item_group[self.item_index]
        signals_by_group = np.argsort(signal_group, kind="stable")
        signal_bounds = np.searchsorted(signal_group[signals_by_group], np.arange(groups + 1)).tolist()
        parts = []
        for group in range(groups):
            items_here = items_by_group[item_bounds[group]:item_bounds[group + 1]]
            if not len(items_here):
                continue
            renumbered[items_here] = np.arange(len(items_here))
            here = signals_by_group[signal_bounds[group]:signal_bounds[group + 1]]
            parts.append((group, ItemSignalColumns([self.items[i] for i in items_here.tolist()],
                                                   renumbered[self.item_index[here]], self.times[here],
                                                   self.kinds[here], self.quantities[here])))
        return parts

    @classmethod
    def concatenated(cls, parts: list["ItemSignalColumns"]) -> "ItemSignalColumns":
        """One set of columns of several parts' signals (an item in several parts is one item)."""
        if len(parts) == 1:
            return parts[0]
        index: dict[str, int] = {}
        codes = []
        for part in parts:
            renumber = np.array([index.setdefault(item, len(index)) for item in part.items], dtype=np.int64)
            codes.append(renumber[part.item_index] if len(part.items) else part.item_index)
        return cls(list(index), np.concatenate(codes), np.concatenate([p.times for p in parts]),
                   np.concatenate([p.kinds for p in parts]), np.concatenate([p.quantities for p in parts]))


def _sum_by_item(item_index: np.ndarray, quantities: np.ndarray, selected: np.ndarray, items: int) -> list[int]:
    """Per item, the sum of the quantities of its selected signals."""
    totals = np.zeros(items, dtype=np.int64)
    np.add.at(totals, item_index[selected], quantities[selected])
    return totals.tolist()


def fold_item_shard(
    parts: list[ItemSignalColumns], states: dict[str, ItemState], as_of: float | None, watermark_s: float | None,
    spec: FeatureSpec,
) -> tuple[list[dict[str, Any]], dict[str, ItemState]]:
    """The item features of one shard's items, and their states after the batch: the batch's
    signals (``parts``) folded into the carried ``states`` (changed in place), as folding each
    item's signals in time order with ``ItemState.add_signal``, then ``features`` and ``prune``
    (tested against that), with a row for every item with signals and every carried item whose
    windowed counts changed as time moved on.

    By columns rather than item by item: the windowed counts and the impression and click counts
    of the batch's signals are sums in numpy, and the signals kept as recent are ordered by one
    sort; the loop over the items is left with building their states and rows (the Taobao
    slice's 84k events touch 54k items).
    """
    if as_of is None:  # no event accepted yet: nothing to count as of
        return [], dict(states)
    signals = ItemSignalColumns.concatenated(parts) if parts else ItemSignalColumns.of([])
    count = len(signals.items)
    # Each item's signals in the order ``sorted`` gives their (ts, kind, quantity) tuples.
    order = np.lexsort((signals.quantities, signals.kinds, signals.times, signals.item_index))
    item_index, times = signals.item_index[order], signals.times[order]
    kinds, quantities = signals.kinds[order], signals.quantities[order]
    short_from, long_from = as_of - spec.window_short_s, as_of - spec.window_long_s
    windowed = (kinds == _VIEW) | (kinds == _CART) | (kinds == _PURCHASE)
    in_long = windowed & (times > long_from)  # the signals a prune keeps as recent
    counted_long = in_long & (times <= as_of)
    counted_short = counted_long & (times > short_from)
    totals = {
        (kind, window): _sum_by_item(item_index, quantities, (kinds == kind) & mask, count)
        for kind in (_VIEW, _CART, _PURCHASE) for window, mask in (("short", counted_short), ("long", counted_long))
    }
    impressions = _sum_by_item(item_index, quantities, kinds == _IMPRESSION, count)
    clicks = _sum_by_item(item_index, quantities, kinds == _CLICK, count)
    recent = list(zip(times[in_long].tolist(), _KIND_NAMES[kinds[in_long]].tolist(), quantities[in_long].tolist()))
    bounds = np.searchsorted(item_index[in_long], np.arange(count + 1)).tolist()
    short_counts = list(zip(totals[_VIEW, "short"], totals[_CART, "short"], totals[_PURCHASE, "short"]))
    long_counts = list(zip(totals[_VIEW, "long"], totals[_CART, "long"], totals[_PURCHASE, "long"]))

    rows: list[dict[str, Any]] = []
    kept: dict[str, ItemState] = {}
    for i, item in enumerate(signals.items):
        state = states.get(item)
        short, long = short_counts[i], long_counts[i]
        if state is None:
            state = ItemState(recent[bounds[i]:bounds[i + 1]], impressions[i], clicks[i])
        else:
            old_short, old_long = _window_totals(state.recent, as_of, spec, _ITEM_KINDS)
            short = tuple(a + old_short[k] for a, k in zip(short, _ITEM_KINDS))
            long = tuple(a + old_long[k] for a, k in zip(long, _ITEM_KINDS))
            state.prune(as_of, spec)
            state.recent.extend(recent[bounds[i]:bounds[i + 1]])
            state.rec_impressions += impressions[i]
            state.rec_clicks += clicks[i]
        rows.append(_item_row(item, short, long, state.rec_impressions, state.rec_clicks, spec))
        if state.has_signals():
            kept[item] = state
    touched = set(signals.items)
    for item, state in states.items():
        if item in touched:
            continue
        if state.window_changed(watermark_s, as_of, spec):
            rows.append(state.features(item, as_of, spec))
        state.prune(as_of, spec)
        if state.has_signals():
            kept[item] = state
    return rows, kept


def item_signals(event: Any) -> list[tuple[str, str, int]]:
    """``(item_id, kind, quantity)`` signals of an event for the item features."""
    kind = event.type
    if kind == "view":
        return [(event.item_id, "view", 1)]
    if kind == "add_to_cart":
        return [(event.item_id, "cart", 1)]
    if kind in ("purchase", "bundle_purchase"):
        return [(line.item_id, "purchase", line.quantity) for line in event.items]
    if kind == "impression" and event.surface == "recommendations":
        return [(slot.id, "impression", 1) for slot in event.slots]
    if kind == "click" and event.item_id is not None:
        return [(event.item_id, "click", 1)]
    return []


# --- co-occurrence ---------------------------------------------------------------------------


@dataclass
class SessionState:
    """Items carted or bought in one session, with their categories there."""

    items: dict[str, set[str]] = field(default_factory=dict)
    last_ts: float = float("-inf")

    def add(self, ts: float, item_id: str, category_id: str | None) -> list[tuple[str, tuple[str | None, int, frozenset[str]]]]:
        """Fold one cart/purchase line in; returns co-occurrence updates ``(item, (partner, dcount, partner cats))``.

        A partner of ``None`` carries the item's own categories and a new session (dcount 1)."""
        self.last_ts = max(self.last_ts, ts)
        cats = {category_id} if category_id is not None else set()
        updates: list[tuple[str, tuple[str | None, int, frozenset[str]]]] = []
        if item_id not in self.items:
            updates.append((item_id, (None, 1, frozenset(cats))))
            for other, other_cats in self.items.items():
                updates.append((item_id, (other, 1, frozenset(other_cats))))
                updates.append((other, (item_id, 1, frozenset(cats))))
            self.items[item_id] = set(cats)
        elif cats - self.items[item_id]:
            self.items[item_id] |= cats
            updates.append((item_id, (None, 0, frozenset(cats))))
            for other in self.items:
                if other != item_id:
                    updates.append((other, (item_id, 0, frozenset(cats))))
        return updates


@dataclass
class CooccurrenceState:
    """Per item: sessions containing it, its categories, and per partner (count, categories)."""

    sessions: int = 0
    categories: set[str] = field(default_factory=set)
    partners: dict[str, list[Any]] = field(default_factory=dict)  # partner -> [count, set(cats)]

    def add(self, partner: str | None, dcount: int, cats: Iterable[str]) -> None:
        if partner is None:
            self.sessions += dcount
            self.categories |= set(cats)
            return
        entry = self.partners.setdefault(partner, [0, set()])
        entry[0] += dcount
        entry[1] |= set(cats)

    def features(self, item_id: str, spec: FeatureSpec) -> dict[str, Any]:
        ranked = sorted(self.partners.items(), key=lambda kv: (-kv[1][0], kv[0]))
        cross = [
            bool(self.categories) and bool(cats) and not (self.categories & cats) for _, (_, cats) in ranked
        ]
        top = ranked[: spec.cooccurrence_top_k]
        cross_top = [kv for kv, is_cross in zip(ranked, cross) if is_cross][: spec.cooccurrence_top_k]
        denominator = max(self.sessions, 1)
        return {
            "item_id": item_id,
            "sessions": self.sessions,
            "co_item_ids": [b for b, _ in top],
            "co_counts": [e[0] for _, e in top],
            "co_scores": [e[0] / denominator for _, e in top],
            "co_cross_category": cross[: len(top)],
            "cross_item_ids": [b for b, _ in cross_top],
            "cross_scores": [e[0] / denominator for _, e in cross_top],
        }


# --- bundles and experiments -----------------------------------------------------------------


@dataclass
class CounterState:
    """All-time impressions, clicks, purchases of a bundle or an experiment variant."""

    impressions: int = 0
    clicks: int = 0
    purchases: int = 0

    def add(self, impressions: int, clicks: int, purchases: int) -> None:
        self.impressions += impressions
        self.clicks += clicks
        self.purchases += purchases

    def features(self, key_name: str, key: str, spec: FeatureSpec) -> dict[str, Any]:
        return {
            key_name: key,
            "impressions": self.impressions,
            "clicks": self.clicks,
            "purchases": self.purchases,
            "ctr": spec.ctr(self.clicks, self.impressions),
        }


def bundle_signals(event: Any) -> list[tuple[str, tuple[int, int, int]]]:
    """``(bundle_id, (impressions, clicks, purchases))`` increments of an event."""
    if event.type == "impression" and event.surface == "bundles":
        return [(slot.id, (1, 0, 0)) for slot in event.slots]
    if event.type == "click" and event.bundle_id is not None:
        return [(event.bundle_id, (0, 1, 0))]
    if event.type == "bundle_purchase":
        return [(event.bundle_id, (0, 0, 1))]
    return []


@dataclass
class RequestState:
    """Attribution of one recommendation request to an experiment variant."""

    variant_key: str | None = None
    has_impression: bool = False
    pending_clicks: int = 0
    pending_purchases: int = 0
    last_ts: float = float("-inf")

    def add(self, event: Any, variant_key_of: Any) -> list[tuple[str, tuple[int, int, int]]]:
        """Fold an impression/click/bundle_purchase in; returns attributed variant increments."""
        self.last_ts = max(self.last_ts, event_seconds(event))
        out: list[tuple[str, tuple[int, int, int]]] = []
        if event.type == "impression":
            if self.has_impression:
                # A request has one impression; a second one with another event id still counts as
                # an impression of its own variant but does not re-attribute clicks.
                key = variant_key_of(event)
                return [(key, (1, 0, 0))] if key is not None else []
            self.has_impression = True
            self.variant_key = variant_key_of(event)
            if self.variant_key is not None:
                out.append((self.variant_key, (1, self.pending_clicks, self.pending_purchases)))
            self.pending_clicks = self.pending_purchases = 0
            return out
        clicks, purchases = (1, 0) if event.type == "click" else (0, 1)
        if self.has_impression:
            if self.variant_key is not None:
                out.append((self.variant_key, (0, clicks, purchases)))
        else:
            self.pending_clicks += clicks
            self.pending_purchases += purchases
        return out
