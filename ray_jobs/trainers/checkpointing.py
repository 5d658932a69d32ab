"""What a training checkpoint holds and how it is written and read.

Layout of a checkpoint directory::

    state.pt          current model + optimizer state, epoch, early-stopping state (to resume)
    best_model.pt     model weights of the best validation epoch so far
    final/            only in the last checkpoint: embeddings/*.npy and metrics.json of the best model,
                      and data.json (what the workers trained on: snapshot id, raw ids of the rows)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["STATE_FILE", "BEST_FILE", "FINAL_DIR", "DATA_FILE", "save_state", "load_state", "save_final"]

STATE_FILE = "state.pt"
BEST_FILE = "best_model.pt"
FINAL_DIR = "final"
DATA_FILE = "data.json"  # inside FINAL_DIR


def save_state(
    directory: Path,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    best_state: dict[str, torch.Tensor] | None,
    epoch: int,
    extra: dict[str, Any],
) -> None:
    """Write the resumable state of epoch ``epoch`` (the next run starts at ``epoch + 1``)."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model_state, "optimizer": optimizer_state, "epoch": epoch, **extra}, directory / STATE_FILE)
    if best_state is not None:
        torch.save(best_state, directory / BEST_FILE)


def load_state(directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Read ``(state, best_model_state_or_None)`` written by :func:`save_state`."""
    state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=False)
    best_path = directory / BEST_FILE
    best = torch.load(best_path, map_location="cpu") if best_path.exists() else None
    return state, best


def save_final(directory: Path, embeddings: dict[str, np.ndarray], metrics: dict[str, Any],
               data_info: dict[str, Any] | None = None) -> None:
    """Write the retrieval embeddings and final metrics of the best model, and ``data_info`` (see
    :func:`ray_jobs.registry.provenance.describe_data`)."""
    final = directory / FINAL_DIR
    (final / "embeddings").mkdir(parents=True, exist_ok=True)
    for name, array in embeddings.items():
        np.save(final / "embeddings" / f"{name}.npy", np.ascontiguousarray(array, dtype=np.float32))
    (final / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str))
    if data_info is not None:
        (final / DATA_FILE).write_text(json.dumps(data_info, sort_keys=True))
