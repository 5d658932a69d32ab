"""The recommender's HTTP contract as pydantic models.

The request models (``BundlesQuery``, ``RecommendationsQuery``, ``FeedbackBody``) are what the
handlers parse with, from the query string or from a body they read raw (bounded:
``serving.request_body``). The answer models are for the OpenAPI document only: the handlers
build their answers as plain dicts, so nothing is validated twice per request.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from features.events import IsoDatetime, LineItem
from serving.errors import RETRY_AFTER_HEADER, WWW_AUTHENTICATE_HEADER, ErrorResponse, StrictAnswer, documented_response
from serving.experiments import ExperimentReport, Guardrail, Variant
from serving.experiments.definitions import Metric
from serving.feedback_tokens import FEEDBACK_REASONS
from serving.request_body import COMPONENTS, request_body_openapi, schema_components

_ID = r"^[\x21-\x7e]+$"


# -- requests ------------------------------------------------------------------------------------


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BundlesQuery(_Query):
    user_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=_ID, description="The shopper (user_id and/or item_id).")
    item_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=_ID, description="The item being looked at (the seed).")
    session_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=_ID)
    experiment: str | None = Field(default=None, min_length=1, max_length=64, description="Default: the configured default experiment.")
    k: int | None = Field(default=None, ge=1, description="Bundles to show (default serving.default_k; at most serving.max_k).")


class RecommendationsQuery(_Query):
    user_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=_ID)
    item_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=_ID, description="The item being looked at.")
    session_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=_ID)
    k: int = Field(default=10, ge=1, description="Items to return (at most serving.max_k).")
    diversity: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False, description="MMR trade-off (default: the live setting).")
    min_cross_category: int | None = Field(default=None, ge=0, description="Items from other categories than the seed's, at least.")
    exclude: list[str] = Field(default_factory=list, description="Items never to return (at most serving.max_candidates).")
    # Items in the cart now: appended to the user's sequence for the ranker, never recommended.
    cart: list[Annotated[str, Field(min_length=1, max_length=64, pattern=_ID)]] = Field(
        default_factory=list, description="Items in the cart now: context for the ranker, never returned.",
    )


class FeedbackBody(_Query):
    type: Literal["click", "purchase", "dismiss"]
    request_id: str = Field(min_length=1, max_length=64, pattern=_ID, description="The request_id of the slate or list shown.")
    user_id: str = Field(min_length=1, max_length=64, pattern=_ID)
    bundle_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=_ID, description="The bundle (a dismiss names one).")
    item_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=_ID)
    session_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=_ID)
    event_id: uuid.UUID | None = Field(default=None, description="Client-generated, so that a retry is de-duplicated.")
    position: int | None = Field(default=None, ge=0, le=10_000)
    items: list[LineItem] | None = Field(default=None, description="The bought lines (a purchase lists them).")
    order_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=_ID)
    currency: str | None = None
    ts: IsoDatetime | None = None  # ISO-8601 only, as the event contract (an epoch number is a 422)
    # The token served with the slate; bundle feedback without a valid one is refused (403).
    feedback_token: str | None = Field(
        default=None, max_length=4096, description="The slate's feedback_token: bundle feedback without a valid one is refused (403).",
    )


# -- answers -------------------------------------------------------------------------------------


class Health(StrictAnswer):
    status: Literal["ok"]
    service: Literal["recommender"]


class ShownBundle(StrictAnswer):
    bundle_id: str
    position: int = Field(ge=0)
    items: list[str]
    score: float
    propensity: float = Field(description="P(the policy shows this bundle at this position), for off-policy evaluation.")
    reason: str
    source: str = Field(description="Which candidate source proposed it.")


class BundlesResponse(StrictAnswer):
    request_id: str = Field(description="Named by feedback on this slate.")
    experiment: str
    variant: str
    policy: str
    user_id: str = Field(description="The user_id sent, else an anonymous id for this request.")
    bundles: list[ShownBundle]
    note: str | None = Field(default=None, description="Why no bundle was shown (present only then).")
    context_source: Literal["feast", "cold_start"] | None = Field(default=None, description="Present when bundles were shown.")
    feedback_token: str | None = Field(
        default=None, description="Sent back with a click or purchase of this slate (present when bundles were shown).",
    )


class RecommendedItem(StrictAnswer):
    item_id: str
    score: float
    reason: str
    category: str | None
    because: str | None = Field(default=None, description="The item of the sequence that led to it (ranked lists only).")


class RankerInfo(StrictAnswer):
    """What the sequential ranker did (timings in ms)."""

    model: str | None
    applied: bool
    candidates: int | None = None
    cooccurrence_anchor: str | None = None
    model_ms: float | None = None
    sequence_length: int | None = None
    note: str | None = None
    ms: float | None = None
    retrieval: str | None = None


class RecommendationsResponse(StrictAnswer):
    request_id: str = Field(description="Named by clicks on this list.")
    user_id: str | None
    diversity: float
    min_cross_category: int
    items: list[RecommendedItem]
    source: str
    policy: str
    ranker: RankerInfo | None = Field(default=None, description="Absent when there was nothing to rank.")
    note: str | None = Field(default=None, description="Why the list is empty (present only then).")


class FeedbackAccepted(StrictAnswer):
    accepted: Literal[True]
    event_id: uuid.UUID
    type: Literal["click", "bundle_purchase", "dismiss"]
    topic: str = Field(description="The Kafka topic it was written to (acknowledged).")


class ExperimentDefinition(StrictAnswer):
    """An experiment as configured, without its salt (with it, a user could choose their variant)."""

    name: str
    variants: list[Variant]
    control: str = Field(description="The variant the others are compared with.")
    primary_metric: Metric
    guardrails: list[Guardrail]
    alpha: float
    split: dict[str, float] = Field(description="Traffic share per variant (live: shares can be reconfigured).")


class ExperimentList(StrictAnswer):
    default: str = Field(description="The experiment of a bundles request that names none.")
    experiments: list[ExperimentDefinition]


class VariantCounts(StrictAnswer):
    requests: int
    exposures: int
    clicks: int
    purchases: int
    dismissals: int
    updates: int
    reward_sum: float


class FeatureWeights(StrictAnswer):
    """The weight a linear policy learned on each named feature: which signal it trusts."""

    arm: dict[str, float]
    user: dict[str, float]
    bias: float


class LiveVariant(VariantCounts):
    feature_weights: FeatureWeights | None = Field(description="Linear policies with shared weights only.")


class ExperimentResults(StrictAnswer):
    experiment: ExperimentDefinition
    live: dict[str, LiveVariant] = Field(description="The learner's counts per variant, now.")
    # The analysis is a serving.experiments.ExperimentReport (dataclass), schema'd from it: see component_schemas.
    analysis: Annotated[
        dict[str, Any] | None,
        WithJsonSchema({"anyOf": [{"$ref": COMPONENTS + ExperimentReport.__name__}, {"type": "null"}]}),
    ]
    analysis_note: str | None


class RestoreInfo(StrictAnswer):
    from_snapshot: bool
    fresh_policies: list[str] = Field(description="Variants whose definition changed: started afresh.")
    records_at_restore: int
    feedback_applied_at_restore: int | None = None
    offsets: dict[str, int] | None = None
    discarded_snapshot: dict[str, tuple[int | None, int]] | None = Field(
        default=None, description="Per partition (snapshot position, log end) when a snapshot ahead of the log was discarded.",
    )


class LearnerStats(StrictAnswer):
    feature_weights: dict[str, FeatureWeights] = Field(description="Per 'experiment variant'.")
    counters: dict[str, int]
    variants: dict[str, VariantCounts] = Field(description="Per 'experiment variant'.")
    policy_updates: dict[str, int]
    offsets: dict[str, int] = Field(description="Next offset per 'topic:partition' folded.")
    contexts: int
    log_time_ms: int
    restored: RestoreInfo
    snapshots: int
    consumer_error: str | None
    consumer_alive: bool
    started_at: float


class ForgottenEntries(StrictAnswer):
    contexts: int
    pending: int
    outcomes: int
    requests: int


class UserDeletionAccepted(StrictAnswer):
    """The tombstone is in Kafka and the learner forgot the user; the feature pipeline purges the
    lake and Feast, and training the model registry, when they read the tombstone (hence 202)."""

    request_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    user_id: str
    status: Literal["accepted"]
    tombstone_topic: str
    requested_at: datetime
    learner_removed: ForgottenEntries


# -- the OpenAPI declarations of the routes --------------------------------------------------------


class _NonFiniteAsNull(GenerateJsonSchema):
    """The analysis' floats are NaN where undefined (too few requests), which the answer sends as
    null; so are their NaN defaults (NaN is no JSON: /openapi.json would fail)."""

    def float_schema(self, schema: core_schema.FloatSchema) -> JsonSchemaValue:
        return {"anyOf": [super().float_schema(schema), {"type": "null"}]}

    def encode_default(self, dft: Any) -> Any:
        value = super().encode_default(dft)
        return None if isinstance(value, float) and not math.isfinite(value) else value


def component_schemas() -> dict[str, Any]:
    """What FastAPI cannot see: the bodies read raw, and the analysis (a dataclass sent as a dict)."""
    return {
        **schema_components({m.__name__: m for m in (BundlesQuery, RecommendationsQuery, FeedbackBody)}),
        **schema_components({ExperimentReport.__name__: ExperimentReport}, mode="serialization", generator=_NonFiniteAsNull),
    }


def json_body(model: type[BaseModel], description: str) -> dict[str, Any]:
    """``openapi_extra`` of a POST whose handler reads a JSON object raw and parses it with ``model``."""
    return request_body_openapi({"application/json": {"$ref": COMPONENTS + model.__name__}}, description)


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The OpenAPI query parameters of a handler that parses its query string with ``model``."""
    schema = model.model_json_schema(ref_template=COMPONENTS + "{model}")
    required = set(schema.get("required", ()))
    params = []
    for name, prop in schema["properties"].items():
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if prop.get("type") == "array":  # repeated, or comma-separated in one (_query_dict)
            param.update(style="form", explode=True, description=f"{prop.get('description', '')} Repeat it or separate ids with commas.".strip())
        elif "description" in prop:
            param["description"] = prop["description"]
        params.append(param)
    return params


