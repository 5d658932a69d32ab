"""Replay environments built from real held-out interactions.

Context features come from the *training* part only (a low-rank factorisation); rewards come from
the *held-out* part: showing arm a to user u pays 1 iff u really interacted with a there.

- Youshu (CrossCBR / BGCN split): arms = bundles. User and item factors from a randomized SVD of
  the user-item matrix (``user_item.txt`` plus the items of the user's *train* bundles); a bundle's
  embedding is the mean of its items' factors (so a bundle never seen in training still has one).
  Reward: (user, bundle) in ``user_bundle_test.txt`` (or ``_tune`` for tuning). A user's train
  bundles are not candidates (the usual all-ranking protocol).
- Taobao UserBehavior slice: arms = categories. Events before ``cutoff_ts`` are training: factors
  of the log-count user x category matrix. Reward: the user has an event of one of
  ``reward_behaviors`` in that category at or after the cutoff.

The datasets are read in place (never copied): ``$STREAMREC_DATA__DATASETS_DIR`` or
``<repo>/../shared/datasets``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from streamrec.simulation.factors import SparseMatrix, randomized_svd, row_normalize

__all__ = ["ReplayData", "datasets_dir", "load_taobao_replay", "load_youshu_replay"]

DATASETS_DIR_ENV = "STREAMREC_DATA__DATASETS_DIR"
# 2017-12-02 00:00 Beijing time: the last two days of the slice are held out.
TAOBAO_DEFAULT_CUTOFF = 1512144000


@dataclass(frozen=True)
class ReplayData:
    """Everything a replay needs, restricted to eligible users and the chosen arms.

    Attributes:
        name: dataset label.
        user_ids: original user id of each row.
        user_features: (n_users, user_dim) context of each user.
        arm_ids: arm ids (strings, as the policies see them).
        arm_embeddings: (n_arms, arm_dim).
        rewards: (n_users, n_arms) held-out reward of showing the arm to the user.
        available: (n_users, n_arms) False where the arm is not a candidate for the user.
    """

    name: str
    user_ids: np.ndarray
    user_features: np.ndarray
    arm_ids: tuple[str, ...]
    arm_embeddings: np.ndarray
    rewards: np.ndarray
    available: np.ndarray

    @property
    def n_users(self) -> int:
        return self.user_features.shape[0]

    @property
    def n_arms(self) -> int:
        return len(self.arm_ids)

    def summary(self) -> dict[str, float]:
        """Sizes and reward density (for reports)."""
        cand = self.available.sum(axis=1)
        pos = (self.rewards * self.available).sum(axis=1)
        return {
            "users": float(self.n_users),
            "arms": float(self.n_arms),
            "mean_candidates": float(cand.mean()),
            "mean_positives": float(pos.mean()),
            "random_hit_rate": float((pos / cand).mean()),
        }


def datasets_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The read-only datasets folder.

    Args:
        path: explicit folder; else the env variable; else next to the repository.

    Returns:
        An existing directory.
    """
    if path is None:
        env = os.environ.get(DATASETS_DIR_ENV)
        path = env if env else Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"datasets directory {p} not found; set ${DATASETS_DIR_ENV}")
    return p


def _read_pairs(path: Path) -> np.ndarray:
    return pd.read_csv(path, sep=r"\s+", header=None, dtype=np.int64, engine="c").to_numpy()


def load_youshu_replay(
    n_arms: int = 150,
    rank: int = 8,
    split: Literal["test", "tune"] = "test",
    root: str | os.PathLike[str] | None = None,
    seed: int = 0,
    popularity_feature: bool = True,
) -> ReplayData:
    """Youshu bundle replay.

    Args:
        n_arms: bundles used as arms: the most popular in the *train* split (no held-out peeking).
        rank: SVD rank = user_dim = arm_dim.
        split: held-out split that pays rewards (``tune`` for choosing hyper-parameters).
        root: datasets folder.
        seed: seeds the randomized SVD.
        popularity_feature: append the arm's scaled log train popularity to its embedding.

    Returns:
        The replay data; users with no held-out positive among the arms are dropped.
    """
    if split not in ("test", "tune"):
        raise ValueError(f"split must be 'test' or 'tune', got {split!r}")
    base = datasets_dir(root) / "crosscbr" / "Youshu"
    n_users, n_bundles, n_items = (int(v) for v in (base / "Youshu_data_size.txt").read_text().split())
    ub_train = _read_pairs(base / "user_bundle_train.txt")
    ub_held = _read_pairs(base / f"user_bundle_{split}.txt")
    ui = _read_pairs(base / "user_item.txt")
    bi = _read_pairs(base / "bundle_item.txt")

    # Train bundles as extra columns: user factors see them, and items and bundles share a space.
    rows = np.concatenate([ui[:, 0], ub_train[:, 0]])
    cols = np.concatenate([ui[:, 1], n_items + ub_train[:, 1]])
    matrix = SparseMatrix.from_triplets(rows, cols, None, (n_users, n_items + n_bundles))
    u, s, vt = randomized_svd(matrix.map_values(lambda v: np.minimum(v, 1.0)), rank, np.random.default_rng(seed))
    user_f = u * np.sqrt(s)
    item_f = (vt.T * np.sqrt(s))[:n_items]

    bundle_f = np.zeros((n_bundles, rank))
    np.add.at(bundle_f, bi[:, 0], item_f[bi[:, 1]])
    bundle_f /= np.maximum(np.bincount(bi[:, 0], minlength=n_bundles), 1)[:, None]

    popularity = np.bincount(ub_train[:, 1], minlength=n_bundles)
    arms = np.argsort(-popularity, kind="stable")[:n_arms]
    arm_pos = np.full(n_bundles, -1)
    arm_pos[arms] = np.arange(arms.size)

    rewards = np.zeros((n_users, arms.size))
    held = ub_held[arm_pos[ub_held[:, 1]] >= 0]
    rewards[held[:, 0], arm_pos[held[:, 1]]] = 1.0
    available = np.ones((n_users, arms.size), dtype=bool)
    seen = ub_train[arm_pos[ub_train[:, 1]] >= 0]
    available[seen[:, 0], arm_pos[seen[:, 1]]] = False
    eligible = np.flatnonzero((rewards * available).sum(axis=1) > 0)
    return ReplayData(
        name=f"youshu-{split}",
        user_ids=eligible,
        user_features=row_normalize(user_f[eligible]),
        arm_ids=tuple(f"b{b}" for b in arms),
        arm_embeddings=_arm_embeddings(bundle_f[arms], popularity[arms], popularity_feature),
        rewards=rewards[eligible],
        available=available[eligible],
    )


