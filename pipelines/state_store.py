"""The feature pipeline's checkpoint: per-key state carried from one micro-batch to the next.

Saved atomically (write to a temporary file, fsync, rename) *before* the consumer group's offsets
are committed. After a crash between the two, the next batch re-reads records already folded into
the state; de-duplication by ``event_id`` (whose memory is part of this state) drops them, so
nothing is counted twice and nothing is lost.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TYPE_CHECKING

from streamrec.runtime.files import atomic_path

if TYPE_CHECKING:
    from streamrec.runtime.config import Settings

STATE_VERSION = 1
FAMILIES = ("seen", "users", "items", "sessions", "cooccurrence", "bundles", "requests", "variants")


@dataclass
class PipelineState:
    """Everything a micro-batch needs from the previous ones."""

    watermark: float | None = None
    offsets: dict[int, int] = field(default_factory=dict)
    batches: int = 0
    seen: dict[str, float] = field(default_factory=dict)
    users: dict[str, Any] = field(default_factory=dict)
    items: dict[str, Any] = field(default_factory=dict)
    sessions: dict[str, Any] = field(default_factory=dict)
    cooccurrence: dict[str, Any] = field(default_factory=dict)
    bundles: dict[str, Any] = field(default_factory=dict)
    requests: dict[str, Any] = field(default_factory=dict)
    variants: dict[str, Any] = field(default_factory=dict)
    version: int = STATE_VERSION

    def sizes(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in FAMILIES}


def state_path(settings: Settings) -> Path:
    return Path(settings.data.state_dir) / settings.pipeline.state_subdir / "state.pkl"


def load_state(path: Path) -> PipelineState:
    """The saved state, or an empty one when there is none yet."""
    if not path.exists():
        return PipelineState()
    with open(path, "rb") as handle:
        state = pickle.load(handle)
    if not isinstance(state, PipelineState) or state.version != STATE_VERSION:
        raise ValueError(f"{path}: not a version {STATE_VERSION} pipeline state; remove it and backfill")
    return state


def save_state(path: Path, state: PipelineState) -> None:
    """Replace the saved state atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        pickle.dump(state, handle, protocol=pickle.HIGHEST_PROTOCOL)
