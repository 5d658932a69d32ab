"""Published session-based benchmarks read by configuration alone (no code per benchmark).

Two on-disk forms, both in one folder:

* ``recbole``: RecBole's session atomic files ``<name>.train.inter``, ``<name>.valid.inter``
  (optional) and ``<name>.test.inter`` (its ``benchmark_filename: [train, valid, test]``), each row
  one ``prefix -> next item`` case (``session_id:token  item_id_list:token_seq  item_id:token``).
* ``txt``: ``train.txt`` and ``test.txt``, one sequence of space-separated item ids per line whose
  last id is its target.

The given split is kept: test (and validation, when a file has it) cases are evaluated exactly as
the files list them, never re-split or re-augmented. Training sessions are the training rows (for
RecBole, each session's longest row with its target: the rows of a session are its prefixes).
Without a validation file, a seeded ``valid_share`` (10%) of the training sessions is held out
for early stopping, as the session papers do. Every item of any file is rankable.

Example (job YAML):
    dataset:
      name: session_benchmark
      options: {folder: diginetica, file_prefix: diginetica, format: recbole}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np

from ray_jobs.data.dataset import InteractionData
from ray_jobs.data.paths import resolve_datasets_dir
from ray_jobs.data.sessions import read_recbole_session_files, read_session_txt, session_pairs
from ray_jobs.evaluation.session import SessionCases, session_cases

__all__ = ["load_session_benchmark"]


def load_session_benchmark(
    datasets_dir: str | os.PathLike[str] | None = None,
    folder: str = "",
    file_prefix: str | None = None,
    format: Literal["recbole", "txt"] = "recbole",
    valid_share: float = 0.1,
    seed: int = 0,
) -> InteractionData:
    """A session benchmark folder as session data ("users" are sessions) with its own test cases.

    Args:
        datasets_dir: where a relative ``folder`` is looked up.
        folder: the benchmark's folder (absolute, or relative to the datasets dir).
        file_prefix: RecBole files' prefix, ``<file_prefix>.train.inter`` (default: the folder's name).
        format: ``recbole`` atomic files or ``txt`` sequences (module docstring).
        valid_share: share of training sessions held out when there is no validation file.
        seed: draws those sessions.
    """
    root = Path(folder) if Path(folder).is_absolute() else Path(resolve_datasets_dir(datasets_dir)) / folder
    if format == "recbole":
        files, vocabulary, train, given = _recbole(root, file_prefix or root.name)
    elif format == "txt":
        files, vocabulary, train, given = _txt(root)
    else:
        raise ValueError(f"format must be 'recbole' or 'txt', got {format!r}")
    if "valid" not in given:
        train, valid_sessions = _hold_out(train, valid_share, seed)
        given["valid"] = session_cases(valid_sessions)
    # Each given case becomes one held-out "user" (its prefix and target) so that the pairs stay a
    # complete picture of the data; evaluation reads the cases themselves (held_out_cases).
    (train_pairs, valid_pairs, test_pairs), n_sessions = session_pairs(
        train, _case_rows(given["valid"]), _case_rows(given["test"]))
    return InteractionData(
        name=f"session_benchmark:{root.name}",
        n_users=n_sessions,
        n_items=len(vocabulary),
        train=train_pairs,
        valid=valid_pairs,
        test=test_pairs,
        sequential=True,
        test_excludes_valid=False,
        source_files=tuple(str(f) for f in files),
        item_ids=vocabulary,
        held_out_cases=given,
    )


def _recbole(root: Path, name: str) -> tuple[list[Path], np.ndarray, list[np.ndarray], dict[str, SessionCases]]:
    parts = [part for part in ("train", "valid", "test") if (root / f"{name}.{part}.inter").is_file()]
    if "train" not in parts or "test" not in parts:
        raise FileNotFoundError(f"{root} needs {name}.train.inter and {name}.test.inter (and optionally .valid.inter)")
    files = [root / f"{name}.{part}.inter" for part in parts]
    vocabulary, cases = read_recbole_session_files(files)
    by_part = dict(zip(parts, cases))
    return files, vocabulary, _longest_per_session(by_part.pop("train")), by_part


def _txt(root: Path) -> tuple[list[Path], np.ndarray, list[np.ndarray], dict[str, SessionCases]]:
    files = [root / "train.txt", root / "test.txt"]
    train_raw, test_raw = (read_session_txt(f) for f in files)
    vocabulary = np.unique(np.concatenate(train_raw + test_raw))
    train = [np.searchsorted(vocabulary, s) for s in train_raw if len(s) >= 2]
    test = [np.searchsorted(vocabulary, s) for s in test_raw if len(s) >= 2]
    return files, vocabulary, train, {"test": SessionCases.from_prefixes([s[:-1] for s in test], [s[-1] for s in test])}


def _longest_per_session(cases: SessionCases) -> list[np.ndarray]:
    """Each session's longest ``prefix -> target`` row as one sequence (its shorter rows are its
    prefixes, so this holds every transition of the session once)."""
    longest: dict[int, int] = {}
    for row, (session, length) in enumerate(zip(cases.session_index.tolist(), cases.prefix_lengths.tolist())):
        if session not in longest or length >= cases.prefix_lengths[longest[session]]:
            longest[session] = row
    return [np.append(cases.prefix(row), cases.targets[row]) for row in sorted(longest.values())]


def _hold_out(sessions: list[np.ndarray], share: float, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    held = set(rng.choice(len(sessions), size=int(round(share * len(sessions))), replace=False).tolist())
    return ([s for i, s in enumerate(sessions) if i not in held], [s for i, s in enumerate(sessions) if i in held])


def _case_rows(cases: SessionCases) -> list[np.ndarray]:
    return [np.append(cases.prefix(c), cases.targets[c]) for c in range(len(cases))]
