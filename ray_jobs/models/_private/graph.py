"""Sparse graph helpers shared by the graph models (LightGCN, CrossCBR). Built with numpy only."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn


def _to_csr(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_rows: int):
    order = np.lexsort((cols, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    crow = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=crow[1:])
    return crow, cols.astype(np.int64), vals.astype(np.float32)


CsrParts = tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]


def unique_edges(pairs: np.ndarray) -> np.ndarray:
    """``(n, 2)`` int64 edges with duplicates removed, sorted."""
    return np.unique(np.asarray(pairs, dtype=np.int64).reshape(-1, 2), axis=0)


def drop_edges(edges: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Keep each edge with probability ``1 - ratio`` (CrossCBR's edge-dropout augmentation)."""
    if ratio <= 0:
        return edges
    return edges[rng.random(len(edges)) >= ratio]


def bipartite_laplacian(edges: np.ndarray, n_rows: int, n_cols: int) -> CsrParts:
    """CSR parts of ``D^-1/2 A D^-1/2`` for ``A = [[0, R], [R^T, 0]]`` (LightGCN Eq. 7).

    Args:
        edges: ``(n, 2)`` unique edges of ``R`` (see :func:`unique_edges`).
        n_rows, n_cols: shape of ``R``.

    Returns:
        ``(crow_indices, col_indices, values, shape)`` of the ``(n_rows + n_cols)`` square matrix.
    """
    r, c = edges[:, 0], edges[:, 1] + n_rows
    deg = np.bincount(np.concatenate([r, c]), minlength=n_rows + n_cols).astype(np.float64)
    inv_sqrt = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1.0)), 0.0)
    all_r, all_c = np.concatenate([r, c]), np.concatenate([c, r])
    vals = inv_sqrt[all_r] * inv_sqrt[all_c]
    n = n_rows + n_cols
    return (*_to_csr(all_r, all_c, vals, n), (n, n))


def row_mean(edges: np.ndarray, n_rows: int, n_cols: int) -> CsrParts:
    """CSR parts of the row-normalised ``R`` (``R[b, i] = 1 / |b|``): mean pooling over members."""
    size = np.bincount(edges[:, 0], minlength=n_rows).astype(np.float64)
    vals = 1.0 / np.maximum(size[edges[:, 0]], 1.0)
    return (*_to_csr(edges[:, 0], edges[:, 1], vals, n_rows), (n_rows, n_cols))


class SparseMatrix(nn.Module):
    """A fixed sparse matrix kept as non-persistent buffers, so ``.to(device)`` moves it but it is
    not part of the state dict (it is data, rebuilt from the dataset, not a learned weight)."""

    def __init__(self, parts: CsrParts):
        super().__init__()
        self.shape: tuple[int, int] = parts[3]
        self.register_buffer("crow", torch.from_numpy(parts[0]), persistent=False)
        self.register_buffer("col", torch.from_numpy(parts[1]), persistent=False)
        self.register_buffer("val", torch.from_numpy(parts[2]), persistent=False)

    def replace(self, parts: CsrParts) -> None:
        """Swap in a new matrix of the same shape (e.g. after edge dropout), on the same device."""
        dev = self.get_buffer("val").device
        self.crow = torch.from_numpy(parts[0]).to(dev)
        self.col = torch.from_numpy(parts[1]).to(dev)
        self.val = torch.from_numpy(parts[2]).to(dev)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            mat = torch.sparse_csr_tensor(self.crow, self.col, self.val, self.shape, check_invariants=False)
        return mat @ x
