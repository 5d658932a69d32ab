"""Low-rank factors of an interaction matrix without scipy: a sparse product and randomized SVD.

Randomized SVD follows Halko, Martinsson & Tropp, "Finding structure with randomness", SIAM
Review 2011 (range finder with power iterations, then an exact SVD of the small projection).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SparseMatrix", "randomized_svd", "row_normalize"]


@dataclass(frozen=True)
class SparseMatrix:
    """An (n_rows, n_cols) matrix from (row, col, value) triplets; duplicates are summed.

    Args:
        rows: row index of each entry.
        cols: column index of each entry.
        values: value of each entry.
        shape: (n_rows, n_cols).
    """

    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    shape: tuple[int, int]

    @classmethod
    def from_triplets(
        cls, rows: np.ndarray, cols: np.ndarray, values: np.ndarray | None, shape: tuple[int, int]
    ) -> "SparseMatrix":
        """Build with duplicates merged (summed).

        Args:
            rows: row indices.
            cols: column indices.
            values: entry values (1.0 each when None).
            shape: matrix shape.

        Returns:
            The matrix, entries sorted by row then column.
        """
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        vals = np.ones(rows.size) if values is None else np.asarray(values, dtype=np.float64)
        if rows.shape != cols.shape or rows.shape != vals.shape:
            raise ValueError("rows, cols and values must have the same length")
        if rows.size and (rows.min() < 0 or rows.max() >= shape[0] or cols.min() < 0 or cols.max() >= shape[1]):
            raise ValueError("index out of the matrix shape")
        key = rows * shape[1] + cols
        uniq, inverse = np.unique(key, return_inverse=True)
        summed = np.bincount(inverse, weights=vals, minlength=uniq.size)
        return cls(uniq // shape[1], uniq % shape[1], summed, shape)

    def map_values(self, fn) -> "SparseMatrix":  # noqa: ANN001 - a numpy ufunc-like callable
        """Same pattern, ``fn`` applied to the values (e.g. ``np.log1p``)."""
        return SparseMatrix(self.rows, self.cols, fn(self.values), self.shape)

    def matmul(self, dense: np.ndarray) -> np.ndarray:
        """self @ dense."""
        return _accumulate(self.rows, self.values[:, None] * dense[self.cols], self.shape[0])

    def rmatmul(self, dense: np.ndarray) -> np.ndarray:
        """self.T @ dense."""
        return _accumulate(self.cols, self.values[:, None] * dense[self.rows], self.shape[1])


def _accumulate(target: np.ndarray, contributions: np.ndarray, n: int) -> np.ndarray:
    # Column-wise bincount is much faster than np.add.at for a handful of columns.
    out = np.empty((n, contributions.shape[1]))
    for j in range(contributions.shape[1]):
        out[:, j] = np.bincount(target, weights=contributions[:, j], minlength=n)
    return out


def randomized_svd(
    matrix: SparseMatrix, rank: int, rng: np.random.Generator, n_oversample: int = 10, n_power_iter: int = 4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``rank`` singular triplets of a sparse matrix.

    Args:
        matrix: the matrix.
        rank: number of singular values, 1 <= rank < min(shape).
        rng: seeds the random test matrix.
        n_oversample: extra columns of the range finder.
        n_power_iter: power iterations (sharpen a slowly decaying spectrum).

    Returns:
        (U (n_rows, rank), s (rank,), Vt (rank, n_cols)).
    """
    if not 1 <= rank < min(matrix.shape):
        raise ValueError(f"rank must be in [1, {min(matrix.shape) - 1}], got {rank}")
    width = min(rank + n_oversample, min(matrix.shape))
    q, _ = np.linalg.qr(matrix.matmul(rng.standard_normal((matrix.shape[1], width))))
    for _ in range(n_power_iter):
        # Re-orthonormalise each half step to keep the small singular directions.
        q, _ = np.linalg.qr(matrix.rmatmul(q))
        q, _ = np.linalg.qr(matrix.matmul(q))
    small = matrix.rmatmul(q).T  # q^T A, (width, n_cols)
    u_small, s, vt = np.linalg.svd(small, full_matrices=False)
    return (q @ u_small)[:, :rank], s[:rank], vt[:rank]


def row_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)
