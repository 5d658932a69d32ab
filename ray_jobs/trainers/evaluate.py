"""Evaluate a model on a held-out split, sharded over workers and summed with all-reduce.

Full ranking scores every item, masks the user's seen items (see ``InteractionData.seen_for``) and
ranks the rest. The sampled protocol ranks each user's single held-out item against
``n_negatives`` items sampled outside the user's whole history (SASRec). The session protocol
(``ray_jobs/evaluation/session.py``) makes one case per prefix of each held-out session (a "user"
of session data) and ranks its next item among all items, nothing masked. Negatives and the optional
user subset are drawn from fixed seeds on every worker, so results do not depend on the worker count.

Example:
    >>> report = evaluate(model, data, "valid", TrainConfig())  # doctest: +SKIP
    >>> print(report.describe())  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ray_jobs.data.dataset import InteractionData
from ray_jobs.evaluation import (
    FULL_RANKING,
    SAMPLED_LOO,
    EvalReport,
    count_per_row,
    cross_category_share,
    hit_matrix,
    hit_rate_at_k,
    hr_at_k_sampled,
    mask_seen,
    metric_key,
    mrr_at_k,
    ndcg_at_k,
    ndcg_at_k_sampled,
    novelty,
    precision_at_k,
    rank_of_positive,
    recall_at_k,
    sample_negatives,
    top_k_items,
)
from ray_jobs.evaluation.session import SESSION_PROTOCOL, SessionCases, session_cases, session_metrics
from ray_jobs.models.base import SEQ, USER
from ray_jobs.trainers.batches import last_window, user_histories
from ray_jobs.trainers.config import TrainConfig

__all__ = ["evaluate", "protocol_description"]

_VALID_SEED, _TEST_SEED = 1, 2  # distinct negative samples for the two splits


@dataclass
class _Sums:
    """Per-user metric sums and the user count, all-reduced across workers at the end."""

    values: dict[str, float] = field(default_factory=dict)
    n_users: int = 0

    def add(self, key: str, per_user: np.ndarray) -> None:
        self.values[key] = self.values.get(key, 0.0) + float(np.sum(per_user))


def protocol_description(data: InteractionData, split: str, cfg: TrainConfig) -> str:
    """Human-readable protocol, e.g. for Gowalla test: full ranking with valid items also masked."""
    if cfg.protocol == "sampled":
        return SAMPLED_LOO.replace("100", str(cfg.n_negatives))
    if cfg.protocol == "session":
        return SESSION_PROTOCOL
    if split == "test" and data.test_excludes_valid and len(data.valid):
        return FULL_RANKING.replace("training interactions", "training or validation interactions")
    return FULL_RANKING


def _input_builder(model: nn.Module, data: InteractionData, split: str, device):
    """A function from user ids to the model's scoring batch (user ids, or recent-item windows)."""
    if getattr(model, "batch_kind", "") == "sequence":
        histories = user_histories(data.seen_for(split), data.n_users)  # built once per evaluation
        cfg: Any = model.config
        max_len: int = cfg.max_len
        return lambda users: {SEQ: torch.from_numpy(last_window(histories, users, max_len)).to(device)}
    return lambda users: {USER: torch.from_numpy(users).to(device)}


