"""Bounded reading of request bodies (serving/request_body.py), shared by the collector and the
recommender: time, size, Content-Encoding, JSON depth, lone surrogates. No HTTP server: a real
Starlette Request over an ASGI receive channel that sends the body as slowly as a test likes."""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import time
from typing import Any

import pytest
from starlette.requests import Request

from serving.request_body import (
    BodyLimits,
    BodyRejected,
    decode_content_encoding,
    json_nesting_depth,
    read_body,
    read_json_object,
)

LIMITS = BodyLimits(max_bytes=4096, read_timeout_s=0.5, max_json_depth=32)


def _request(
    chunks: list[bytes], headers: dict[str, str] | None = None, pause_s: float = 0.0, disconnect: bool = False, stall: bool = False
) -> Request:
    """A POST whose body arrives in ``chunks``, ``pause_s`` apart; then, optionally, a disconnect
    or nothing more ever (``stall``)."""
    pending = list(chunks)

    async def receive() -> dict[str, Any]:
        if pending:
            if pause_s:
                await asyncio.sleep(pause_s)
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending) or disconnect or stall}
        if disconnect:
            return {"type": "http.disconnect"}
        await asyncio.sleep(3600)  # a client that stops sending
        raise AssertionError("unreachable")

    raw_headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw_headers, "query_string": b""}, receive)


def _rejected(coro: Any) -> BodyRejected:
    with pytest.raises(BodyRejected) as info:
        asyncio.run(coro)
    return info.value


# -- time and size --------------------------------------------------------------------------


def test_a_body_that_arrives_in_time_is_read_whole() -> None:
    assert asyncio.run(read_body(_request([b'{"a":', b" 1}"], pause_s=0.01), LIMITS)) == b'{"a": 1}'


def test_a_slow_body_gets_408_at_the_timeout_with_what_arrived() -> None:
    chunks = [b"x" * 10] * 100  # 1000 bytes at 10 bytes / 0.1 s: 10 s, the limit is 0.5 s
    started = time.monotonic()
    exc = _rejected(read_body(_request(chunks, pause_s=0.1), LIMITS))
    took = time.monotonic() - started
    assert (exc.status, exc.reason) == (408, "body_timeout")
    assert LIMITS.read_timeout_s <= took < LIMITS.read_timeout_s + 1.0  # slack for a loaded machine
    assert exc.partial_body == b"x" * len(exc.partial_body) and 10 <= len(exc.partial_body) <= 60
    assert exc.headers == {"Connection": "close"}
    assert "0.5s" in exc.detail


def test_a_client_that_stops_sending_gets_408() -> None:
    exc = _rejected(read_body(_request([b'{"a": '], headers={"content-length": "100"}, stall=True), LIMITS))
    assert (exc.status, exc.reason, exc.partial_body) == (408, "body_timeout", b'{"a": ')


def test_a_client_that_goes_away_mid_body_is_a_400_not_a_crash() -> None:
    exc = _rejected(read_body(_request([b'{"a": '], disconnect=True), LIMITS))
    assert (exc.status, exc.reason) == (400, "incomplete_body")


def test_an_oversize_body_is_413_declared_or_streamed() -> None:
    declared = _rejected(read_body(_request([b"x"], headers={"content-length": "5000"}), LIMITS))
    assert (declared.status, declared.reason) == (413, "body_too_large")
    streamed = _rejected(read_body(_request([b"x" * 3000, b"x" * 3000]), LIMITS))
    assert (streamed.status, streamed.reason, len(streamed.partial_body)) == (413, "body_too_large", 6000)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"max_bytes": 0}, "max_bytes"), ({"read_timeout_s": 0}, "read_timeout_s"), ({"max_json_depth": 0}, "max_json_depth")],
)
def test_limits_are_checked(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BodyLimits(**{"max_bytes": 10, "read_timeout_s": 1.0, "max_json_depth": 4, **kwargs})


# -- Content-Encoding ---------------------------------------------------------------------


@pytest.mark.parametrize("coding", ["", "identity", " Identity "])
def test_identity_is_taken_as_is(coding: str) -> None:
    assert decode_content_encoding(b"abc", coding, 10) == b"abc"


@pytest.mark.parametrize("coding", ["gzip", "GZIP", "x-gzip"])
def test_gzip_is_inflated(coding: str) -> None:
    assert decode_content_encoding(gzip.compress(b"[1, 2]"), coding, 100) == b"[1, 2]"
    # several members one after the other are one gzip stream (RFC 1952)
    assert decode_content_encoding(gzip.compress(b"[1,") + gzip.compress(b" 2]"), coding, 100) == b"[1, 2]"


@pytest.mark.parametrize(
    ("body", "coding", "status", "reason"),
    [
        (b"[1]", "br", 415, "unsupported_content_encoding"),
        (b"[1]", "deflate", 415, "unsupported_content_encoding"),
        (b"[1]", "gzip, gzip", 415, "unsupported_content_encoding"),
        (b"[1]", "gzip", 400, "invalid_gzip"),  # not gzip at all
        (gzip.compress(b"[1, 2, 3]")[:-6], "gzip", 400, "invalid_gzip"),  # cut short
        (gzip.compress(b"[1]") + b"junk", "gzip", 400, "invalid_gzip"),  # trailing garbage
        (gzip.compress(b" " * 10_000_000), "gzip", 413, "body_too_large"),  # a bomb: 10 MB from ~10 kB
    ],
)
def test_bad_or_unknown_encodings_are_refused(body: bytes, coding: str, status: int, reason: str) -> None:
    with pytest.raises(BodyRejected) as info:
        decode_content_encoding(body, coding, 4096)
    assert (info.value.status, info.value.reason) == (status, reason)


def test_a_gzip_bomb_stops_at_the_limit_quickly() -> None:
    bomb = gzip.compress(b"\0" * 50_000_000, 9)
    started = time.perf_counter()
    with pytest.raises(BodyRejected):
        decode_content_encoding(bomb, "gzip", 1_048_576)
    assert time.perf_counter() - started < 2.0  # it inflates 1 MB, not 50 (a few ms)


# -- JSON depth, before parsing --------------------------------------------------------


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


def _random_json(rng: random.Random, depth: int) -> Any:
    kind = rng.random()
    if depth > 8 or kind < 0.3:
        return rng.choice([1, -2.5, None, True, "plain", 'with "quotes" and \\ and ]]}} and [[{{', "\u00e9\U0001f600"])
    if kind < 0.65:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["a", "b]", '{"k"', "\\"]) + str(i): _random_json(rng, depth + 1) for i in range(rng.randrange(4))}


