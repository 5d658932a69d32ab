"""The simulated shoppers' model: the time cut, what counts as a shopper's future, rewards, oracle."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from streamrec.simulation.shoppers import (
    ShopperModel,
    add_oracle_rewards,
    bundle_click_probability,
    slate_click_probability,
    split_shoppers,
)
from streamrec.replay import read_taobao_rows, taobao_events
from support import taobao_csv

CUT = datetime(2017, 12, 2, tzinfo=timezone.utc)


def _event(user: str, item: str, category: str, ts: str, kind: str = "view") -> dict:
    e = {"event_id": f"{user}-{item}-{ts}", "type": kind, "user_id": user, "session_id": f"{user}-s1", "ts": ts}
    if kind == "purchase":
        e["items"] = [{"item_id": item, "quantity": 1, "category_id": category}]
    else:
        e.update(item_id=item, category_id=category)
    return e


def test_split_keeps_only_users_with_history_and_their_events_after_the_cut() -> None:
    events = [
        _event("u1", "a", "c1", "2017-12-01T10:00:00Z"),
        _event("u1", "b", "c2", "2017-12-02T10:00:00Z"),
        _event("u2", "c", "c1", "2017-12-02T11:00:00Z"),  # no history: not a shopper
    ]
    history, shoppers = split_shoppers(events, CUT)
    assert [e["item_id"] for e in history] == ["a"]
    assert [s.user_id for s in shoppers] == ["u1"]
    assert [e["item_id"] for e in shoppers[0].future_events] == ["b"]


def test_interests_exclude_the_item_being_looked_at_now() -> None:
    events = [
        _event("u1", "a", "c1", "2017-12-01T10:00:00Z"),
        _event("u1", "b", "c2", "2017-12-02T10:00:00Z"),
        _event("u1", "c", "c3", "2017-12-02T11:00:00Z", "purchase"),
    ]
    _, [shopper] = split_shoppers(events, CUT)
    now = shopper.interests_after(0)
    assert now.future_items == {"c"} and now.bought_items == {"c"} and now.bought_categories == {"c3"}
    model = ShopperModel()
    assert now.item_click_probability("b", "c2", model) == model.noise_click  # the current item
    assert now.item_click_probability("c", "c3", model) == model.item_click
    assert now.item_click_probability("z", "c3", model) == model.category_click
    assert now.purchase_probability("c", "c3", model) == model.item_purchase
    assert shopper.interests_after(1).future_items == frozenset()


def test_slate_probability_is_one_minus_the_product_of_misses() -> None:
    assert slate_click_probability([0.5, 0.5]) == pytest.approx(0.75)
    assert slate_click_probability([]) == 0.0


def test_oracle_is_the_best_slate_of_shown_bundles_for_that_shopper_and_step() -> None:
    events = [
        _event("u1", "a", "c1", "2017-12-01T10:00:00Z"),
        _event("u1", "b", "c2", "2017-12-02T10:00:00Z"),
        _event("u1", "hit", "c9", "2017-12-02T11:00:00Z"),
    ]
    _, [shopper] = split_shoppers(events, CUT)
    category_of = {"hit": "c9", "x": "c5", "y": "c6"}
    model = ShopperModel()
    bundles = {"good": ["hit", "x"], "bad": ["x", "y"]}
    reward = bundle_click_probability(shopper.interests_after(0), bundles["bad"], category_of, model)
    records = [{"endpoint": "bundles", "user_id": "u1", "step": 0, "shown": ["bad"], "reward": reward}]
    add_oracle_rewards(records, {"u1": shopper}, bundles, category_of, model)
    best = bundle_click_probability(shopper.interests_after(0), bundles["good"], category_of, model)
    assert records[0]["oracle_reward"] == pytest.approx(best) and best > reward


def test_the_real_taobao_cut_gives_shoppers_with_future_events() -> None:
    rows = read_taobao_rows(taobao_csv())
    history, shoppers = split_shoppers(taobao_events(rows), CUT)
    assert len(history) == 62_767
    assert len(shoppers) == 814
    assert all(e["ts"] >= "2017-12-02" for s in shoppers for e in s.future_events)


def test_logged_candidates_split_the_regret_and_join_the_oracle() -> None:
    events = [
        _event("u1", "a", "c1", "2017-12-01T10:00:00Z"),
        _event("u1", "b", "c2", "2017-12-02T10:00:00Z"),
        _event("u1", "hit", "c9", "2017-12-02T11:00:00Z"),
        _event("u1", "later", "c8", "2017-12-02T12:00:00Z"),
    ]
    _, [shopper] = split_shoppers(events, CUT)
    category_of = {"hit": "c9", "later": "c8", "x": "c5", "y": "c6"}
    model = ShopperModel()
    interests = shopper.interests_after(0)
    shown = {"bad": ["x", "y"]}
    reward = bundle_click_probability(interests, shown["bad"], category_of, model)
    records = [
        {"endpoint": "bundles", "user_id": "u1", "step": 0, "shown": ["bad"], "reward": reward, "request_id": "r1"},
        {"endpoint": "bundles", "user_id": "u1", "step": 0, "shown": ["bad"], "reward": reward, "request_id": "r2"},
    ]
    # r1 could have shown a bundle with "hit"; nobody showed the one with "later" and "hit" together,
    # but r1's own candidates had it: the oracle takes it into account.
    add_oracle_rewards(records, {"u1": shopper}, shown, category_of, model,
                       {"r1": [("x", "y"), ("hit", "x"), ("hit", "later")]})
    both = bundle_click_probability(interests, ["hit", "later"], category_of, model)
    assert records[0]["candidate_reward"] == pytest.approx(both) and both > reward
    assert records[0]["oracle_reward"] == pytest.approx(both)
    # r2's candidates were not logged: no split, the oracle is the shown bundles' alone
    assert "candidate_reward" not in records[1] and records[1]["oracle_reward"] == pytest.approx(reward)
