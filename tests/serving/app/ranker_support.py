"""Helpers of the ranker tests: tiny LightGCN / SASRec models trained in-process on the real Taobao
slice and registered in the layout ``ray_jobs.train.register_outcome`` writes, and the offline
computations the served lists are checked against."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest
import torch

from ray_jobs.data import InteractionData, load_dataset
from ray_jobs.models import SEQ
from support import fit_in_process, register_trained as register  # noqa: F401 (the ranker tests' name for it)

# Small enough to train in seconds on one shared core, big enough to give distinct scores.
SASREC_PARAMS = {"hidden_dim": 16, "n_blocks": 1, "n_heads": 1, "dropout": 0.2, "batch_size": 128}
LIGHTGCN_PARAMS = {"embedding_dim": 16, "n_layers": 2, "batch_size": 4096}


@functools.cache
def taobao() -> InteractionData:
    """The whole Taobao slice (all 814 users; raw ids registered with the models)."""
    try:
        return load_dataset("taobao")
    except FileNotFoundError as exc:
        pytest.skip(f"Taobao slice not found: {exc}")


def train(model_name: str, data: InteractionData, params: dict[str, Any], epochs: int, seed: int) -> torch.nn.Module:
    """Train in-process (no Ray) on the batches the Ray worker loop uses; returns it in eval mode."""
    return fit_in_process(model_name, data, epochs, params, seed)


def offline_sasrec_order(sasrec: torch.nn.Module, data: InteractionData, sequence: list[str],
                         candidates: list[str]) -> tuple[list[str], dict[str, float]]:
    """Candidates by the model's own full-catalogue ``score`` for ``sequence`` (its last max_len
    known items, left-padded as in training), best first, and their scores."""
    row_of = {str(i): r for r, i in enumerate(data.item_ids.tolist())}
    rows = [row_of[i] + 1 for i in sequence if i in row_of][-sasrec.config.max_len :]
    seq = np.zeros((1, sasrec.config.max_len), dtype=np.int64)
    seq[0, len(seq[0]) - len(rows):] = rows
    with torch.inference_mode():
        all_scores = sasrec.score({SEQ: torch.from_numpy(seq)})[0].numpy()
    scores = {c: float(all_scores[row_of[c]]) for c in candidates if c in row_of}
    return sorted(scores, key=lambda c: -scores[c]), scores


def offline_lightgcn_pool(lightgcn: torch.nn.Module, data: InteractionData, n: int, excluded: set[str],
                          user_id: str | None = None, item_id: str | None = None) -> list[str]:
    """The top-n items by inner product with the user's (or the item's) LightGCN embedding, by a
    full sort, skipping ``excluded``."""
    with torch.no_grad():
        emb = {k: np.asarray(v) for k, v in lightgcn.export_embeddings().items()}
    items = [str(i) for i in data.item_ids.tolist()]
    if item_id is not None:
        query = emb["item"][items.index(item_id)]
    else:
        query = emb["user"][data.user_ids.tolist().index(int(user_id))]
    ranked = [items[r] for r in np.argsort(-(emb["item"] @ query), kind="stable")]
    return [i for i in ranked if i not in excluded][:n]
