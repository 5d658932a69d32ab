"""Typed model configs whose defaults live in a YAML file beside the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Self

import yaml
from pydantic import BaseModel, ConfigDict

MODELS_DIR = Path(__file__).resolve().parents[1]


class ModelConfig(BaseModel):
    """Base of every model config: unknown keys are errors, values are validated on construction.

    Subclasses set ``defaults_file`` to the YAML beside their model.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    defaults_file: ClassVar[str]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        with open(MODELS_DIR / cls.defaults_file) as f:
            return yaml.safe_load(f) or {}

    @classmethod
    def with_overrides(cls, overrides: dict[str, Any] | None = None) -> Self:
        """The YAML defaults updated with ``overrides`` (e.g. from a job config)."""
        return cls(**{**cls.defaults(), **(overrides or {})})
