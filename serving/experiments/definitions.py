"""Experiment definitions: variants (policy + params) with traffic shares, metrics, guardrails."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serving.bandit.registry import POLICIES

__all__ = ["Experiment", "Guardrail", "Metric", "Variant"]

Metric = Literal["ctr", "purchase_rate", "revenue_per_request"]
_NAME = r"^[A-Za-z0-9_.\-]+$"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Variant(_Frozen):
    """One arm of the experiment: the bandit policy it serves with, and its traffic share.

    Attributes:
        name: variant id (logged in impressions).
        policy: a name from ``serving.bandit.POLICIES``.
        params: the policy's hyper-parameters.
        share: fraction of users, in (0, 1].
    """

    name: str = Field(min_length=1, max_length=64, pattern=_NAME)
    policy: str
    params: dict[str, Any] = Field(default_factory=dict)
    share: float = Field(gt=0.0, le=1.0, allow_inf_nan=False)

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        if value not in POLICIES:
            raise ValueError(f"unknown policy {value!r}; known: {sorted(POLICIES)}")
        return value


class Guardrail(_Frozen):
    """Stop a variant that is significantly worse than control on ``metric``.

    Attributes:
        metric: the guarded metric.
        alpha: one-sided significance level of "worse".
        min_requests: no decision before both groups have this many requests (peeking guard).
        max_relative_drop: tolerated drop (e.g. 0.05 = a 5% lower value is acceptable); the test
            is against control * (1 - max_relative_drop).
    """

    metric: Metric
    alpha: float = Field(default=0.01, gt=0.0, lt=0.5)
    min_requests: int = Field(default=1000, ge=2)
    max_relative_drop: float = Field(default=0.0, ge=0.0, lt=1.0)


class Experiment(_Frozen):
    """An A/B(/n) test of bandit policies.

    Attributes:
        name: experiment id (logged in impressions).
        salt: mixed into the assignment hash; a new salt reshuffles users.
        variants: at least two; shares sum to 1.
        control: the variant others are compared with (default: the first).
        primary_metric: the decision metric.
        guardrails: metrics that may stop a variant early.
        alpha: two-sided significance level of the comparisons.
    """

    name: str = Field(min_length=1, max_length=64, pattern=_NAME)
    salt: str = Field(min_length=1, max_length=128)
    variants: tuple[Variant, ...] = Field(min_length=2)
    control: str | None = None
    primary_metric: Metric = "ctr"
    guardrails: tuple[Guardrail, ...] = ()
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _consistent(self) -> "Experiment":
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        total = math.fsum(v.share for v in self.variants)
        if not math.isclose(total, 1.0, abs_tol=1e-9):
            raise ValueError(f"variant shares must sum to 1, got {total}")
        if self.control is not None and self.control not in names:
            raise ValueError(f"control {self.control!r} is not a variant")
        return self

    @property
    def control_name(self) -> str:
        """The control variant's name."""
        return self.control if self.control is not None else self.variants[0].name

    def variant(self, name: str) -> Variant:
        """The variant called ``name``."""
        for v in self.variants:
            if v.name == name:
                return v
        raise ValueError(f"no variant {name!r} in experiment {self.name!r}")
