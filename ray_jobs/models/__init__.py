"""Recommendation models: one ``nn.Module`` per file, defaults in the YAML beside each.

Example:
    >>> from ray_jobs.models import build_model
    >>> model = build_model("lightgcn", data, {"n_layers": 2})  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from ray_jobs.data.dataset import InteractionData
from ray_jobs.models._private.config import ModelConfig
from ray_jobs.models.base import NEG, POS, SEQ, USER, BatchKind, Recommender
from ray_jobs.models.bprmf import BPRMF, BPRMFConfig
from ray_jobs.models.crosscbr import CrossCBR, CrossCBRConfig
from ray_jobs.models.gcegnn import GCEGNN, GCEGNNConfig
from ray_jobs.models.lightgcn import LightGCN, LightGCNConfig
from ray_jobs.models.popularity import Popularity, PopularityConfig
from ray_jobs.models.sasrec import SASRec, SASRecConfig
from ray_jobs.models.srgnn import SRGNN, SRGNNConfig

if TYPE_CHECKING:
    from features.registry.model_registry import RegisteredModel

__all__ = [
    "MODELS",
    "build_model",
    "load_next_item_model",
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
    "GCEGNN",
    "GCEGNNConfig",
    "LightGCN",
    "LightGCNConfig",
    "Popularity",
    "PopularityConfig",
    "SASRec",
    "SASRecConfig",
    "SRGNN",
    "SRGNNConfig",
]

MODELS: dict[str, tuple[type[nn.Module], type[ModelConfig]]] = {
    "popularity": (Popularity, PopularityConfig),
    "bprmf": (BPRMF, BPRMFConfig),
    "lightgcn": (LightGCN, LightGCNConfig),
    "sasrec": (SASRec, SASRecConfig),
    "crosscbr": (CrossCBR, CrossCBRConfig),
    "srgnn": (SRGNN, SRGNNConfig),
    "gcegnn": (GCEGNN, GCEGNNConfig),
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


@dataclass(frozen=True)
class _Catalogue:
    n_items: int


def load_next_item_model(registered: "RegisteredModel", expect: str | None = None) -> tuple[nn.Module, dict[str, int]]:
    """Rebuild a registered next-item model (SASRec, SR-GNN: ``batch_kind`` "sequence") for scoring
    on CPU in eval mode, with its raw item id -> row map.

    Both take left-padded windows of ``item + 1`` and give ``user_vectors(seq)`` whose inner product
    with ``item_emb`` rows scores the next item, so serving's ranker uses either unchanged.

    Raises:
        ValueError: not a sequence model (or not ``expect``), or registered without its model
            config or raw item ids (trained on a dataset without raw ids: retrain on a served one).
    """
    manifest = registered.manifest
    where = f"{registered.name}:{registered.version}"
    name = manifest.get("model")
    if name not in MODELS or MODELS[name][0].batch_kind != "sequence" or (expect and name != expect):
        raise ValueError(f"{where} is a {name!r} model, not {expect or 'a next-item (sequence) model'}")
    item_ids = manifest.get("ids", {}).get("item")
    if "model_config" not in manifest or item_ids is None:
        raise ValueError(f"{where} lacks model_config or raw item ids: train it on a served catalogue "
                         "(taobao or lake) with this version of ray_jobs")
    model_class, config_class = MODELS[name]
    model = model_class(config_class(**manifest["model_config"]), _Catalogue(n_items=len(item_ids)))
    model.load_state_dict(registered.state_dict())
    model.eval()
    return model, {raw: row for row, raw in enumerate(item_ids)}
