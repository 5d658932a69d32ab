"""A registered next-item model as serving runs it: an exported user encoder beside the item table.

The contract between training, which writes it when it registers a next-item model (SASRec, the
session GNNs), and serving, which scores with it without importing the training code:

* artefact ``user_encoder.pt2`` (``RegisteredModel.artefacts``): a ``torch.export`` program. Input:
  one ``(1, max_len)`` int64 window, the catalogue rows + 1 of the user's last ``max_len`` known
  items, oldest first, left-padded with 0 (:func:`encode_history`). Output: the ``(1, d)`` float32
  user vector;
* manifest key ``user_encoder`` (:class:`UserEncoderSpec`): the file, ``max_len`` and ``d``;
* the registered ``item`` embeddings: an item's next-item score is its row's inner product with
  the user vector (SASRec, Kang & McAuley 2018, Eq. 5; SR-GNN, Wu et al. 2019, Eq. 8); the manifest's
  ``ids.item`` names each row's raw item id.

Writer and reader are both here (:func:`export_user_encoder`, :func:`load_next_item_model`), so the
format has one definition.

Example:
    >>> model = load_next_item_model(ModelRegistry(root).load_latest("sasrec"))  # doctest: +SKIP
    >>> model.score_candidates(["12", "7"], ["3", "9", "unknown"])  # doctest: +SKIP
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.export.graph_signature import InputKind

if TYPE_CHECKING:
    from features.registry.model_registry import RegisteredModel

__all__ = ["NextItemModel", "UserEncoder", "UserEncoderSpec", "encode_history", "export_user_encoder",
           "load_next_item_model"]

USER_ENCODER_FILE = "user_encoder.pt2"
MANIFEST_KEY = "user_encoder"
FORMAT = "torch.export"
# The item table inside the exported program (``_Encoder.network.item_emb``): row 0 is padding.
_ITEM_TABLE = "network.item_emb.weight"


class NextItemNetwork(Protocol):
    """What a trained next-item network gives the export: user vectors of left-padded windows and
    the item table whose rows 1.. score the next item."""

    item_emb: nn.Embedding

    def user_vectors(self, seq: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class UserEncoderSpec:
    """The manifest's ``user_encoder`` entry."""

    file: str
    max_len: int
    dim: int
    format: str = FORMAT

    def to_manifest(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_manifest(cls, entry: Mapping[str, Any]) -> UserEncoderSpec:
        spec = cls(str(entry["file"]), int(entry["max_len"]), int(entry["dim"]), str(entry.get("format", FORMAT)))
        if spec.format != FORMAT:
            raise ValueError(f"user encoder format {spec.format!r} is not {FORMAT!r}")
        return spec


def encode_history(history: Sequence[str], item_row_of: Mapping[str, int], max_len: int) -> torch.Tensor:
    """``(1, max_len)`` left-padded window (catalogue row + 1) of the last ``max_len`` known items of
    ``history`` (raw ids, oldest first); items the model never saw are skipped."""
    rows = [item_row_of[i] + 1 for i in history if i in item_row_of][-max_len:]
    seq = torch.zeros((1, max_len), dtype=torch.long)
    if rows:
        seq[0, max_len - len(rows):] = torch.tensor(rows, dtype=torch.long)
    return seq


class _Encoder(nn.Module):
    """The exported function: a window in, the user vector out."""

    network: NextItemNetwork

    def __init__(self, network: NextItemNetwork) -> None:
        super().__init__()
        self.network = network

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        return self.network.user_vectors(seq)


def export_user_encoder(network: NextItemNetwork, max_len: int) -> tuple[bytes, UserEncoderSpec]:
    """The artefact and manifest entry of a trained network (what registration stores).

    The program is traced in eval mode on a ``(1, max_len)`` window, so it must not branch on the
    data (the session GNNs size their graphs by the window when exporting: ``graph_nodes``).
    """
    module = _Encoder(network).eval()
    example = torch.zeros((1, max_len), dtype=torch.long)
    example[0, -1] = 1
    with torch.no_grad():
        program = torch.export.export(module, (example,))
        dim = int(module(example).shape[-1])
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue(), UserEncoderSpec(USER_ENCODER_FILE, max_len, dim)


class UserEncoder:
    """A loaded user encoder: ``encoder(window) -> (1, d)`` user vector.

    Runs the program's graph with its lifted weights, not through ``ExportedProgram.module()``:
    that wrapper re-checks the input's shape and flattens arguments on every call (0.2 ms a call,
    40% of SASRec's forward measured on this CPU), and the only caller, :class:`NextItemModel`,
    builds the window itself.
    """

    def __init__(self, program: torch.export.ExportedProgram, max_len: int) -> None:
        specs = program.graph_signature.input_specs
        if [s.kind for s in specs].count(InputKind.USER_INPUT) != 1 or specs[-1].kind != InputKind.USER_INPUT:
            raise ValueError("a user encoder takes one input, the window")
        self.max_len = max_len
        self.item_table = program.state_dict[_ITEM_TABLE]
        self._graph = program.graph_module
        self._lifted = tuple(program.state_dict[s.target] if s.target in program.state_dict else program.constants[s.target]
                             for s in specs[:-1])

    def __call__(self, window: torch.Tensor) -> torch.Tensor:
        if tuple(window.shape) != (1, self.max_len) or window.dtype != torch.long:
            raise ValueError(f"expected a (1, {self.max_len}) int64 window, got {tuple(window.shape)} {window.dtype}")
        return self._graph(*self._lifted, window)[0]


@dataclass(frozen=True)
class NextItemModel:
    """A registered next-item model ready to score raw item ids.

    Attributes:
        encoder: the exported user encoder.
        item_vectors: ``(n_items, d)`` float32, the registered ``item`` embeddings (row = item).
        row_of: raw item id -> row.
    """

    encoder: UserEncoder
    item_vectors: np.ndarray
    row_of: Mapping[str, int]

    @property
    def max_len(self) -> int:
        return self.encoder.max_len

    def user_vector(self, history: Sequence[str]) -> np.ndarray | None:
        """``(d,)`` float32 after the raw-id ``history`` (oldest first); None when no item is known."""
        window = encode_history(history, self.row_of, self.max_len)
        if not window.any():
            return None
        with torch.inference_mode():
            return self.encoder(window)[0].numpy().astype(np.float32, copy=False)

    def score_candidates(self, history: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
        """Next-item scores of raw ``candidates`` after ``history``: ``(len(candidates),)`` float32,
        NaN for a candidate the model does not know, all NaN when no item of ``history`` is known."""
        out = np.full(len(candidates), np.nan, dtype=np.float32)
        known = [(slot, self.row_of[c]) for slot, c in enumerate(candidates) if c in self.row_of]
        user = self.user_vector(history) if known else None
        if user is not None:
            slots, rows = zip(*known)
            out[list(slots)] = self.item_vectors[list(rows)] @ user
        return out


def load_next_item_model(registered: RegisteredModel) -> NextItemModel:
    """The registered version's user encoder, item table and row map.

    Raises:
        ValueError: no user encoder (not a next-item model, or registered before the encoder was
            exported: retrain), no raw item ids, or an encoder whose item table is not the
            registered ``item`` embeddings (a mixed-up version).
    """
    where = f"{registered.name}:{registered.version}"
    manifest = registered.manifest
    entry = manifest.get(MANIFEST_KEY)
    if entry is None or UserEncoderSpec.from_manifest(entry).file not in registered.artefacts:
        raise ValueError(f"{where} has no exported user encoder: not a next-item model, or registered "
                         "before serving loaded encoders (retrain it)")
    spec = UserEncoderSpec.from_manifest(entry)
    item_ids = manifest.get("ids", {}).get("item")
    items = registered.embeddings.get("item")
    if item_ids is None or items is None or len(item_ids) != len(items):
        raise ValueError(f"{where} lacks raw item ids or item embeddings: train it on a served catalogue")
    encoder = UserEncoder(torch.export.load(io.BytesIO(registered.artefacts[spec.file])), spec.max_len)
    table = encoder.item_table.detach().numpy()
    if table.shape != (len(items) + 1, spec.dim) or not np.allclose(table[1:], items, atol=1e-6):
        raise ValueError(f"{where}: the user encoder's item table and the registered item embeddings disagree")
    return NextItemModel(encoder, np.ascontiguousarray(items, dtype=np.float32),
                         {raw: row for row, raw in enumerate(item_ids)})
