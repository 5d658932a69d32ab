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

Arms are seen either as their embeddings (joined with the user's factors by the policy) or, with
``pair_features=True``, as what the served bandit sees: a small vector of *named* features per
(user, arm), computed from the training part only (the factor model's score of the arm for the
user, z-scored within the request like the served model scores; the user's history with the arm;
its popularity), for the ``concat`` featurisation the experiments ship with.

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
from scipy import sparse

from serving.recommend.bundle_features import standardised_scores
from streamrec.simulation.factors import SparseMatrix, randomized_svd, row_normalize

__all__ = [
    "TAOBAO_PAIR_FEATURES", "YOUSHU_PAIR_FEATURES", "ReplayData", "datasets_dir", "load_taobao_replay", "load_youshu_replay",
]

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
        pair_features: optional (n_users, n_arms, n_pair_features) named features of each
            (user, arm), which then replace ``arm_embeddings`` as what the policies see of an arm.
        pair_feature_names: the name of each of their columns.
    """

    name: str
    user_ids: np.ndarray
    user_features: np.ndarray
    arm_ids: tuple[str, ...]
    arm_embeddings: np.ndarray
    rewards: np.ndarray
    available: np.ndarray
    pair_features: np.ndarray | None = None
    pair_feature_names: tuple[str, ...] = ()

    @property
    def arm_dim(self) -> int:
        """Length of what a policy sees of one arm."""
        return self.arm_embeddings.shape[1] if self.pair_features is None else self.pair_features.shape[2]

    def arm_matrix(self, user: int, arms: np.ndarray) -> np.ndarray:
        """(len(arms), arm_dim): what a policy sees of ``arms`` when offered to ``user`` (row index)."""
        return self.arm_embeddings[arms] if self.pair_features is None else self.pair_features[user, arms]

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
    pair_features: bool = False,
) -> ReplayData:
    """Youshu bundle replay.

    Args:
        n_arms: bundles used as arms: the most popular in the *train* split (no held-out peeking).
        rank: SVD rank = user_dim = arm_dim.
        split: held-out split that pays rewards (``tune`` for choosing hyper-parameters).
        root: datasets folder.
        seed: seeds the randomized SVD.
        popularity_feature: append the arm's scaled log train popularity to its embedding.
        pair_features: also build the named per-(user, bundle) features (``YOUSHU_PAIR_FEATURES``).

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
    pairs = None
    if pair_features:
        bundle_columns = (vt.T * np.sqrt(s))[n_items:]
        graphs = _YoushuGraphs.build(ui, ub_train, bi, (n_users, n_bundles, n_items))
        pairs = _youshu_pair_features(graphs, eligible, arms, user_f[eligible] @ bundle_f[arms].T,
                                      user_f[eligible] @ bundle_columns[arms].T, popularity[arms], available[eligible])
    return ReplayData(
        name=f"youshu-{split}",
        user_ids=eligible,
        user_features=row_normalize(user_f[eligible]),
        arm_ids=tuple(f"b{b}" for b in arms),
        arm_embeddings=_arm_embeddings(bundle_f[arms], popularity[arms], popularity_feature),
        rewards=rewards[eligible],
        available=available[eligible],
        pair_features=pairs,
        pair_feature_names=YOUSHU_PAIR_FEATURES if pair_features else (),
    )


def load_taobao_replay(
    n_arms: int = 150,
    rank: int = 8,
    cutoff_ts: int = TAOBAO_DEFAULT_CUTOFF,
    reward_behaviors: tuple[str, ...] = ("pv", "cart", "fav", "buy"),
    root: str | os.PathLike[str] | None = None,
    seed: int = 0,
    popularity_feature: bool = True,
    pair_features: bool = False,
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
        pair_features: also build the named per-(user, category) features (``TAOBAO_PAIR_FEATURES``).

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
    pairs = None
    if pair_features:
        history = _TaobaoHistory.build(df, user_idx, arm_pos[cat_idx], train & (arm_pos[cat_idx] >= 0),
                                       (users.size, arms.size), cutoff_ts)
        pairs = _taobao_pair_features(history, eligible, user_f[eligible] @ cat_f[arms].T, cat_pop[arms])
    return ReplayData(
        name="taobao-" + "+".join(reward_behaviors),
        user_ids=users[eligible],
        user_features=row_normalize(user_f[eligible]),
        arm_ids=tuple(f"c{c}" for c in cats[arms]),
        arm_embeddings=_arm_embeddings(cat_f[arms], cat_pop[arms], popularity_feature),
        rewards=rewards[eligible],
        available=np.ones((eligible.size, arms.size), dtype=bool),
        pair_features=pairs,
        pair_feature_names=TAOBAO_PAIR_FEATURES if pair_features else (),
    )


def _arm_embeddings(factors: np.ndarray, train_counts: np.ndarray, popularity_feature: bool) -> np.ndarray:
    """Unit-norm factors, plus log(1 + train count) scaled to [0, 1] when asked.

    Popularity is the strongest non-personal signal in both data sets; as an embedding dimension
    the shared linear models can use it (and it is known for a new arm once it has train data).
    """
    emb = row_normalize(factors)
    if not popularity_feature:
        return emb
    return np.hstack([emb, _log_share(train_counts)[:, None]])


# What the served bandit sees of a candidate (serving/recommend/bundle_features.py), rebuilt from
# each data set's training part: the factor model's score (z within the request, as the served
# model scores), the user's own history with the arm, and its popularity.
TAOBAO_PAIR_FEATURES: tuple[str, ...] = (
    "factor_score",  # user . category factors of the log-count factorisation, z over the request's arms
    "events",  # log1p(the user's training events in the category) / 5
    "category_share",  # share of the user's training events in the category (its category affinity)
    "recency",  # 1 / (1 + days from the user's last event in the category to the cutoff); 0 if none
    "seen",  # 1 when the user has a training event in the category
    "intent",  # log1p(the user's carts, favourites and purchases in the category) / 3
    "popularity",  # log1p(the category's training events) over the most popular's
)
YOUSHU_PAIR_FEATURES: tuple[str, ...] = (
    "factor_score",  # user . mean factors of the bundle's items, z over the request's arms
    "bundle_factor_score",  # user . the bundle's own factor column (train bundles), z over the request's arms
    "item_overlap",  # share of the bundle's items the user interacted with (user_item)
    "bundle_item_overlap",  # share of the bundle's items found in the user's training bundles
    "related_bundles",  # share of the user's training bundles that share an item with it
    "popularity",  # log1p(the bundle's training users) over the most popular arm's
)


def _z_within_rows(scores: np.ndarray, offered: np.ndarray) -> np.ndarray:
    """Each row's scores standardised over its offered columns as the served features standardise a
    request's model scores (``standardised_scores``); 0 where a column is not offered."""
    return np.stack([standardised_scores(np.where(mask, row, np.nan)) for row, mask in zip(scores, offered)])


def _log_share(counts: np.ndarray) -> np.ndarray:
    """log1p(counts) over the largest (in [0, 1])."""
    logged = np.log1p(counts.astype(np.float64))
    return logged / max(float(logged.max()), 1e-12)


@dataclass(frozen=True)
class _TaobaoHistory:
    """(n_users, n_arms) training history of each user with each category arm."""

    events: np.ndarray
    intent: np.ndarray
    days_since: np.ndarray  # inf where the user never touched the category

    @classmethod
    def build(cls, df: pd.DataFrame, user_idx: np.ndarray, arm_of_event: np.ndarray, in_train: np.ndarray,
              shape: tuple[int, int], cutoff_ts: int) -> "_TaobaoHistory":
        users, arms = user_idx[in_train], arm_of_event[in_train]
        events, intent = np.zeros(shape), np.zeros(shape)
        np.add.at(events, (users, arms), 1.0)
        np.add.at(intent, (users, arms), (df["behavior"].to_numpy()[in_train] != "pv").astype(np.float64))
        last = np.full(shape, -np.inf)
        np.maximum.at(last, (users, arms), df["ts"].to_numpy()[in_train].astype(np.float64))
        return cls(events, intent, np.maximum(cutoff_ts - last, 0.0) / 86_400.0)


def _taobao_pair_features(history: _TaobaoHistory, eligible: np.ndarray, factor_scores: np.ndarray,
                          arm_counts: np.ndarray) -> np.ndarray:
    events = history.events[eligible]
    days = history.days_since[eligible]
    columns = {
        "factor_score": _z_within_rows(factor_scores, np.ones_like(factor_scores, dtype=bool)),
        "events": np.log1p(events) / 5.0,
        "category_share": events / np.maximum(events.sum(axis=1, keepdims=True), 1.0),
        "recency": np.where(np.isfinite(days), 1.0 / (1.0 + days), 0.0),
        "seen": (events > 0).astype(np.float64),
        "intent": np.log1p(history.intent[eligible]) / 3.0,
        "popularity": np.broadcast_to(_log_share(arm_counts), events.shape),
    }
    return np.stack([columns[name] for name in TAOBAO_PAIR_FEATURES], axis=-1)


@dataclass(frozen=True)
class _YoushuGraphs:
    """The training graphs as sparse 0/1 matrices."""

    user_item: sparse.csr_matrix
    user_bundle: sparse.csr_matrix
    bundle_item: sparse.csr_matrix

    @classmethod
    def build(cls, ui: np.ndarray, ub_train: np.ndarray, bi: np.ndarray, sizes: tuple[int, int, int]) -> "_YoushuGraphs":
        n_users, n_bundles, n_items = sizes

        def binary(pairs: np.ndarray, shape: tuple[int, int]) -> sparse.csr_matrix:
            matrix = sparse.csr_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=shape)
            matrix.data[:] = 1.0  # duplicates summed: back to 0/1
            return matrix

        return cls(binary(ui, (n_users, n_items)), binary(ub_train, (n_users, n_bundles)), binary(bi, (n_bundles, n_items)))


def _youshu_pair_features(graphs: _YoushuGraphs, eligible: np.ndarray, arms: np.ndarray, item_scores: np.ndarray,
                          bundle_scores: np.ndarray, arm_counts: np.ndarray, available: np.ndarray) -> np.ndarray:
    arm_items = graphs.bundle_item[arms]
    sizes = np.maximum(np.asarray(arm_items.sum(axis=1)).ravel(), 1.0)[None, :]
    users_bundles = graphs.user_bundle[eligible]
    items_via_bundles = (users_bundles @ graphs.bundle_item).sign()
    shares_item = ((graphs.bundle_item @ arm_items.T) > 0).astype(np.float64)  # (n_bundles, n_arms)
    related = (users_bundles @ shares_item).toarray() / np.maximum(np.asarray(users_bundles.sum(axis=1)), 1.0)
    columns = {
        "factor_score": _z_within_rows(item_scores, available),
        "bundle_factor_score": _z_within_rows(bundle_scores, available),
        "item_overlap": (graphs.user_item[eligible] @ arm_items.T).toarray() / sizes,
        "bundle_item_overlap": (items_via_bundles @ arm_items.T).toarray() / sizes,
        "related_bundles": related,
        "popularity": np.broadcast_to(_log_share(arm_counts), available.shape),
    }
    return np.stack([columns[name] for name in YOUSHU_PAIR_FEATURES], axis=-1)