def _eval_users(truth: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    users = np.unique(truth[:, 0])
    if cfg.max_eval_users is not None and len(users) > cfg.max_eval_users:
        rng = np.random.default_rng([cfg.seed, 7])
        users = np.sort(rng.choice(users, cfg.max_eval_users, replace=False))
    return users


def _by_user(pairs: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr, items) of ``pairs`` grouped by user."""
    order = np.argsort(pairs[:, 0], kind="stable")
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(pairs[:, 0], minlength=n_users), out=indptr[1:])
    return indptr, pairs[order, 1]


def _rows_of(indptr: np.ndarray, items: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    counts = indptr[users + 1] - indptr[users]
    rows = np.repeat(np.arange(len(users)), counts)
    cols = np.concatenate([items[indptr[u] : indptr[u + 1]] for u in users]) if len(users) else items[:0]
    return rows, cols


@torch.no_grad()
def _full_ranking(model, data, split, cfg, users, device, sums: _Sums) -> np.ndarray:
    truth_ptr, truth_items = _by_user(getattr(data, split), data.n_users)
    seen_ptr, seen_items = _by_user(data.seen_for(split), data.n_users)
    counts = data.item_counts()
    max_k = max(cfg.ks)
    recommended = np.zeros(data.n_items, dtype=np.int64)
    inputs = _input_builder(model, data, split, device)
    for start in range(0, len(users), cfg.eval_batch_size):
        chunk = users[start : start + cfg.eval_batch_size]
        scores = model.score(inputs(chunk)).float()
        mask_seen(scores, *_rows_of(seen_ptr, seen_items, chunk))
        top = top_k_items(scores, max_k)
        t_rows, t_cols = _rows_of(truth_ptr, truth_items, chunk)
        hits = hit_matrix(top, t_rows, t_cols)
        n_rel = count_per_row(t_rows, len(chunk))
        for k in cfg.ks:
            sums.add(metric_key("recall", k), recall_at_k(hits, n_rel, k))
            sums.add(metric_key("ndcg", k), ndcg_at_k(hits, n_rel, k))
            sums.add(metric_key("precision", k), precision_at_k(hits, k))
            sums.add(metric_key("mrr", k), mrr_at_k(hits, k))
            sums.add(metric_key("hit_rate", k), hit_rate_at_k(hits, k))
            sums.add(metric_key("novelty", k), novelty(top[:, :k], counts, data.n_users))
            if data.item_category is not None:
                h_rows, h_cols = _rows_of(seen_ptr, seen_items, chunk)
                sums.add(
                    metric_key("cross_category_share", k),
                    cross_category_share(top[:, :k], data.item_category, h_rows, h_cols),
                )
        np.add.at(recommended, top[:, :max_k].ravel(), 1)
        sums.n_users += len(chunk)
    return recommended


@torch.no_grad()
def _sampled(model, data, split, cfg, users, all_users, device, sums: _Sums) -> None:
    truth = getattr(data, split)
    if len(np.unique(truth[:, 0])) != len(truth):
        raise ValueError("the sampled protocol needs leave-one-out data (one held-out item per user)")
    target = np.full(data.n_users, -1, dtype=np.int64)
    target[truth[:, 0]] = truth[:, 1]  # leave-one-out: one held-out item per user
    history_ptr, history_items = _by_user(np.concatenate([data.train, data.valid, data.test]), data.n_users)
    # Draw negatives for every evaluated user on every worker so sharding cannot change them.
    rng = np.random.default_rng([cfg.seed, _VALID_SEED if split == "valid" else _TEST_SEED])
    exclude = [history_items[history_ptr[u] : history_ptr[u + 1]] for u in all_users]
    negatives = sample_negatives(rng, data.n_items, exclude, cfg.n_negatives)
    row_of = {u: i for i, u in enumerate(all_users)}
    inputs = _input_builder(model, data, split, device)
    for start in range(0, len(users), cfg.eval_batch_size):
        chunk = users[start : start + cfg.eval_batch_size]
        scores = model.score(inputs(chunk)).float().cpu().numpy()
        rows = np.arange(len(chunk))
        neg = negatives[[row_of[u] for u in chunk]]
        ranks = rank_of_positive(scores[rows, target[chunk]], scores[rows[:, None], neg])
        for k in cfg.ks:
            sums.add(metric_key("hit_rate", k), hr_at_k_sampled(ranks, k))
            sums.add(metric_key("ndcg", k), ndcg_at_k_sampled(ranks, k))
        sums.n_users += len(chunk)


def held_out_sessions(data: InteractionData, split: str) -> SessionCases:
    """The cases of ``split``: those a benchmark's files give (``data.held_out_cases``), else one
    per prefix of each of its "users", each a session whose rows are in order."""
    if data.held_out_cases and split in data.held_out_cases:
        return data.held_out_cases[split]
    pairs = getattr(data, split)
    return session_cases(user_histories(pairs, data.n_users)) if len(pairs) else session_cases([])


def _session_inputs(model: nn.Module, cases: SessionCases, device) -> Any:
    """A function from case indices to the model's scoring batch: prefix windows for sequence
    models; for the others (popularity) the session's index, which they ignore or look up."""
    if getattr(model, "batch_kind", "") == "sequence":
        max_len: int = getattr(model, "config").max_len
        return lambda rows: {SEQ: torch.from_numpy(cases.windows(rows, max_len)).to(device)}
    return lambda rows: {USER: torch.from_numpy(cases.session_index[rows]).to(device)}


@torch.no_grad()
def _sessions(model, data, split, cfg, rank, world_size, device, sums: _Sums) -> None:
    cases = held_out_sessions(data, split)
    inputs = _session_inputs(model, cases, device)
    mine = np.arange(len(cases))[rank::world_size]
    for name in ("p", "mrr", "ndcg"):  # every key on every rank, even one without cases (all-reduce)
        for k in cfg.ks:
            sums.add(metric_key(name, k), np.zeros(0))
    for start in range(0, len(mine), cfg.eval_batch_size):
        rows = mine[start : start + cfg.eval_batch_size]
        per_case = session_metrics(model.score(inputs(rows)).float(), cases.targets[rows], cfg.ks)
        for key, values in per_case.items():
            sums.add(key.replace("hit@", "p@"), values)  # P@K, as the session papers name it
        sums.n_users += len(rows)


def evaluate(
    model: nn.Module,
    data: InteractionData,
    split: str,
    cfg: TrainConfig,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
) -> EvalReport:
    """Score ``split`` ("valid" or "test") and return averaged metrics with their protocol.

    Each worker scores users ``rank::world_size`` (session protocol: cases, and the report's
    ``n_users`` counts cases); sums are all-reduced when ``world_size > 1`` (``torch.distributed``
    must then be initialised, as it is inside a Ray Train worker).
    """
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    was_training = model.training
    model.eval()
    all_users = _eval_users(getattr(data, split), cfg)
    mine = all_users[rank::world_size]
    sums = _Sums()
    recommended = None
    if cfg.protocol == "session":
        _sessions(model, data, split, cfg, rank, world_size, device, sums)
    elif cfg.protocol == "full":
        recommended = _full_ranking(model, data, split, cfg, mine, device, sums)
    else:
        _sampled(model, data, split, cfg, mine, all_users, device, sums)
    keys = sorted(sums.values)
    vec = torch.tensor([sums.values[k] for k in keys] + [float(sums.n_users)], dtype=torch.float64)
    if world_size > 1:
        # Collectives run on the worker's device (NCCL needs CUDA tensors, gloo takes CPU ones).
        vec = vec.to(device)
        dist.all_reduce(vec)
        vec = vec.cpu()
        if recommended is not None:
            rec_t = torch.from_numpy(recommended).to(device)
            dist.all_reduce(rec_t)
            recommended = rec_t.cpu().numpy()
    n_users = int(vec[-1].item())
    metrics = {k: float(v) / max(n_users, 1) for k, v in zip(keys, vec[:-1].tolist())}
    if recommended is not None:
        metrics["coverage@{}".format(max(cfg.ks))] = float((recommended > 0).sum()) / data.n_items
    model.train(was_training)
    return EvalReport(protocol=protocol_description(data, split, cfg), split=split, n_users=n_users, metrics=metrics)
