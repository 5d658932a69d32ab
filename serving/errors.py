"""The error body both HTTP apps answer with, and the strict base of their documented answers.

``{"error": {"reason": <code>, "detail": <for a person>, ...}}``: one shape, so that a client
handles every app's errors the same way and the OpenAPI documents describe it once.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

__all__ = ["ErrorDetail", "ErrorResponse", "StrictAnswer", "error_response"]


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
