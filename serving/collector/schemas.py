"""The collector's HTTP contract as pydantic models, for its OpenAPI document only.

``POST /v1/events`` reads its body raw (size, time and depth bounds, duplicate keys, NDJSON,
``text/plain`` JSON from ``navigator.sendBeacon``: ``serving.collector.ingest``) and builds its
answers as plain dicts, so nothing here runs per request: these models say what those bodies are.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import FileResponse

from features.events import Event
from serving.collector.ingest import JSON_CONTENT_TYPES, NDJSON_CONTENT_TYPES
from serving.errors import RETRY_AFTER_HEADER, WWW_AUTHENTICATE_HEADER, ErrorDetail, ErrorResponse, StrictAnswer, documented_response
from serving.request_body import COMPONENTS, request_body_openapi, schema_components
from streamrec.runtime.config import CollectorLimits

_LIMITS = CollectorLimits()  # the defaults, for the descriptions (a deployment may configure others)


class BrokerUnavailableDetail(ErrorDetail):
    may_have_been_written: bool = Field(
        description="Whether some events may have reached Kafka all the same (a retry is still safe: "
                    "readers de-duplicate by event_id)."
    )
    retry_with_same_event_ids: Literal[True] = Field(description="Retry the same request, with the same event_ids.")


class BrokerUnavailableResponse(StrictAnswer):
    """503: Kafka did not acknowledge in time; nothing of the request counts as accepted."""

    error: BrokerUnavailableDetail


class AcceptedEvent(StrictAnswer):
    index: int = Field(ge=0, description="Position of the event in the request (0 for a single event).")
    status: Literal["accepted"]
    event_id: UUID


class RejectedEvent(StrictAnswer):
    index: int = Field(ge=0, description="Position of the event in the request (its line, from 0, in NDJSON).")
    status: Literal["rejected"]
    event_id: str | None = Field(description="The event's event_id where it sent a usable one.")
    reason: str = Field(description="Machine-readable reason code, e.g. invalid_field, unknown_type, invalid_json.")
    detail: str


class IngestResponse(StrictAnswer):
    """Per-event outcomes: every accepted event was acknowledged by Kafka; every rejected one was
    dead-lettered with its reason."""

    accepted: int = Field(ge=0)
    rejected: int = Field(ge=0)
    results: list[Annotated[AcceptedEvent | RejectedEvent, Field(discriminator="status")]] = Field(
        description="One per event, in request order."
    )


class EventSchemaDocument(BaseModel):
    """A JSON Schema (draft 2020-12) document: the event contract."""

    model_config = ConfigDict(extra="allow")

    schema_: str = Field(alias="$schema")
    id_: str = Field(alias="$id")
    title: str


class Health(StrictAnswer):
    status: Literal["ok"]
    service: Literal["collector"]


class JavaScriptFile(FileResponse):
    """For the docs only: the handler answers with a FileResponse of the tracker's media type."""

    media_type = "text/javascript"


def component_schemas() -> dict[str, Any]:
    """The request body's schemas, which FastAPI cannot see (the handler reads the body raw)."""
    return schema_components({"Events": Event | list[Event]})


EVENTS_BODY = request_body_openapi(
    {
        **{media_type: {"$ref": COMPONENTS + "Events"} for media_type in JSON_CONTENT_TYPES},
        **{media_type: {"type": "string", "description": "One event (a JSON object) per line."}
           for media_type in NDJSON_CONTENT_TYPES},
    },
    "One event, a JSON array of events (a batch), or NDJSON (one event per line). `text/plain` is "
    "taken as JSON, as `navigator.sendBeacon` sends it without a CORS preflight. Strict JSON: no "
    f"duplicate keys, no NaN/Infinity, nested at most {_LIMITS.max_json_depth} deep. Bounds (defaults; "
    f"configurable): {_LIMITS.max_body_bytes} bytes on the wire and inflated, {_LIMITS.max_batch_events} "
    f"events a batch, the whole body within {_LIMITS.body_read_timeout_s:g}s. A client's `received_at` "
    "is replaced by the server's.",
)

_SERVER_TIMING = {"description": "Time spent for Kafka's acknowledgement (produce) and in the collector (total), ms.",
                  "schema": {"type": "string"}}

_ERRORS: dict[int, tuple[Any, str, dict[str, Any]]] = {
    400: (ErrorResponse, "The body as a whole is unusable (dead-lettered): invalid_utf8, empty_body, invalid_json, "
                         "duplicate_key, not_a_finite_number, json_too_deep, invalid_gzip, incomplete_body.", {}),
    401: (ErrorResponse, "No or a wrong frontend key (unauthorized).", WWW_AUTHENTICATE_HEADER),
    408: (ErrorResponse, "The body did not arrive in time (body_timeout); the connection is closed.", {}),
    413: (ErrorResponse, "Too large: body_too_large (on the wire or inflated), batch_too_large.", {}),
    415: (ErrorResponse, "unsupported_media_type (Content-Type) or unsupported_content_encoding.", {}),
    422: (IngestResponse | ErrorResponse,
          "Every event was rejected (per-event reasons, as for 200), or the batch held none (empty_batch).",
          {"Server-Timing": _SERVER_TIMING}),
    503: (BrokerUnavailableResponse, "Kafka did not acknowledge in time (broker_unavailable): retry.", RETRY_AFTER_HEADER),
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route for these error statuses, each with its body model and headers."""
    return {status: documented_response(*_ERRORS[status]) for status in statuses}


EVENTS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Every event was accepted: acknowledged by Kafka.",
          "headers": {"Server-Timing": {**_SERVER_TIMING, "required": True}}},
    207: {"model": IngestResponse, "description": "Some events were accepted, some rejected: see each result.",
          "headers": {"Server-Timing": {**_SERVER_TIMING, "required": True}}},
    **error_responses(400, 401, 408, 413, 415, 422, 503),
}
