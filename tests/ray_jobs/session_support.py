"""A toy session task for the session models' learning tests: sessions walk a fixed cycle over
12 items, so the next item after any prefix is known exactly."""

from __future__ import annotations

import numpy as np
import torch

from ray_jobs.data.dataset import InteractionData
from ray_jobs.models.base import POS, SEQ
from ray_jobs.trainers.batches import sequence_batches

N_ITEMS = 12
MAX_LEN = 6


def cycle_sessions(n_sessions: int = 200, seed: int = 0) -> InteractionData:
    """Sessions of 3-6 consecutive items of the cycle 0 -> 1 -> ... -> 11 -> 0, one "user" each."""
    rng = np.random.default_rng(seed)
    sessions = [(rng.integers(N_ITEMS) + np.arange(rng.integers(3, 7))) % N_ITEMS for _ in range(n_sessions)]
    train = np.array([[s, item] for s, session in enumerate(sessions) for item in session])
    return InteractionData(name="cycle", n_users=n_sessions, n_items=N_ITEMS, train=train,
                           valid=train[:0], test=train[:0], sequential=True)


def train_on_prefixes(model: torch.nn.Module, data: InteractionData, epochs: int = 15) -> torch.nn.Module:
    """Adam on every prefix (one target each, at the last position); returns the model in eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for epoch in range(epochs):
        for batch in sequence_batches(data.train, data.n_users, N_ITEMS, MAX_LEN, 64, epoch, 0,
                                      n_negatives=0, windows="prefixes"):
            assert (batch[POS][:, :-1] == 0).all()
            opt.zero_grad()
            model(batch).backward()
            opt.step()
    return model.eval()


def cycle_prefixes() -> torch.Tensor:
    """For each item i, the window ``i, i + 1`` (SASRec ids, left-padded); its next item is i + 2."""
    return torch.tensor([[0] * (MAX_LEN - 2) + [(i % N_ITEMS) + 1, ((i + 1) % N_ITEMS) + 1] for i in range(N_ITEMS)])


def predicts_the_cycle(model: torch.nn.Module) -> bool:
    with torch.no_grad():
        top = model.score({SEQ: cycle_prefixes()}).argmax(-1)
    return top.tolist() == [(i + 2) % N_ITEMS for i in range(N_ITEMS)]
