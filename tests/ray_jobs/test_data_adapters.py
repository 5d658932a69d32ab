"""Dataset adapters on the real shared data (counts from /work/shared/datasets/README.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ray_jobs.data import (
    load_dataset,
    load_gowalla,
    load_recbole_atomic,
    load_sasrec_games,
    load_taobao,
    load_taobao_sessions,
    load_youshu,
    subsample_users,
)
from ray_jobs.data.paths import DATASETS_DIR_ENV, default_datasets_dir

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "recbole_tiny"


def _keys(pairs: np.ndarray, n_items: int) -> np.ndarray:
    return pairs[:, 0] * n_items + pairs[:, 1]


def test_gowalla_split(datasets_dir):
    data = load_gowalla(datasets_dir, valid_fraction=0.1, valid_seed=3)
    assert (data.n_users, data.n_items) == (29858, 40981)
    assert len(data.train) + len(data.valid) == 810128 and len(data.test) == 217242
    tr, va, te = (_keys(p, data.n_items) for p in (data.train, data.valid, data.test))
    assert not np.isin(va, tr).any() and not np.isin(te, tr).any() and not np.isin(te, va).any()
    assert 0.09 < len(data.valid) / 810128 < 0.11
    assert set(np.unique(data.train[:, 0])) == set(range(data.n_users))  # everyone keeps training items
    again = load_gowalla(datasets_dir, valid_fraction=0.1, valid_seed=3)
    np.testing.assert_array_equal(again.valid, data.valid)  # seeded carve-out
    assert data.seen_for("test").shape[0] == 810128 and data.seen_for("valid").shape[0] == len(data.train)


def test_sasrec_games_leave_one_out(datasets_dir):
    data = load_sasrec_games(datasets_dir)
    assert (data.n_users, data.n_items) == (31013, 23715)
    assert len(data.train) + len(data.valid) + len(data.test) == 287107
    raw = np.loadtxt(datasets_dir / "sasrec_amazon_games" / "Video.txt", dtype=np.int64) - 1
    last = {u: i for u, i in raw}  # the file is in time order per user: the last line per user wins
    counts = np.bincount(raw[:, 0])
    assert all(last[u] == i for u, i in data.test)
    assert set(data.test[:, 0]) == set(np.flatnonzero(counts >= 3))  # users with < 3 actions: train only
    assert len(np.unique(data.valid[:, 0])) == len(data.valid)
    # train keeps each user's chronological order
    u0 = raw[raw[:, 0] == data.test[0, 0], 1]
    np.testing.assert_array_equal(data.train[data.train[:, 0] == data.test[0, 0], 1], u0[:-2])


def test_youshu(datasets_dir):
    data = load_youshu(datasets_dir)
    assert (data.n_users, data.n_items, data.bundles.n_atomic_items) == (8039, 4771, 32770)
    assert (len(data.train), len(data.valid), len(data.test)) == (34416, 5189, 9746)
    assert (len(data.bundles.user_item), len(data.bundles.bundle_item)) == (138515, 176667)
    assert not data.test_excludes_valid  # CrossCBR masks only training bundles at test time


def test_taobao(datasets_dir):
    data = load_taobao(datasets_dir)
    assert (data.n_users, data.n_items) == (814, 55233)
    assert len(data.train) + len(data.valid) + len(data.test) == 84287
    assert len(np.unique(data.item_category)) == 2911
    buys = load_taobao(datasets_dir, behaviors=("buy",))
    assert len(buys.train) + len(buys.valid) + len(buys.test) == 1749


def test_taobao_sessions(datasets_dir):
    """SR-GNN's preprocessing of the slice: sessions are the "users", disjoint across the splits,
    test sessions start in the last day, items are those seen >= 5 times in training sessions."""
    data = load_taobao_sessions(datasets_dir)
    assert data.name == "taobao_sessions" and data.sequential and not data.test_excludes_valid
    parts = [np.unique(split[:, 0]) for split in (data.train, data.valid, data.test)]
    assert sum(len(p) for p in parts) == data.n_users and not set(parts[0]) & set(parts[2])
    assert all(np.bincount(split[:, 0])[p].min() >= 2 for split, p in zip((data.train, data.valid, data.test), parts))
    assert abs(len(parts[1]) - 0.1 * (len(parts[0]) + len(parts[1]))) <= 1  # the 10% validation share
    # items are those of the training sessions before validation was drawn from them (as SR-GNN)
    seen = np.concatenate([data.train[:, 1], data.valid[:, 1]])
    assert np.bincount(seen, minlength=data.n_items).min() >= 1 and data.test[:, 1].max() < data.n_items
    assert len(data.item_ids) == data.n_items == len(data.item_category)
    assert len(load_taobao_sessions(datasets_dir, test_days=2.0).test) > len(data.test)


def test_recbole_atomic_loo():
    data = load_recbole_atomic(FIXTURES / "tiny.inter", FIXTURES / "tiny.item", split="loo")
    assert (data.n_users, data.n_items) == (4, 5)
    items = ["apple", "fig", "kiwi", "pear", "plum"]  # tokens map to ids in sorted order
    # u1 by time: pear, kiwi, plum, apple -> test apple, valid plum, train pear, kiwi
    u1 = 0
    assert data.test[data.test[:, 0] == u1, 1].tolist() == [items.index("apple")]
    assert data.valid[data.valid[:, 0] == u1, 1].tolist() == [items.index("plum")]
    assert data.train[data.train[:, 0] == u1, 1].tolist() == [items.index("pear"), items.index("kiwi")]
    assert 2 not in data.test[:, 0]  # u3 has 2 actions: train only
    # categories: first token of the token_seq; apple & pear share "fruit_pome"
    cat = data.item_category
    assert cat[items.index("apple")] == cat[items.index("pear")] != cat[items.index("plum")]


def test_recbole_atomic_ratio():
    data = load_recbole_atomic(FIXTURES / "tiny.inter", split="ratio", ratios=(0.6, 0.2, 0.2))
    assert len(data.train) + len(data.valid) + len(data.test) == 14
    assert data.item_category is None
    u4 = 3  # 5 actions -> 3 train, 1 valid, 1 test, the latest (plum at t=4005) in test
    assert len(data.train[data.train[:, 0] == u4]) == 3
    assert data.test[data.test[:, 0] == u4, 1].tolist() == [4]


def test_subsample_users(datasets_dir):
    full = load_dataset("gowalla", datasets_dir)
    small = subsample_users(full, 300, seed=1)
    assert small.n_users == 300 and small.n_items == len(np.unique(small.train[:, 1]))
    assert small.test[:, 1].max() < small.n_items
    seq = load_dataset("sasrec_games", datasets_dir, max_users=300)
    assert seq.n_items == 23715 and seq.sequential  # sequential data keeps the item space


def test_default_datasets_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(DATASETS_DIR_ENV, str(tmp_path))
    assert default_datasets_dir() == tmp_path
    monkeypatch.delenv(DATASETS_DIR_ENV)
    assert default_datasets_dir().parts[-2:] == ("shared", "datasets")
    with pytest.raises(FileNotFoundError):
        load_dataset("youshu", tmp_path / "missing")


def _atomic(path: Path, header: str, rows: list[str]) -> None:
    path.write_text(header + "\n" + "".join(row + "\n" for row in rows))


def test_recbole_benchmark_files_keep_their_split_fields_catalogue_and_masking(tmp_path):
    """A benchmark as it ships: its own field names, its train/valid/test files (not re-split), a
    catalogue item no interaction touches, and test masking training items only."""
    header = "uid:token\tbid:token\tts:float"
    _atomic(tmp_path / "b.train.inter", header, ["u1\tx\t1", "u1\ty\t2", "u2\ty\t1"])
    _atomic(tmp_path / "b.valid.inter", header, ["u1\tz\t3"])
    _atomic(tmp_path / "b.test.inter", header, ["u2\tx\t4", "u1\tx\t5"])
    _atomic(tmp_path / "b.item", "bid:token\tcategory:token", ["x\ta", "y\tb", "z\ta", "w\tc"])
    data = load_dataset("recbole", inter_path=str(tmp_path / "b.inter"), item_path=str(tmp_path / "b.item"),
                        split="benchmark", user_field="uid", item_field="bid", time_field="ts",
                        item_catalogue=True, test_masks_valid=False)
    w, x, y, z = range(4)  # sorted tokens; w is in the catalogue only
    assert data.n_items == 4 and data.n_users == 2
    assert data.train.tolist() == [[0, x], [0, y], [1, y]]
    assert data.valid.tolist() == [[0, z]]
    assert sorted(data.test.tolist()) == [[0, x], [1, x]]  # u1's test item is one of its training items
    assert not data.test_excludes_valid and data.item_category.tolist() == [2, 0, 1, 0]
    # Two parts: validation is each user's last training row.
    two = load_dataset("recbole", inter_path=str(tmp_path / "b.inter"), split="benchmark",
                       benchmark_filename=("train", "test"), user_field="uid", item_field="bid", time_field="ts")
    assert two.n_items == 2 and two.valid.tolist() == [[0, 1]] and two.train.tolist() == [[0, 0], [1, 1]]
    assert two.test_excludes_valid  # the default: leave-one-out protocols mask validation at test
    with pytest.raises(ValueError, match="lacks the 'user_id' field"):
        load_dataset("recbole", inter_path=str(tmp_path / "b.inter"), split="benchmark")
    with pytest.raises(ValueError, match="item_catalogue needs"):
        load_dataset("recbole", inter_path=str(tmp_path / "b.train.inter"), user_field="uid", item_field="bid",
                     item_catalogue=True)
