"""The catalogue bundles of the recommender's configuration (``args.catalogue``, see
:mod:`serving.app.args`), which :class:`serving.app.bundle_candidates.BundleCandidates` offers."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

_ID_PATTERN = r"^[\x21-\x7e]+$"


class BundleSpec(BaseModel):
    """A catalogue bundle from configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=64, pattern=_ID_PATTERN)
    items: tuple[str, ...] = Field(min_length=1, max_length=20)
    category: str | None = None
