"""Trainer pieces without Ray: job configs, batch sharding, sequence windows, evaluation, stopping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ray_jobs.data.dataset import InteractionData
from ray_jobs.evaluation import FULL_RANKING, SAMPLED_LOO
from ray_jobs.evaluation.session import SESSION_PROTOCOL
from ray_jobs.models.base import NEG, POS, SEQ, USER
from ray_jobs.trainers import EarlyStopping, JobConfig, TrainConfig, evaluate
from ray_jobs.trainers.batches import last_window, pairwise_batches, sequence_batches
from ray_jobs.trainers.config import deep_merge

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "ray_jobs" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_job_configs_validate(path):
    job = JobConfig.from_yaml(path)
    assert job.name == path.stem


def test_job_config_rejects_bad_input():
    base = {"name": "x", "model": "bprmf", "dataset": {"name": "gowalla"}}
    with pytest.raises(ValueError):
        JobConfig(**base, train={"monitor": "recall@10", "ks": [20]})  # monitor not computed
    with pytest.raises(ValueError):
        JobConfig(**base, unknown_key=1)
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}}


def test_pairwise_shards_cover_the_global_batch():
    rng = np.random.default_rng(0)
    train = np.unique(np.stack([rng.integers(0, 30, 400), rng.integers(0, 50, 400)], axis=1), axis=0)
    whole = list(pairwise_batches(train, 50, 64, epoch=3, seed=1))
    shards = [list(pairwise_batches(train, 50, 64, epoch=3, seed=1, rank=r, world_size=2)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == len(whole)  # same number of steps on every rank
    for full, a, b in zip(whole, *shards):
        assert len(a[USER]) == len(b[USER])  # equal shards: the mean of shard means is the global mean
        for key in (USER, POS, NEG):
            joined = torch.cat([a[key], b[key]])
            torch.testing.assert_close(joined, full[key][: len(joined)])  # odd remainder row dropped
    assert len(whole[-1][USER]) - 2 * len(shards[0][-1][USER]) in (0, 1)
    keys = set(map(tuple, train.tolist()))
    for batch in whole:
        negs = zip(batch[USER].tolist(), batch[NEG].tolist())
        assert not any(pair in keys for pair in negs)  # negatives are never training positives
    other_epoch = next(pairwise_batches(train, 50, 64, epoch=4, seed=1))
    assert not torch.equal(other_epoch[USER], whole[0][USER])


def test_sequence_windows():
    # user 0: items 5, 6, 7 in time order; user 1: a single item (no training pair)
    train = np.array([[0, 5], [0, 6], [0, 7], [1, 3]])
    batches = list(sequence_batches(train, n_users=2, n_items=10, max_len=4, batch_size=8, epoch=0, seed=0))
    assert len(batches) == 1 and batches[0][SEQ].shape == (1, 4)
    assert batches[0][SEQ].tolist() == [[0, 0, 6, 7]]  # SASRec ids (item + 1), left-padded
    assert batches[0][POS].tolist() == [[0, 0, 7, 8]]
    neg = batches[0][NEG][0].tolist()
    assert neg[:2] == [0, 0] and not set(neg[2:]) & {6, 7, 8}
    assert last_window([np.array([1, 2, 3])], np.array([0]), 2).tolist() == [[3, 4]]


class _FixedScores(nn.Module):
    """Scores item i as s[i] for everyone: makes the expected metrics computable by hand."""

    batch_kind = "pairwise"

    def __init__(self, scores: list[float]):
        super().__init__()
        self.s = torch.tensor(scores)

    def score(self, batch):
        return self.s.expand(len(batch[USER]), -1).clone()


def test_full_ranking_evaluation_by_hand():
    data = InteractionData(
        name="toy", n_users=2, n_items=5,
        train=np.array([[0, 0], [1, 1]]), valid=np.array([[0, 2]]), test=np.array([[0, 3], [1, 0]]),
    )
    model = _FixedScores([5.0, 4.0, 3.0, 2.0, 1.0])
    cfg = TrainConfig(ks=[2], monitor="recall@2")
    # user 0 at test: items 0 (train) and 2 (valid) masked -> ranking 1, 3, ...: test item 3 at rank 1
    # user 1 at test: item 1 masked -> ranking 0, 2: test item 0 at rank 0
    report = evaluate(model, data, "test", cfg)
    assert report.protocol == FULL_RANKING.replace("training interactions", "training or validation interactions")
    assert report.n_users == 2
    assert report.metrics["recall@2"] == pytest.approx(1.0)
    assert report.metrics["ndcg@2"] == pytest.approx((1 / np.log2(3) + 1.0) / 2)
    assert report.metrics["mrr@2"] == pytest.approx(0.75)
    assert report.metrics["coverage@2"] == pytest.approx(4 / 5)  # lists {1, 3} and {0, 2}
    valid = evaluate(model, data, "valid", cfg)  # only user 0; item 0 masked -> 1, 2: hit at rank 1
    assert valid.n_users == 1 and valid.metrics["recall@2"] == pytest.approx(1.0)


def test_sampled_evaluation_protocol():
    n_items = 300
    data = InteractionData(
        name="toy", n_users=3, n_items=n_items, sequential=True,
        train=np.array([[0, 1], [0, 2], [1, 3], [1, 4], [2, 5], [2, 6]]),
        valid=np.array([[0, 7], [1, 8], [2, 9]]), test=np.array([[0, 0], [1, 10], [2, 299]]),
    )
    scores = [float(n_items - i) for i in range(n_items)]  # lower id = higher score
    cfg = TrainConfig(protocol="sampled", ks=[10], monitor="ndcg@10")
    report = evaluate(_FixedScores(scores), data, "test", cfg)
    assert report.protocol == SAMPLED_LOO
    # user 0's test item 0 beats every negative; item 299 loses to all; item 10 to ~3% of them
    assert 1 / 3 <= report.metrics["hit_rate@10"] <= 2 / 3
    again = evaluate(_FixedScores(scores), data, "test", cfg)
    assert again.metrics == report.metrics  # negatives are seeded


def test_session_evaluation_protocol_by_hand():
    """Each held-out session is one "user"; a case per prefix; nothing masked; P@K and MRR@K."""
    data = InteractionData(
        name="toy_sessions", n_users=3, n_items=5, sequential=True,
        train=np.array([[0, 1], [0, 2]]), valid=np.array([[1, 4], [1, 0]]),
        test=np.array([[2, 0], [2, 1], [2, 0]]),  # session 2: [0] -> 1, [0, 1] -> 0 (a revisit)
    )
    model = _FixedScores([5.0, 4.0, 3.0, 2.0, 1.0])  # item 0 first, then 1, ...
    cfg = TrainConfig(protocol="session", ks=[1, 2], monitor="mrr@2")
    report = evaluate(model, data, "test", cfg)
    assert report.protocol == SESSION_PROTOCOL and report.n_users == 2  # two cases
    # case [0] -> 1: rank 2 (item 0, already in the prefix, is not masked); case [0, 1] -> 0: rank 1
    assert report.metrics["p@1"] == pytest.approx(0.5) and report.metrics["p@2"] == pytest.approx(1.0)
    assert report.metrics["mrr@2"] == pytest.approx((0.5 + 1.0) / 2)
    valid = evaluate(model, data, "valid", cfg)  # [4] -> 0: rank 1
    assert valid.n_users == 1 and valid.metrics["mrr@1"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not computed"):
        TrainConfig(protocol="session", ks=[20], monitor="recall@20")


def test_early_stopping_state_round_trip():
    stop = EarlyStopping(patience=2)
    for epoch, value in enumerate([0.1, 0.3, 0.2]):
        stop.update(value, epoch)
    restored = EarlyStopping.from_state_dict(stop.state_dict())
    assert restored == stop and not restored.should_stop
    restored.update(0.25, 3)
    assert restored.should_stop and restored.best_epoch == 1
