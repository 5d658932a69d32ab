"""Bad and slow bodies on every POST endpoint of the recommender, over real HTTP: a clear 4xx,
never a 500 (a 4,000-deep body was a RecursionError on each), and the service keeps serving.
The body reading itself is tested without HTTP in tests/serving/test_request_body.py."""

from __future__ import annotations

import gzip
import json
import socket
import time
from urllib.parse import urlsplit

import pytest
from recommender_support import recommender  # noqa: F401 (fixture)

from support import TEST_TOKEN

pytestmark = [pytest.mark.kafka, pytest.mark.ray]

POST_ENDPOINTS = ("/v1/bundles", "/v1/feedback", "/v1/recommendations")
BAD_BODIES = [
    ("4000-deep array", b"[" * 4000 + b"]" * 4000, {}, 400, "json_too_deep"),
    ("3000-deep object", b'{"":' * 3000 + b'"u"' + b"}" * 3000, {}, 400, "json_too_deep"),  # 15 kB, within the limit
    ("surrogate in user_id", b'{"user_id": "u\\ud800", "type": "click", "request_id": "r"}', {}, 400, "invalid_unicode"),
    ("surrogate in a key", b'{"user_id": "u", "\\udfff": 1}', {}, 400, "invalid_unicode"),
    ("brotli", b'{"user_id": "u"}', {"content-encoding": "br"}, 415, "unsupported_content_encoding"),
    ("not gzip", b'{"user_id": "u"}', {"content-encoding": "gzip"}, 400, "invalid_gzip"),
    ("not UTF-8", b'{"user_id": "\xff"}', {}, 400, "invalid_utf8"),
]


def test_bad_bodies_get_a_clear_4xx_on_every_post_endpoint(recommender) -> None:  # noqa: F811
    failures = []
    with recommender.client() as c:
        for path in POST_ENDPOINTS:
            for case, body, headers, status, reason in BAD_BODIES:
                r = c.post(path, content=body, headers={"content-type": "application/json", **headers})
                got = (r.status_code, r.json().get("error", {}).get("reason"))
                if got != (status, reason):
                    failures.append((path, case, got, (status, reason)))
        assert not failures, failures
        assert c.get("/v1/bundles", params={"user_id": "after-bad-bodies"}).status_code == 200


def test_a_gzip_body_is_read(recommender) -> None:  # noqa: F811
    with recommender.client() as c:
        for path, payload in (("/v1/recommendations", {"user_id": "gz-user", "k": 2}), ("/v1/bundles", {"user_id": "gz-user", "k": 2})):
            r = c.post(path, content=gzip.compress(json.dumps(payload).encode()),
                       headers={"content-type": "application/json", "content-encoding": "gzip"})
            assert r.status_code == 200, (path, r.text)
            assert r.json()["user_id"] == "gz-user"


def test_a_slow_body_gets_408_within_the_body_read_timeout(recommender) -> None:  # noqa: F811
    timeout_s = recommender.settings.serving.body_read_timeout_s
    parts = urlsplit(recommender.url)
    body = json.dumps({"user_id": "slow-user", "k": 2}).encode()
    head = (
        f"POST /v1/recommendations HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {TEST_TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s + 10) as sock:
        sock.sendall(head + body[:5])  # ... and nothing more
        started = time.monotonic()
        answer = sock.recv(65536)
        took = time.monotonic() - started
        while b"}}" not in answer:  # the JSON error body may come in a later segment
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"reason":"body_timeout"' in answer, answer
    assert timeout_s - 0.1 <= took <= timeout_s + 1.5, took
