"""The typed `args:` of the recommender Serve application (filled from the Serve config YAML)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.app.catalogue import BundleSpec
from serving.experiments import Experiment
from streamrec.runtime.config import REPO_ROOT, Settings, get_settings


class RecommenderArgs(BaseModel):
    """`args:` of ``serving.app.api:build_app``.

    Attributes:
        settings: overrides of the streamrec settings (as for the collector).
        experiments: experiment definitions inline ...
        experiments_file: ... or a YAML file with a top-level ``experiments:`` list (relative paths
            resolve against the repository root). Both may be given; names must be unique.
        default_experiment: the experiment of a bundles request that names none (default: the first).
        catalogue: catalogue bundles inline, or ``catalogue`` in the experiments file.
    """

    model_config = ConfigDict(extra="forbid")

    settings: dict[str, Any] = Field(default_factory=dict)
    experiments: list[Experiment] = Field(default_factory=list)
    experiments_file: str | None = None
    default_experiment: str | None = None
    catalogue: list[BundleSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _load_file(self) -> "RecommenderArgs":
        if self.experiments_file:
            path = Path(self.experiments_file)
            if not path.is_absolute():
                path = REPO_ROOT / path
            doc = yaml.safe_load(path.read_text()) or {}
            extra_keys = set(doc) - {"experiments", "catalogue", "default_experiment"}
            if extra_keys:
                raise ValueError(f"{path}: unknown keys {sorted(extra_keys)}")
            self.experiments = [*self.experiments, *(Experiment.model_validate(e) for e in doc.get("experiments", []))]
            self.catalogue = [*self.catalogue, *(BundleSpec.model_validate(b) for b in doc.get("catalogue", []))]
            self.default_experiment = self.default_experiment or doc.get("default_experiment")
            self.experiments_file = None
        names = [e.name for e in self.experiments]
        if not names:
            raise ValueError("at least one experiment is needed (experiments or experiments_file)")
        if len(set(names)) != len(names):
            raise ValueError(f"experiment names must be unique, got {names}")
        if self.default_experiment is None:
            self.default_experiment = names[0]
        elif self.default_experiment not in names:
            raise ValueError(f"default_experiment {self.default_experiment!r} is not defined")
        ids = [b.id for b in self.catalogue]
        if len(set(ids)) != len(ids):
            raise ValueError("catalogue bundle ids must be unique")
        return self

    def resolved_settings(self) -> Settings:
        return Settings(**self.settings) if self.settings else get_settings()
