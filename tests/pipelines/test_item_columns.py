"""The items' fold by columns (``fold_item_shard``) against the item-by-item fold it replaced:
each item's signals folded in time order with ``ItemState.add_signal``, then ``features`` and
``prune``, as the streaming job still does; and the columns' split by shard."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest

from pipelines.accumulators import FeatureSpec, ItemSignalColumns, ItemState, fold_item_shard
from pipelines.transforms import _item_signals_by_shard, _rows, shard_of

SPEC = FeatureSpec()
KINDS = ("view", "cart", "purchase", "impression", "click")


def item_by_item(values: dict[str, list[tuple[float, str, int]]], states: dict[str, ItemState], as_of: float | None,
                 watermark: float | None) -> tuple[list[dict], dict[str, ItemState]]:
    rows, kept = [], {}
    for key in list(values) + [k for k in states if k not in values]:
        signals, state = values.get(key, []), states.get(key)
        if as_of is None:
            if state is not None:
                kept[key] = state
            continue
        state = state or ItemState()
        emit = bool(signals) or state.window_changed(watermark, as_of, SPEC)
        for ts, kind, quantity in sorted(signals):
            state.add_signal(ts, kind, quantity)
        if emit:
            rows.append(state.features(key, as_of, SPEC))
        state.prune(as_of, SPEC)
        if state.recent or state.rec_impressions or state.rec_clicks:
            kept[key] = state
    return rows, kept


def _by_item(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda row: row["item_id"])


@pytest.mark.parametrize("seed", range(4))
def test_the_fold_by_columns_gives_the_item_by_item_rows_and_states(seed: int) -> None:
    """Batches of random signals (late ones, ones in and out of both windows, ties in time, kind
    and quantity, impressions and clicks, batches with no signal while time moves on, a batch's
    signals in several parts), each batch on the states both folds carried from the one before."""
    rng = random.Random(seed)
    for _ in range(60):
        items = [f"i{j}" for j in range(rng.randint(1, 12))]
        expected_states: dict[str, ItemState] = {}
        states: dict[str, ItemState] = {}
        watermark, t = None, 1_500_000_000.0
        for _batch in range(rng.randint(1, 6)):
            n = rng.randint(0, 40)
            offsets = [-90_000, -4_000, -10, 0, 0, 5, 3_600, 50_000]
            signals = [(rng.choice(items), t + rng.choice([*offsets, rng.uniform(-100_000, 100_000)]), rng.choice(KINDS),
                        rng.randint(1, 3)) for _ in range(n)]
            as_of = max([ts for _, ts, _, _ in signals] + ([watermark] if watermark is not None else []), default=None)
            values: dict[str, list[tuple[float, str, int]]] = {}
            for item, ts, kind, quantity in signals:
                values.setdefault(item, []).append((ts, kind, quantity))
            cuts = sorted(rng.sample(range(n + 1), min(2, n + 1)))
            parts = [ItemSignalColumns.of(signals[a:b]) for a, b in zip([0, *cuts], [*cuts, n]) if b > a]
            want_rows, expected_states = item_by_item(values, expected_states, as_of, watermark)
            rows, states = fold_item_shard(parts, states, as_of, watermark, SPEC)
            assert _by_item(rows) == _by_item(want_rows)
            # The same states to the byte: the recent signals in the same order.
            assert pickle.dumps(dict(sorted(states.items()))) == pickle.dumps(dict(sorted(expected_states.items())))
            watermark, t = as_of, t + rng.choice([0, 600, 3_600, 90_000])


def test_no_accepted_event_keeps_the_states_and_emits_nothing() -> None:
    state = ItemState([(100.0, "view", 1)], 2, 1)
    rows, kept = fold_item_shard([], {"a": state}, None, None, SPEC)
    assert rows == [] and kept == {"a": state}


def test_columns_split_by_shard_keep_each_shards_signals_in_order() -> None:
    signals = [(f"i{k % 7}", 1000.0 + k, KINDS[k % 5], 1 + k % 3) for k in range(60)]
    columns = ItemSignalColumns.of(signals)
    assert columns.items == [f"i{k}" for k in range(7)]
    parts = columns.by_group([shard_of(item, 4) for item in columns.items], 4)
    assert [group for group, _ in parts] == sorted({shard_of(f"i{k}", 4) for k in range(7)})
    for group, part in parts:
        assert all(shard_of(item, 4) == group for item in part.items)
        got = [(part.items[i], ts, ("cart", "click", "impression", "purchase", "view")[kind], quantity)
               for i, ts, kind, quantity in zip(part.item_index.tolist(), part.times.tolist(), part.kinds.tolist(),
                                                part.quantities.tolist())]
        assert got == [s for s in signals if shard_of(s[0], 4) == group]
    merged = ItemSignalColumns.concatenated([part for _, part in parts])
    assert sorted(zip((merged.items[i] for i in merged.item_index.tolist()), merged.times.tolist())) == \
        sorted((item, ts) for item, ts, _, _ in signals)
    empty = ItemSignalColumns.of([])
    assert empty.items == [] and len(empty.item_index) == 0 and empty.by_group([], 4) == []


def test_a_batch_of_event_rows_splits_into_its_item_signals() -> None:
    from support import make_event

    from features.events import parse_event
    from pipelines.event_rows import event_row

    events = [parse_event(make_event("view", item_id="a")), parse_event(make_event("search", query="q")),
              parse_event(make_event("purchase", items=[{"item_id": "a", "quantity": 2}, {"item_id": "b"}]))]
    parts = dict(_item_signals_by_shard(_rows([event_row(e) for e in events]), 1))
    [part] = [p.value for p in parts.values()]
    assert part.items == ["a", "b"]
    assert part.item_index.tolist() == [0, 0, 1]
    assert np.array_equal(part.quantities, [1, 2, 1])
