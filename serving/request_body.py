"""Reading an HTTP request body within bounds: size, time, content encoding, JSON nesting.

Shared by the collector (``POST /v1/events``) and the recommender's POST endpoints, so that both
answer a bad or slow body the same way: a ``BodyRejected`` with the HTTP status and a reason code,
never a 500 and never a request slot held for as long as the client likes.

* **time**: the whole body must arrive within ``read_timeout_s`` of the handler starting to read
  it, else 408 ``body_timeout`` (slow-loris clients would otherwise hold every slot);
* **size**: over ``max_bytes`` (declared or streamed) is 413 ``body_too_large``;
* **encoding**: ``Content-Encoding: gzip`` is inflated up to ``max_bytes`` (a gzip bomb stops
  there: 413); any other coding is 415 ``unsupported_content_encoding``;
* **nesting**: JSON nested deeper than ``max_json_depth`` is 400 ``json_too_deep``, found by a
  scan of the bytes *before* any parser recurses into them.

FastAPI documents only the bodies it parses itself; these are read raw, so their schemas are
declared beside the handlers (``request_body_openapi``) and added to the app's OpenAPI components
(``add_openapi_components``), which costs nothing per request.

Example:
    >>> json_nesting_depth(b'[{"a": [1, "]]]"]}]')
    3
"""

from __future__ import annotations

import asyncio
import json
import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode
from starlette.requests import ClientDisconnect

from features.events import lone_surrogate_at

IDENTITY_CODINGS = ("", "identity")
GZIP_CODINGS = ("gzip", "x-gzip")


