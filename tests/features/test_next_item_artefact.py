"""The next-item artefact (``features.registry.next_item``): each next-item network's exported user
encoder gives the training class's own user vectors, for any window the program was not traced on,
and refuses an input of another layout."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest
import torch

from features.registry.next_item import UserEncoder, export_user_encoder
from ray_jobs.models import MODELS, is_next_item_model, model_config, user_encoder_artefacts

torch.set_num_threads(1)


@dataclass(frozen=True)
class _Catalogue:
    n_items: int


@pytest.mark.parametrize("name", ["sasrec", "srgnn", "gcegnn"])
def test_exported_encoder_gives_the_networks_user_vectors(name: str) -> None:
    assert is_next_item_model(name)
    torch.manual_seed(0)
    config = model_config(name, {"hidden_dim": 8, "max_len": 6})
    network = MODELS[name][0](config, _Catalogue(n_items=30)).eval()
    artefacts, entries = user_encoder_artefacts(network)
    spec = entries["user_encoder"]
    assert spec == {"file": "user_encoder.pt2", "max_len": 6, "dim": 8, "format": "torch.export"}
    assert not network.training and getattr(network, "graph_nodes", None) is None  # left as it was
    encoder = UserEncoder(torch.export.load(io.BytesIO(artefacts["user_encoder.pt2"])), max_len=6)
    windows = [[0, 0, 0, 0, 0, 1], [0, 0, 5, 9, 5, 30], [3, 3, 3, 3, 3, 3], [1, 2, 3, 4, 5, 6], [0, 7, 0, 8, 9, 7]]
    with torch.no_grad():
        for window in windows:
            seq = torch.tensor([window])
            torch.testing.assert_close(encoder(seq), network.user_vectors(seq), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(1, 6\) int64 window"):
        encoder(torch.zeros((2, 6), dtype=torch.long))
    with pytest.raises(ValueError, match="int64 window"):
        encoder(torch.zeros((1, 6)))


def test_a_network_with_data_dependent_shapes_does_not_export() -> None:
    """Why the session GNNs size their graphs by the window when exported: with the batch's own
    size the program would branch on the data, which ``torch.export`` refuses."""
    torch.manual_seed(0)
    network = MODELS["srgnn"][0](model_config("srgnn", {"hidden_dim": 8, "max_len": 6}), _Catalogue(n_items=30))
    with pytest.raises(Exception):  # noqa: B017 - torch's error type for a data-dependent shape varies by version
        export_user_encoder(network, max_len=6)
