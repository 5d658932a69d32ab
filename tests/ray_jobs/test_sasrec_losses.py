"""SASRec's training objectives (``loss``) and windows, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ray_jobs.models.base import NEG, POS, SEQ
from ray_jobs.models.sasrec import SASRec, SASRecConfig
from ray_jobs.trainers.batches import sequence_batches, sequence_windows

N_ITEMS = 12


class _Catalogue:
    def __init__(self, n_items: int) -> None:
        self.n_items = n_items


def _model(**overrides) -> SASRec:
    torch.manual_seed(0)
    config = SASRecConfig.with_overrides({"max_len": 4, "hidden_dim": 8, "n_blocks": 1, "dropout": 0.0, **overrides})
    return SASRec(config, _Catalogue(n_items=N_ITEMS)).eval()


def _batch(neg: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    batch = {SEQ: torch.tensor([[0, 3, 4, 5], [0, 0, 7, 2]]), POS: torch.tensor([[0, 4, 5, 6], [0, 0, 2, 9]])}
    if neg is not None:
        batch[NEG] = neg
    return batch


def _scored(model: SASRec, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states and targets of the positions that have a target (what every loss averages over)."""
    valid = batch[POS] != 0
    return model.encode(batch[SEQ])[valid], batch[POS][valid]


def test_windows_last_is_the_paper_and_all_covers_every_transition_once() -> None:
    history = np.arange(7)  # items 0..6 in time order
    seq, pos, owner = sequence_windows([history, np.array([4])], max_len=3, windows="last")
    assert seq.tolist() == [[4, 5, 6]] and pos.tolist() == [[5, 6, 7]] and owner.tolist() == [0]  # ids + 1
    seq, pos, owner = sequence_windows([history, np.array([4])], max_len=3, windows="all")
    assert seq.tolist() == [[4, 5, 6], [1, 2, 3]] and pos.tolist() == [[5, 6, 7], [2, 3, 4]]
    assert owner.tolist() == [0, 0]
    transitions = {(a, b) for s, p in zip(seq, pos) for a, b in zip(s, p) if b}
    assert transitions == {(i + 1, i + 2) for i in range(6)}
    seq, pos, _ = sequence_windows([np.arange(5)], max_len=3, windows="all")  # 4 transitions: 3 + 1
    assert seq.tolist() == [[2, 3, 4], [0, 0, 1]] and pos.tolist() == [[3, 4, 5], [0, 0, 2]]


def test_batches_carry_k_negatives_outside_the_users_items_and_none_for_ce() -> None:
    train = np.array([[0, 1], [0, 2], [0, 3], [0, 4], [1, 5], [1, 6]])
    (batch,) = sequence_batches(train, 2, N_ITEMS, max_len=4, batch_size=8, epoch=0, seed=0, n_negatives=5)
    assert batch[NEG].shape == (2, 4, 5)
    for seq, pos, neg in zip(batch[SEQ], batch[POS], batch[NEG]):
        own = set(seq.tolist()) | set(pos.tolist())
        assert (neg[pos == 0] == 0).all()
        assert not set(neg[pos != 0].flatten().tolist()) & own
    (plain,) = sequence_batches(train, 2, N_ITEMS, max_len=4, batch_size=8, epoch=0, seed=0, n_negatives=0)
    assert NEG not in plain
    (one,) = sequence_batches(train, 2, N_ITEMS, max_len=4, batch_size=8, epoch=0, seed=0)
    assert one[NEG].shape == (2, 4)  # the paper's one negative per position, as before


def test_bce_is_eq6_with_one_negative() -> None:
    model = _model(loss="bce")
    neg = torch.tensor([[0, 8, 9, 10], [0, 0, 11, 1]])
    h, target = _scored(model, _batch(neg))
    s_pos = (h * model.item_emb(target)).sum(-1)
    s_neg = (h * model.item_emb(neg[neg != 0])).sum(-1)
    expected = (-torch.log(torch.sigmoid(s_pos)) - torch.log(1 - torch.sigmoid(s_neg))).mean()
    assert torch.allclose(model(_batch(neg)), expected, atol=1e-6)


