"""The error body both HTTP apps answer with, and the strict base of their documented answers.

``{"error": {"reason": <code>, "detail": <for a person>, ...}}``: one shape, so that a client
handles every app's errors the same way and the OpenAPI documents describe it once.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

__all__ = [
    "RETRY_AFTER_HEADER",
    "WWW_AUTHENTICATE_HEADER",
    "ErrorDetail",
    "ErrorResponse",
    "StrictAnswer",
    "documented_response",
    "error_response",
]


class StrictAnswer(BaseModel):
    """Base of the documented response models."""

    # additionalProperties: false, so that a field a handler adds but the docs lack is caught.
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(StrictAnswer):
    reason: str = Field(description="Machine-readable reason code (see each status).", examples=["invalid_request"])
    detail: str = Field(description="What was wrong, for a person.")


class ErrorResponse(StrictAnswer):
    """The body of every error answer."""

    error: ErrorDetail


def error_response(status: int, reason: str, detail: str, headers: dict[str, str] | None = None,
                   **extra: Any) -> JSONResponse:
    """An error answer in the shared shape (``extra``: fields a subclass of ErrorDetail documents)."""
    return JSONResponse({"error": {"reason": reason, "detail": detail, **extra}}, status_code=status, headers=headers)


# OpenAPI header objects of the answers that carry them: every 401 (serving.auth) and every 429/503.
WWW_AUTHENTICATE_HEADER: dict[str, Any] = {
    "WWW-Authenticate": {"required": True, "schema": {"type": "string", "const": "Bearer"}},
}
RETRY_AFTER_HEADER: dict[str, Any] = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "required": True, "schema": {"type": "integer"}},
}


def documented_response(model: Any, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """One entry of a route's ``responses=``: the body model, what it means, its headers if any."""
    return {"model": model, "description": description, **({"headers": headers} if headers else {})}

