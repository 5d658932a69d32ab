"""Pin numpy's OpenBLAS to one thread while a simulation runs.

The policies multiply tiny matrices thousands of times; with a multi-threaded BLAS on a busy
machine each call pays thread wake-ups (measured here: 25 s -> 3 s for 500 hybrid-LinUCB rounds
on 2 shared cores). threadpoolctl is not a dependency, so this calls OpenBLAS through ctypes,
best effort: where the library or symbol is not found it does nothing.
"""

from __future__ import annotations

import ctypes
import glob
import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

__all__ = ["single_threaded_blas"]

_SYMBOLS = (
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
)


def _openblas() -> tuple[object, object] | None:
    libs_dir = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in glob.glob(os.path.join(libs_dir, "lib*openblas*.so*")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in _SYMBOLS:
            if hasattr(lib, set_name) and hasattr(lib, get_name):
                return getattr(lib, set_name), getattr(lib, get_name)
    return None


@contextmanager
def single_threaded_blas() -> Iterator[bool]:
    """Context manager: BLAS uses one thread inside, the previous count is restored after.

    Yields:
        True if the thread count could be set, False if this numpy's BLAS is not reachable.
    """
    funcs = _openblas()
    if funcs is None:
        yield False
        return
    set_threads, get_threads = funcs
    previous = int(get_threads())
    set_threads(1)
    try:
        yield True
    finally:
        set_threads(previous)