def test_ce_is_softmax_over_every_item() -> None:
    model = _model(loss="ce")
    h, target = _scored(model, _batch())
    logits = h @ model.item_emb.weight[1:].T  # items 0..N-1 are SASRec ids 1..N
    expected = -torch.log_softmax(logits, -1)[torch.arange(len(target)), target - 1].mean()
    assert model.config.negatives_per_position() == 0
    assert torch.allclose(model(_batch()), expected, atol=1e-6)


def test_sampled_softmax_over_the_positive_and_its_negatives() -> None:
    model = _model(loss="sampled_softmax", n_negatives=3)
    neg = torch.randint(1, N_ITEMS + 1, (2, 4, 3), generator=torch.Generator().manual_seed(1))
    h, target = _scored(model, _batch(neg))
    negs = neg[_batch()[POS] != 0]
    s_pos = (h * model.item_emb(target)).sum(-1, keepdim=True)
    s_neg = (h.unsqueeze(1) * model.item_emb(negs)).sum(-1)
    expected = -torch.log_softmax(torch.cat([s_pos, s_neg], 1), 1)[:, 0].mean()
    assert torch.allclose(model(_batch(neg)), expected, atol=1e-6)


def test_gbce_weights_the_positive_by_beta() -> None:
    neg = torch.randint(1, N_ITEMS + 1, (2, 4, 4), generator=torch.Generator().manual_seed(2))
    gbce = _model(loss="gbce", n_negatives=4, gbce_t=0.75)
    h, target = _scored(gbce, _batch(neg))
    negs = neg[_batch()[POS] != 0]
    s_pos = (h * gbce.item_emb(target)).sum(-1)
    s_neg = (h.unsqueeze(1) * gbce.item_emb(negs)).sum(-1)
    alpha = 4 / (N_ITEMS - 1)
    beta = alpha * (0.75 * (1 - 1 / alpha) + 1 / alpha)
    assert math.isclose(beta, 1 - 0.75 * (1 - alpha))  # = 1 - t (1 - alpha)
    # gSASRec Eq. 10: log(sigma(s+)^beta) for the positive, BCE for each negative.
    expected = (-beta * F.logsigmoid(s_pos) - F.logsigmoid(-s_neg).sum(-1)).mean()
    assert torch.allclose(gbce(_batch(neg)), expected, atol=1e-6)
    # t = 0 gives beta = 1: plain BCE with the same negatives.
    bce = _model(loss="bce", n_negatives=4)
    assert torch.allclose(_model(loss="gbce", n_negatives=4, gbce_t=0.0)(_batch(neg)), bce(_batch(neg)), atol=1e-6)


@pytest.mark.parametrize("loss", ["bce", "ce", "sampled_softmax", "gbce"])
def test_each_loss_learns_a_deterministic_next_item(loss: str) -> None:
    """Histories that always step item i -> i + 1: after training, the top item after a prefix is
    the next one far more often than chance (1 in 12), whichever objective trained it; the full
    softmax, which sees every item at every step, gets all of them."""
    rng = np.random.default_rng(0)
    starts = rng.integers(0, N_ITEMS - 5, size=120)
    train = np.array([[u, s + j] for u, s in enumerate(starts) for j in range(5)])
    torch.manual_seed(0)
    config = SASRecConfig.with_overrides({"max_len": 4, "hidden_dim": 16, "n_blocks": 1, "dropout": 0.0,
                                          "loss": loss, "n_negatives": 4, "windows": "all"})
    model = SASRec(config, _Catalogue(n_items=N_ITEMS))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for epoch in range(60):
        for batch in sequence_batches(train, len(starts), N_ITEMS, 4, 32, epoch, 0,
                                      n_negatives=config.negatives_per_position(), windows="all"):
            opt.zero_grad()
            model(batch).backward()
            opt.step()
    model.eval()
    prefixes = torch.tensor([[0, 0, i + 1, i + 2] for i in range(N_ITEMS - 3)])  # items i, i + 1
    with torch.no_grad():
        top = model.score({SEQ: prefixes}).argmax(-1)
    accuracy = (top == torch.arange(N_ITEMS - 3) + 2).float().mean().item()
    assert accuracy >= (0.99 if loss == "ce" else 0.5), (loss, top.tolist())