class BodyRejected(Exception):
    """The request body as a whole is unusable; ``status`` is the HTTP status to answer with.

    ``partial_body`` holds what was read before giving up (the dead letter keeps its start);
    ``headers`` go on the error response (``Connection: close`` where the rest of a body was
    never read).
    """

    def __init__(self, status: int, reason: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail
        self.headers = headers
        self.partial_body = b""


@dataclass(frozen=True)
class BodyLimits:
    """Bounds of one request body.

    Args:
        max_bytes: largest body taken, on the wire and once inflated.
        read_timeout_s: seconds the whole body may take to arrive.
        max_json_depth: deepest nesting of JSON arrays and objects taken.
    """

    max_bytes: int
    read_timeout_s: float
    max_json_depth: int

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {self.max_bytes}")
        if not self.read_timeout_s > 0:
            raise ValueError(f"read_timeout_s must be positive, got {self.read_timeout_s}")
        if self.max_json_depth < 1:
            raise ValueError(f"max_json_depth must be positive, got {self.max_json_depth}")


async def read_body(request: Any, limits: BodyLimits) -> bytes:
    """The raw body of a Starlette request, read within ``limits.max_bytes`` and
    ``limits.read_timeout_s``.

    Raises:
        BodyRejected: 413 (too large), 408 (too slow), 400 (the client went away mid-body).
    """
    limit = limits.max_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyRejected(413, "body_too_large", f"body is {declared} bytes; the limit is {limit}", _CLOSE)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.read_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                chunks.append(chunk)
                if size > limit:
                    rejected = BodyRejected(413, "body_too_large", f"body is over {limit} bytes (the limit)", _CLOSE)
                    rejected.partial_body = b"".join(chunks)
                    raise rejected
    except TimeoutError:
        rejected = BodyRejected(
            408, "body_timeout",
            f"the body did not arrive within {limits.read_timeout_s:g}s ({size} bytes received); send it whole and promptly",
            _CLOSE,
        )
        rejected.partial_body = b"".join(chunks)
        raise rejected from None
    except ClientDisconnect:
        rejected = BodyRejected(400, "incomplete_body", f"the client went away after {size} bytes of the body", _CLOSE)
        rejected.partial_body = b"".join(chunks)
        raise rejected from None
    return b"".join(chunks)


# JSON's escape of a UTF-16 surrogate (\uD800-\uDFFF), the only way a decoded string can hold one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def may_hold_surrogates(body: bytes) -> bool:
    """Whether decoding ``body`` (strict UTF-8, which refuses encoded surrogates, then JSON) can
    give a string with a lone surrogate: only when it holds such an escape. A body without one
    spares the walk over every string (``lone_surrogate_at``)."""
    return _SURROGATE_ESCAPE.search(body) is not None


async def read_json_object(request: Any, limits: BodyLimits) -> dict[str, Any]:
    """The body of a request that must be one JSON object (the recommender's POST endpoints):
    read (``read_body``), inflated (``decode_content_encoding``), its depth checked, then parsed
    strictly (no NaN/Infinity) with no lone surrogate in any string.

    Raises:
        BodyRejected: 400 ``empty_body``, ``json_too_deep``, ``invalid_utf8``, ``invalid_json``,
            ``not_an_object``, ``invalid_unicode``; 408, 413, 415 as ``read_body`` and
            ``decode_content_encoding`` say.
    """
    raw = await read_body(request, limits)
    body = decode_content_encoding(raw, request.headers.get("content-encoding", ""), limits.max_bytes)
    if not body.strip():
        raise BodyRejected(400, "empty_body", "send a JSON object")
    check_json_depth(body, limits.max_json_depth)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyRejected(400, "invalid_utf8", f"the body is not UTF-8: {exc}") from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:
        raise BodyRejected(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BodyRejected(400, "not_an_object", "the body must be a JSON object")
    where = lone_surrogate_at(value) if may_hold_surrogates(body) else None
    if where is not None:
        raise BodyRejected(400, "invalid_unicode", f"{where}: a lone UTF-16 surrogate (such as \\ud800) is not a Unicode character")
    return value


def decode_content_encoding(body: bytes, content_encoding: str, max_bytes: int) -> bytes:
    """The body with its ``Content-Encoding`` undone: identity as is, gzip inflated up to
    ``max_bytes``.

    Raises:
        BodyRejected: 415 for any other coding (or a chain of them), 400 for a broken gzip stream,
            413 when it inflates past ``max_bytes``.
    """
    coding = content_encoding.strip().lower()
    if coding in IDENTITY_CODINGS:
        return body
    if coding not in GZIP_CODINGS:
        raise BodyRejected(
            415, "unsupported_content_encoding",
            f"Content-Encoding {content_encoding.strip()[:64]!r} is not supported; send the body as is or gzip",
        )
    out: list[bytes] = []
    size = 0
    rest = body
    while True:  # gzip allows several members one after the other
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            piece = inflater.decompress(rest, max_bytes + 1 - size)
        except zlib.error as exc:
            raise BodyRejected(400, "invalid_gzip", f"Content-Encoding is gzip but the body is not: {exc}") from None
        size += len(piece)
        out.append(piece)
        if size > max_bytes or inflater.unconsumed_tail:
            raise BodyRejected(413, "body_too_large", f"the body inflates to over {max_bytes} bytes (the limit)")
        if not inflater.eof:
            raise BodyRejected(400, "invalid_gzip", "the gzip stream ends early")
        rest = inflater.unused_data
        if not rest:
            return b"".join(out)


def check_json_depth(data: bytes, max_depth: int) -> None:
    """Refuse JSON nested deeper than ``max_depth`` before any parser recurses into it.

    Raises:
        BodyRejected: 400 ``json_too_deep``.
    """
    # No deeper than its opening brackets (counted in C, strings included): one event has one or
    # two, so the walk below is skipped; it was ~2% of a single-event request's CPU (py-spy).
    if data.count(b"{") + data.count(b"[") <= max_depth:
        return
    depth = json_nesting_depth(data)
    if depth > max_depth:
        raise BodyRejected(400, "json_too_deep", f"JSON is nested {depth} levels deep; the limit is {max_depth}")


def json_nesting_depth(data: bytes) -> int:
    """How deep a JSON parser would nest arrays and objects reading ``data``: exact for valid
    JSON, an upper bound of the depth reached before the first error otherwise. Brackets inside
    strings do not count. Linear, in C (about 5 ms a MB), without parsing.
    """
    if b'\\"' in data:  # an escaped quote: find the strings properly
        outside = _JSON_STRING.sub(b"", data)
    else:  # every quote opens or closes a string
        outside = b"".join(data.split(b'"')[0::2])
    brackets = outside.translate(None, _NOT_A_BRACKET)
    if not brackets:
        return 0
    steps = np.frombuffer(brackets.translate(_BRACKET_STEP), dtype=np.int8)
    return max(0, int(steps.cumsum(dtype=np.int32).max()))


# -- documenting the bodies read here ----------------------------------------------------------

COMPONENTS = "#/components/schemas/"

CONTENT_ENCODING_PARAMETER: dict[str, Any] = {
    "name": "Content-Encoding", "in": "header", "required": False,
    "schema": {"type": "string", "enum": ["identity", *GZIP_CODINGS]},
    "description": "gzip: inflated up to the body limit (past it: 413 body_too_large); any other coding: 415.",
}


def schema_components(
    named: Mapping[str, Any], *, mode: JsonSchemaMode = "validation", generator: type[GenerateJsonSchema] = GenerateJsonSchema,
) -> dict[str, Any]:
    """OpenAPI ``components.schemas`` of ``named`` types (models, dataclasses, unions) and of every
    model they nest, each referring to the others there.

    Example:
        >>> from features.events import LineItem
        >>> components = schema_components({"Lines": list[LineItem]})
        >>> components["Lines"], sorted(components)
        ({'type': 'array', 'items': {'$ref': '#/components/schemas/LineItem'}}, ['LineItem', 'Lines'])
    """
    keyed, defs = TypeAdapter.json_schemas(
        [(name, mode, TypeAdapter(t)) for name, t in named.items()],
        ref_template=COMPONENTS + "{model}", schema_generator=generator,
    )
    out: dict[str, Any] = dict(defs.get("$defs", {}))
    for (name, _), schema in keyed.items():
        if schema != {"$ref": COMPONENTS + name}:  # a model's own name: its definition is there already
            out[name] = schema
    return out


def request_body_openapi(content: Mapping[str, Mapping[str, Any]], description: str) -> dict[str, Any]:
    """A route's ``openapi_extra`` for the body its handler reads itself: ``content`` maps each
    accepted media type to its schema; gzip is accepted as ``Content-Encoding``."""
    return {
        "requestBody": {
            "required": True, "description": description,
            "content": {media_type: {"schema": dict(schema)} for media_type, schema in content.items()},
        },
        "parameters": [dict(CONTENT_ENCODING_PARAMETER)],
    }


def add_openapi_components(
    app: Any, schemas: Callable[[], Mapping[str, Any]], security_schemes: Mapping[str, Any]
) -> None:
    """Make ``app.openapi()`` (FastAPI) also hold what its routes cannot show it: component
    ``schemas`` such as those of the bodies read here (built on the first call), and the
    credentials' ``security_schemes``.

    Call it before ``serve.ingress`` takes its copy of the app.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = generate()  # FastAPI's own, cached on the app: completed in place once
            components = doc.setdefault("components", {})
            known = components.setdefault("schemas", {})
            for name, schema in schemas().items():
                if known.setdefault(name, schema) != schema:
                    raise ValueError(f"two different OpenAPI component schemas are named {name!r}")
            components["securitySchemes"] = {**components.get("securitySchemes", {}), **security_schemes}
        return app.openapi_schema

    app.openapi = openapi


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


_CLOSE = {"Connection": "close"}
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_A_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
# "[" and "{" go one level down (+1), "]" and "}" one up (-1 as an int8).
_BRACKET_STEP = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")

