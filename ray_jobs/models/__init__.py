"""Recommendation models: one ``nn.Module`` per file, defaults in the YAML beside each.

Example:
    >>> from ray_jobs.models import build_model
    >>> model = build_model("lightgcn", data, {"n_layers": 2})  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ray_jobs.data.dataset import InteractionData
from ray_jobs.models._private.config import ModelConfig
from ray_jobs.models.base import NEG, POS, SEQ, USER, BatchKind, Recommender
from ray_jobs.models.bprmf import BPRMF, BPRMFConfig
from ray_jobs.models.crosscbr import CrossCBR, CrossCBRConfig
from ray_jobs.models.lightgcn import LightGCN, LightGCNConfig
from ray_jobs.models.popularity import Popularity, PopularityConfig
from ray_jobs.models.sasrec import SASRec, SASRecConfig

__all__ = [
    "MODELS",
    "build_model",
    "model_config",
    "Recommender",
    "BatchKind",
    "USER",
    "POS",
    "NEG",
    "SEQ",
    "BPRMF",
    "BPRMFConfig",
    "CrossCBR",
    "CrossCBRConfig",
    "LightGCN",
    "LightGCNConfig",
    "Popularity",
    "PopularityConfig",
    "SASRec",
    "SASRecConfig",
]

MODELS: dict[str, tuple[type[nn.Module], type[ModelConfig]]] = {
    "popularity": (Popularity, PopularityConfig),
    "bprmf": (BPRMF, BPRMFConfig),
    "lightgcn": (LightGCN, LightGCNConfig),
    "sasrec": (SASRec, SASRecConfig),
    "crosscbr": (CrossCBR, CrossCBRConfig),
}


def model_config(name: str, overrides: dict[str, Any] | None = None) -> ModelConfig:
    """The validated config of model ``name``: YAML defaults updated with ``overrides``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    return MODELS[name][1].with_overrides(overrides)


def build_model(name: str, data: InteractionData, overrides: dict[str, Any] | None = None) -> nn.Module:
    """Instantiate model ``name`` for ``data`` with its defaults updated by ``overrides``."""
    cls, _ = MODELS[name]
    return cls(model_config(name, overrides), data)
