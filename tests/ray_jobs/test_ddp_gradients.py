"""Sharded DDP-style gradients equal single-process gradients (2 gloo processes, no Ray).

Covers the equal-shard batching and CrossCBR's gathered in-batch contrastive loss.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ray_jobs.data import load_dataset
from ray_jobs.models import build_model
from ray_jobs.trainers.batches import pairwise_batches

PARAMS = {"embedding_dim": 8, "batch_size": 64, "item_level_ratio": 0.0, "bundle_level_ratio": 0.0, "bundle_agg_ratio": 0.0}


def _grads(datasets_dir: str, rank: int, world: int) -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    data = load_dataset("youshu", datasets_dir, max_users=150, seed=0)
    model = build_model("crosscbr", data, PARAMS)
    batch = next(pairwise_batches(data.train, data.n_items, PARAMS["batch_size"], epoch=0, seed=0, rank=rank, world_size=world))
    model(batch).backward()
    grads = {}
    for name, p in model.named_parameters():
        g = p.grad.detach().clone()
        if world > 1:
            dist.all_reduce(g)
            g /= world  # what DDP does
        grads[name] = g.numpy()
    return grads


def _worker(rank: int, world: int, init_file: str, datasets_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        grads = _grads(datasets_dir, rank, world)
        if rank == 0:
            np.savez(os.path.join(out_dir, "grads.npz"), **grads)
    finally:
        dist.destroy_process_group()


def test_crosscbr_two_process_gradients_match(datasets_dir, tmp_path):
    single = _grads(str(datasets_dir), 0, 1)
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(datasets_dir), str(tmp_path)), nprocs=2, join=True)
    sharded = np.load(tmp_path / "grads.npz")
    for name, g in single.items():
        np.testing.assert_allclose(sharded[name], g, rtol=1e-4, atol=1e-7, err_msg=name)
    assert any(np.abs(g).sum() > 0 for g in single.values())