def path_parameter(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": description}


_ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("The body is not one JSON object: empty_body, invalid_json, not_an_object, invalid_utf8, invalid_unicode, "
          "json_too_deep, invalid_gzip, incomplete_body.", {}),
    401: ("No or a wrong credential for this endpoint (unauthorized).",
          WWW_AUTHENTICATE_HEADER),
    # (a replay is the learner's to skip: it is answered 200)
    403: (f"Feedback refused and dead-lettered: {', '.join(r for r in FEEDBACK_REASONS if r != 'feedback_replayed')}.", {}),
    404: ("unknown_experiment.", {}),
    408: ("The body did not arrive in time (body_timeout); the connection is closed.", {}),
    413: ("body_too_large (on the wire or inflated).", {}),
    415: ("unsupported_content_encoding (send the body as is, or gzip).", {}),
    422: ("Invalid request: invalid_request (a field, an unknown field, neither user_id nor item_id), k_too_large, "
          "list_too_long, repeated_parameter, missing_field, or an event-contract reason (feedback).", {}),
    429: ("Throttled (too_many_requests): too many failed credentials, or the admin request rate.", RETRY_AFTER_HEADER),
    503: ("broker_unavailable (Kafka did not acknowledge in time) or learner_unavailable: retry.", RETRY_AFTER_HEADER),
}


def error_responses(*statuses: int, described: Mapping[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route for these error statuses (all with an ``ErrorResponse``), with an
    endpoint's own ``described`` wording where given."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description, headers = _ERRORS[status]
        out[status] = documented_response(ErrorResponse, (described or {}).get(status, description), headers)
    return out