def test_the_scan_gives_the_parsers_depth_for_valid_json() -> None:
    rng = random.Random(7)
    for _ in range(500):
        value = _random_json(rng, 0)
        for text in (json.dumps(value), json.dumps(value, ensure_ascii=False, indent=1)):
            assert json_nesting_depth(text.encode("utf-8")) == _depth(value), text


@pytest.mark.parametrize(
    ("data", "at_least"),
    [
        (b"[" * 5000, 5000),  # never closed
        (b'["]]]]]", ' + b"[" * 40 + b"]" * 40 + b"]", 41),  # closers in a string hide nothing
        (b'["\\"]]]]", ' + b"[" * 40 + b"]" * 40 + b"]", 41),  # nor after an escaped quote
        (b'{"a": "unterminated [[[[[[', 1),
    ],
)
def test_the_scan_bounds_what_a_parser_would_reach_in_invalid_json(data: bytes, at_least: int) -> None:
    assert json_nesting_depth(data) >= at_least


def test_a_4000_deep_body_is_refused_before_parsing() -> None:
    for body in (b"[" * 4000 + b"]" * 4000, b'{"a":' * 4000 + b"1" + b"}" * 4000):
        exc = _rejected(read_json_object(_request([body]), BodyLimits(100_000, 1.0, 32)))
        assert (exc.status, exc.reason) == (400, "json_too_deep")
        assert "4000 levels" in exc.detail


# -- the recommender's JSON object ---------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "headers", "status", "reason"),
    [
        (b"", {}, 400, "empty_body"),
        (b"[1, 2]", {}, 400, "not_an_object"),
        (b'{"k": NaN}', {}, 400, "invalid_json"),
        (b'{"k": 1', {}, 400, "invalid_json"),
        (b'{"k": "\xff"}', {}, 400, "invalid_utf8"),
        (b'{"user_id": "u\\ud800"}', {}, 400, "invalid_unicode"),
        (b'{"exclude": ["a", "\\udfff"]}', {}, 400, "invalid_unicode"),
        (b'{"\\ud800": 1}', {}, 400, "invalid_unicode"),
        (b'{"k": 1}', {"content-encoding": "br"}, 415, "unsupported_content_encoding"),
        (b"[" * 33 + b"]" * 33, {}, 400, "json_too_deep"),
    ],
)
def test_json_object_bodies_are_refused_with_a_reason(body: bytes, headers: dict[str, str], status: int, reason: str) -> None:
    exc = _rejected(read_json_object(_request([body], headers), LIMITS))
    assert (exc.status, exc.reason) == (status, reason)
    json.dumps({"detail": exc.detail}, ensure_ascii=False).encode("utf-8")  # can go into a response


def test_a_gzip_json_object_is_read() -> None:
    body = gzip.compress(b'{"user_id": "u1", "k": 3}')
    assert asyncio.run(read_json_object(_request([body], {"content-encoding": "gzip"}), LIMITS)) == {"user_id": "u1", "k": 3}


def test_depth_check_counts_brackets_first_and_walks_only_when_they_could_exceed_the_limit():
    """``check_json_depth``'s shortcut (no more opening brackets than the limit) never passes a
    body that is too deep, and brackets inside strings still do not count once it walks."""
    from serving.request_body import BodyRejected, check_json_depth

    check_json_depth(b'{"a": [1, {"b": 2}]}', 3)  # three opening brackets, depth 3: shortcut
    check_json_depth(b'{"a": "[[[[{{{{"}', 2)  # nine openers counted, depth 1: walked, passes
    with pytest.raises(BodyRejected) as refused:
        check_json_depth(b'{"a": [1, {"b": 2}]}', 2)
    assert refused.value.reason == "json_too_deep"
