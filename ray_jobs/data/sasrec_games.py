"""SASRec "Games" (Amazon Video Games, ``sasrec_amazon_games/Video.txt``), leave-one-out.

The file holds ``user item`` lines (1-based ids) grouped by user in time order. The split follows
``data_partition`` in the SASRec code (Kang & McAuley, ICDM 2018): for users with at least 3 actions
the last item is the test item and the second-to-last the validation item; users with fewer actions
keep everything in train and are not evaluated. Ids are shifted to 0-based.

Example:
    >>> data = load_sasrec_games()
    >>> data.n_users, data.n_items, len(data.test)
    (31013, 23715, 30901)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ray_jobs.data.dataset import InteractionData
from ray_jobs.data.paths import resolve_datasets_dir
from ray_jobs.data.slicing import leave_one_out

__all__ = ["load_sasrec_games"]

SUBDIR = "sasrec_amazon_games"
FILE = "Video.txt"
def load_sasrec_games(datasets_dir: str | os.PathLike[str] | None = None) -> InteractionData:
    """Load SASRec's Games data with SASRec's leave-one-out split.

    Args:
        datasets_dir: folder holding ``sasrec_amazon_games/`` (see :mod:`ray_jobs.data.paths`).

    Returns:
        A sequential :class:`InteractionData` (31,013 users, 23,715 items).
    """
    path = Path(resolve_datasets_dir(datasets_dir)) / SUBDIR / FILE
    raw = pd.read_csv(path, sep=" ", header=None, names=["u", "i"], dtype=np.int64).to_numpy()
    pairs = raw - 1  # the file is 1-based; 0 is SASRec's padding id, which we add inside the model
    train, valid, test = leave_one_out(pairs)
    return InteractionData(
        name="sasrec_games",
        n_users=int(pairs[:, 0].max()) + 1,
        n_items=int(pairs[:, 1].max()) + 1,
        train=train,
        valid=valid,
        test=test,
        sequential=True,
        test_excludes_valid=True,
        source_files=(str(path),),
    )
