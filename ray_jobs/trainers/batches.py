"""Training batches, drawn from one global per-epoch sample and sharded across workers.

Every worker draws the same permutation and negatives from ``(seed, epoch)`` and keeps its slice of
each global batch. With DDP averaging gradients, N workers therefore take the same optimisation steps
as one worker with the same global batch size. Shards are equal-sized (a short last batch is trimmed
to a multiple of the world size) so that the mean of per-shard means is the global mean.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ray_jobs.data.dataset import user_histories
from ray_jobs.models.base import NEG, POS, SEQ, USER

__all__ = ["pairwise_batches", "sequence_batches", "sequence_windows", "user_histories", "last_window", "n_global_batches"]


def _sample_negatives(
    rng: np.random.Generator, users: np.ndarray, n_items: int, pos_keys: np.ndarray, low: int = 0
) -> np.ndarray:
    """Uniform items in ``[low, n_items + low)`` not among the user's positives (by rejection)."""
    stride = n_items + low
    neg = rng.integers(low, n_items + low, size=users.shape, dtype=np.int64)
    bad = np.isin(users * stride + neg, pos_keys)
    while bad.any():
        neg[bad] = rng.integers(low, n_items + low, size=int(bad.sum()), dtype=np.int64)
        bad = np.isin(users * stride + neg, pos_keys)
    return neg


def n_global_batches(n_examples: int, batch_size: int) -> int:
    return (n_examples + batch_size - 1) // batch_size


def _shard(start: int, stop: int, rank: int, world_size: int) -> np.ndarray:
    """This rank's equal share of rows ``start..stop`` (the remainder ``< world_size`` is dropped)."""
    per_rank = (stop - start) // world_size
    return np.arange(start + rank * per_rank, start + (rank + 1) * per_rank)


def pairwise_batches(
    train: np.ndarray,
    n_items: int,
    batch_size: int,
    epoch: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
) -> Iterator[dict[str, torch.Tensor]]:
    """(user, positive, negative) triples: every training pair once per epoch, one uniform negative.

    Args:
        train: ``(n, 2)`` training pairs.
        n_items: negatives are drawn from ``0..n_items-1`` minus the user's training items.
        batch_size: global batch size (split across workers).
        epoch, seed: seed the permutation and the negatives.
        rank, world_size: this worker's shard of each global batch.
        device: where the tensors go.
    """
    rng = np.random.default_rng([seed, epoch])
    pairs = train[rng.permutation(len(train))]
    pos_keys = np.unique(train[:, 0] * n_items + train[:, 1])
    neg = _sample_negatives(rng, pairs[:, 0], n_items, pos_keys)
    for start in range(0, len(pairs), batch_size):
        idx = _shard(start, min(start + batch_size, len(pairs)), rank, world_size)
        if len(idx) == 0:
            break  # fewer rows left than workers (same decision on every rank)
        yield {
            USER: torch.from_numpy(pairs[idx, 0]).to(device),
            POS: torch.from_numpy(pairs[idx, 1]).to(device),
            NEG: torch.from_numpy(neg[idx]).to(device),
        }


def last_window(histories: list[np.ndarray], users: np.ndarray, max_len: int) -> np.ndarray:
    """``(len(users), max_len)`` left-padded SASRec ids (item + 1, 0 = pad) of the last items."""
    out = np.zeros((len(users), max_len), dtype=np.int64)
    for row, u in enumerate(users):
        h = histories[u][-max_len:] + 1
        if len(h):
            out[row, max_len - len(h) :] = h
    return out


def sequence_windows(histories: list[np.ndarray], max_len: int, windows: str = "last") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SASRec training windows of every history with >= 2 items: ``(seq, pos, owner)``.

    A window's input is up to ``max_len`` consecutive items and its targets the same items shifted
    by one, left-padded SASRec ids (item + 1, 0 = pad). ``last`` keeps each user's last window (the
    paper); ``all`` cuts the whole history into windows ending at the last item, max_len apart, so
    every transition of a long history is a target once per epoch (the last window is the same).
    ``prefixes`` (session models, the session papers' augmentation) makes one window per prefix of
    each history, its last ``max_len`` items, with the next item as the only target, at the last
    position. ``owner`` is the user row of each window in ``histories``.
    """
    inputs, targets, owner = [], [], []
    for user, history in enumerate(histories):
        if len(history) < 2:
            continue
        if windows == "prefixes":
            for end in range(2, len(history) + 1):
                inputs.append(history[max(end - 1 - max_len, 0) : end - 1])
                targets.append(np.concatenate([np.full(min(end - 1, max_len) - 1, -1), history[end - 1 : end]]))
                owner.append(user)
            continue
        ends = [len(history)] if windows == "last" else range(len(history), 1, -max_len)
        for end in ends:
            start = max(end - 1 - max_len, 0)
            inputs.append(history[start : end - 1])
            targets.append(history[start + 1 : end])
            owner.append(user)
    rows = np.arange(len(inputs))
    return last_window(inputs, rows, max_len), last_window(targets, rows, max_len), np.asarray(owner, dtype=np.int64)


def sequence_batches(
    train: np.ndarray,
    n_users: int,
    n_items: int,
    max_len: int,
    batch_size: int,
    epoch: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    n_negatives: int = 1,
    windows: str = "last",
) -> Iterator[dict[str, torch.Tensor]]:
    """SASRec windows (:func:`sequence_windows`), shuffled, once per epoch.

    Each target position gets ``n_negatives`` uniform negatives outside the user's training items
    (SASRec Sec. III-F has one): ``NEG`` is ``(B, L)`` for one, ``(B, L, n)`` for more, and absent
    for 0 (a loss that scores every item).
    """
    histories = user_histories(train, n_users)
    seq, pos, owner = sequence_windows(histories, max_len, windows)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(owner))
    seq, pos, owner = seq[order], pos[order], owner[order]
    neg = None
    if n_negatives > 0:
        stride = n_items + 1
        pos_keys = np.unique(train[:, 0] * stride + train[:, 1] + 1)
        shape = (len(owner), max_len, n_negatives)
        neg = _sample_negatives(rng, np.broadcast_to(owner[:, None, None], shape), n_items, pos_keys, low=1)
        neg[pos == 0] = 0
        if n_negatives == 1:
            neg = neg[..., 0]
    for start in range(0, len(owner), batch_size):
        idx = _shard(start, min(start + batch_size, len(owner)), rank, world_size)
        if len(idx) == 0:
            break
        batch = {SEQ: torch.from_numpy(seq[idx]).to(device), POS: torch.from_numpy(pos[idx]).to(device)}
        if neg is not None:
            batch[NEG] = torch.from_numpy(neg[idx]).to(device)
        yield batch
