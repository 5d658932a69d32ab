"""Recommendation models: one ``nn.Module`` per file, defaults in the YAML beside each.

Example:
    >>> from ray_jobs.models import build_model
    >>> model = build_model("lightgcn", data, {"n_layers": 2})  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
from ray_jobs.models.srgnn import SRGNN, SRGNNConfig, SessionGraphModel

__all__ = [
    "MODELS",
    "build_model",
    "is_next_item_model",
    "rebuild_next_item_model",
    "user_encoder_artefacts",
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


def is_next_item_model(name: str) -> bool:
    """SASRec and the session GNNs: what serving's ranker runs (``batch_kind`` "sequence")."""
    return name in MODELS and MODELS[name][0].batch_kind == "sequence"


def rebuild_next_item_model(name: str, config: dict[str, Any], n_items: int, state_dict: dict[str, Any]) -> nn.Module:
    """A trained next-item network from its registered config and weights (CPU, eval mode)."""
    if not is_next_item_model(name):
        raise ValueError(f"{name!r} is not a next-item (sequence) model")
    model_class, config_class = MODELS[name]
    model = model_class(config_class(**config), _Catalogue(n_items=n_items))
    model.load_state_dict(state_dict)
    return model.eval()


def user_encoder_artefacts(network: nn.Module) -> tuple[dict[str, bytes], dict[str, Any]]:
    """What a next-item network is registered with so that serving runs it without this package:
    ``({file: bytes}, {manifest key: entry})`` (``features.registry.next_item``)."""
    from features.registry.next_item import MANIFEST_KEY, export_user_encoder

    was_training, graph_nodes = network.training, getattr(network, "graph_nodes", None)
    max_len = network.config.max_len
    if isinstance(network, SessionGraphModel):
        network.graph_nodes = max_len  # graphs of a fixed size: the program must not branch on the data
    try:
        data, spec = export_user_encoder(network, max_len)  # type: ignore[arg-type]
    finally:
        network.train(was_training)
        if isinstance(network, SessionGraphModel):
            network.graph_nodes = graph_nodes
    return {spec.file: data}, {MANIFEST_KEY: spec.to_manifest()}