def load_taobao_replay(
    n_arms: int = 150,
    rank: int = 8,
    cutoff_ts: int = TAOBAO_DEFAULT_CUTOFF,
    reward_behaviors: tuple[str, ...] = ("pv", "cart", "fav", "buy"),
    root: str | os.PathLike[str] | None = None,
    seed: int = 0,
    popularity_feature: bool = True,
) -> ReplayData:
    """Taobao category replay.

    Args:
        n_arms: categories used as arms: the most frequent before the cutoff.
        rank: SVD rank = user_dim = arm_dim.
        cutoff_ts: unix seconds; events before it are training, at/after it pay rewards.
        reward_behaviors: which later behaviours count as a reward (e.g. ``("buy",)``).
        root: datasets folder.
        seed: seeds the randomized SVD.
        popularity_feature: append the arm's scaled log train popularity to its embedding.

    Returns:
        The replay data; users with no later positive among the arms are dropped.
    """
    known = {"pv", "cart", "fav", "buy"}
    if not reward_behaviors or not set(reward_behaviors) <= known:
        raise ValueError(f"reward_behaviors must be a non-empty subset of {sorted(known)}")
    path = datasets_dir(root) / "taobao_userbehavior_subset" / "UserBehavior_head.csv"
    df = pd.read_csv(path, header=None, names=["user", "item", "category", "behavior", "ts"])
    users, user_idx = np.unique(df["user"].to_numpy(), return_inverse=True)
    cats, cat_idx = np.unique(df["category"].to_numpy(), return_inverse=True)
    train = df["ts"].to_numpy() < cutoff_ts
    if not train.any() or train.all():
        raise ValueError("cutoff_ts leaves no training or no held-out events")

    matrix = SparseMatrix.from_triplets(user_idx[train], cat_idx[train], None, (users.size, cats.size))
    u, s, vt = randomized_svd(matrix.map_values(np.log1p), rank, np.random.default_rng(seed))
    user_f = u * np.sqrt(s)
    cat_f = vt.T * np.sqrt(s)

    cat_pop = np.bincount(cat_idx[train], minlength=cats.size)
    arms = np.argsort(-cat_pop, kind="stable")[:n_arms]
    arm_pos = np.full(cats.size, -1)
    arm_pos[arms] = np.arange(arms.size)
    later = ~train & df["behavior"].isin(list(reward_behaviors)).to_numpy() & (arm_pos[cat_idx] >= 0)
    rewards = np.zeros((users.size, arms.size))
    rewards[user_idx[later], arm_pos[cat_idx[later]]] = 1.0
    eligible = np.flatnonzero(rewards.sum(axis=1) > 0)
    return ReplayData(
        name="taobao-" + "+".join(reward_behaviors),
        user_ids=users[eligible],
        user_features=row_normalize(user_f[eligible]),
        arm_ids=tuple(f"c{c}" for c in cats[arms]),
        arm_embeddings=_arm_embeddings(cat_f[arms], cat_pop[arms], popularity_feature),
        rewards=rewards[eligible],
        available=np.ones((eligible.size, arms.size), dtype=bool),
    )


def _arm_embeddings(factors: np.ndarray, train_counts: np.ndarray, popularity_feature: bool) -> np.ndarray:
    """Unit-norm factors, plus log(1 + train count) scaled to [0, 1] when asked.

    Popularity is the strongest non-personal signal in both data sets; as an embedding dimension
    the shared linear models can use it (and it is known for a new arm once it has train data).
    """
    emb = row_normalize(factors)
    if not popularity_feature:
        return emb
    logpop = np.log1p(train_counts.astype(np.float64))
    return np.hstack([emb, (logpop / max(logpop.max(), 1e-12))[:, None]])
