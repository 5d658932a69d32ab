"""The collector against slow clients and a frozen broker, over real HTTP (Serve's ingress), on a
broker of this module's own (freezing it disturbs no other test) and a collector deployed as in
deploy/local/serve.yaml (64 requests in flight per replica), with a 1 s body-read timeout.

* A body sent too slowly gets 408 within the timeout and frees its request slot; a normal request
  sent meanwhile is answered (slow-loris).
* With the broker frozen (SIGSTOP), every request is answered 503 + Retry-After within
  ``kafka.produce_timeout_s`` (never a 500, never a hung request); events refused but written all
  the same were all answered "MAY have been written", and their retry with the same event_ids is
  accepted once the broker is back.
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from streamrec.local_stack import EmbeddedBroker
from streamrec.runtime.kafka import ensure_topics, read_topic, topic_end_offsets
from support import TEST_LIMITS, TEST_TOKEN, BrokerHandle, CollectorHandle, free_port, make_event, make_settings, settings_overrides

pytestmark = [pytest.mark.kafka, pytest.mark.ray]

APP = "hardened"
BODY_READ_TIMEOUT_S = 1.0
# Scheduling slack on 2 busy cores (the HTTP ingress, the replica, the test itself); the bounds
# themselves are the settings.
MARGIN_S = 1.5


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, ray_serve: int) -> Iterator[tuple[BrokerHandle, CollectorHandle]]:
    from ray import serve

    from serving.collector.app import Collector, CollectorArgs

    state_dir: Path = tmp_path_factory.mktemp("hardened")
    limits = {**TEST_LIMITS, "body_read_timeout_s": BODY_READ_TIMEOUT_S}
    settings = make_settings(state_dir, free_port(), collector={"auth_token": TEST_TOKEN, "limits": limits})
    broker = EmbeddedBroker(settings)
    broker.start()
    ensure_topics(settings.kafka)
    app = Collector.options(max_ongoing_requests=64).bind(CollectorArgs(settings=settings_overrides(settings)))
    serve.run(app, name=APP, route_prefix=f"/{APP}/v1/events")
    collector = CollectorHandle(f"http://127.0.0.1:{ray_serve}/{APP}", settings, APP)
    try:
        yield BrokerHandle(settings, broker), collector
    finally:
        serve.delete(APP)
        broker.resume()
        broker.stop()


def _slow_post(url: str, body: bytes, first: int, byte_every_s: float, give_up_s: float) -> tuple[int, float, str]:
    """POST ``body`` over a raw socket: the headers and ``first`` bytes at once, then one byte
    every ``byte_every_s``, until the server answers. Returns (status, seconds, response text)."""
    parts = urlsplit(url)
    head = (
        f"POST {parts.path}/v1/events HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {TEST_TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=give_up_s) as sock:
        sock.sendall(head + body[:first])
        started = time.monotonic()
        sent = first
        while time.monotonic() - started < give_up_s:
            readable, _, _ = select.select([sock], [], [], byte_every_s)
            if readable:
                answer = b""
                while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 20:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
                took = time.monotonic() - started
                text = answer.decode("utf-8", "replace")
                return int(text.split(" ", 2)[1]), took, text
            if sent < len(body):
                try:
                    sock.sendall(body[sent : sent + 1])
                except OSError:
                    pass  # the server closed its side: the answer is on its way
                sent += 1
    raise AssertionError(f"no answer within {give_up_s}s")


def test_a_slow_body_gets_408_within_the_timeout_and_others_are_served_meanwhile(
    stack: tuple[BrokerHandle, CollectorHandle],
) -> None:
    _, collector = stack
    dlq = collector.settings.kafka.topics.dlq
    dlq_start = topic_end_offsets(collector.settings.kafka, dlq)
    body = json.dumps(make_event()).encode()  # ~200 bytes at 4 a second: 50 s if let through
    results: list[tuple[int, float, str]] = []
    slow = [
        threading.Thread(target=lambda: results.append(_slow_post(collector.url, body, 10, 0.25, 30)))
        for _ in range(3)
    ]
    for thread in slow:
        thread.start()
    time.sleep(0.3)
    with collector.client() as client:  # while the slow ones hold their slots
        started = time.monotonic()
        reply = client.post("/v1/events", json=make_event())
        normal_s = time.monotonic() - started
    for thread in slow:
        thread.join(timeout=60)
    print(f"\nslow bodies answered {[f'{s} in {t:.2f}s' for s, _, t in [(r[0], 0, r[1]) for r in results]]}; a normal request meanwhile {normal_s:.2f}s")
    assert reply.status_code == 200 and normal_s < BODY_READ_TIMEOUT_S, "a normal request waited for the slow ones"
    assert len(results) == 3
    for status, took, text in results:
        assert status == 408, text
        assert BODY_READ_TIMEOUT_S - 0.1 <= took <= BODY_READ_TIMEOUT_S + MARGIN_S, took
        assert "body_timeout" in text
    # ... each dead-lettered with what had arrived
    dead = [json.loads(r.value) for r in read_topic(collector.settings.kafka, dlq, start=dlq_start)]
    assert [d["reason"] for d in dead] == ["body_timeout"] * 3
    assert all(d["raw"] and body.decode().startswith(d["raw"]) and d["truncated"] for d in dead)


def test_a_frozen_broker_answers_every_request_503_within_the_produce_timeout(
    stack: tuple[BrokerHandle, CollectorHandle],
) -> None:
    broker, collector = stack
    produce_timeout_s = collector.settings.kafka.produce_timeout_s
    with collector.client() as client:
        for _ in range(3):
            assert client.post("/v1/events", json=[make_event(), make_event()]).status_code == 200

    replies: list[tuple[list[dict[str, Any]], int, float, dict[str, Any], httpx.Headers]] = []

    async def user(client: httpx.AsyncClient, until: float) -> None:
        while time.monotonic() < until:
            batch = [make_event(), make_event()]
            started = time.monotonic()
            reply = await client.post("/v1/events", json=batch)
            replies.append((batch, reply.status_code, time.monotonic() - started, reply.json(), reply.headers))

    async def traffic(seconds: float, users: int) -> None:
        headers = {"authorization": f"Bearer {TEST_TOKEN}"}
        async with httpx.AsyncClient(base_url=collector.url, headers=headers, timeout=60) as client:
            until = time.monotonic() + seconds
            await asyncio.gather(*(user(client, until) for _ in range(users)))

    broker.broker.pause()  # SIGSTOP: connections stay open, nothing answers
    try:
        asyncio.run(traffic(8.0, 16))
    finally:
        broker.broker.resume()

    refused = [r for r in replies if r[1] != 200]
    took = sorted(r[2] for r in replies)
    statuses = sorted({r[1] for r in replies})
    # Once the broker answers again, the client retries each refused batch with the same events.
    retried_ok = 0
    with collector.client() as client:
        deadline = time.monotonic() + 30
        for batch, *_ in refused:
            while True:
                status = client.post("/v1/events", json=batch).status_code
                if status == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            retried_ok += status == 200
    records = read_topic(collector.settings.kafka, collector.settings.kafka.topics.events)
    counts: dict[str, int] = {}
    for record in records:
        event_id = json.loads(record.value)["event_id"]
        counts[event_id] = counts.get(event_id, 0) + 1
    refused_ids = [[e["event_id"] for e in batch] for batch, *_ in refused]
    written_anyway = [r for r, ids in zip(refused, refused_ids) if any(counts.get(i, 0) > 1 for i in ids)]
    print(
        f"\nfrozen broker, produce_timeout_s={produce_timeout_s:g}: {len(replies)} requests, statuses {statuses}, "
        f"max {took[-1]:.2f} s, p95 {took[int(0.95 * len(took)) - 1]:.2f} s, median {took[len(took) // 2]:.2f} s; "
        f"{sum(r[3]['error']['may_have_been_written'] for r in refused)} said 'MAY have been written', "
        f"{len(written_anyway)} refused batches were in Kafka anyway (twice after the retry)"
    )
    assert statuses == [503], statuses  # never a 500, and a frozen broker acknowledges nothing
    assert took[-1] <= produce_timeout_s + MARGIN_S, took[-5:]
    for _, _, _, body, headers in refused:
        assert headers["retry-after"] == "1"
        error = body["error"]
        assert error["reason"] == "broker_unavailable" and "NOT accepted" in error["detail"]
        assert error["retry_with_same_event_ids"] is True
        if error["may_have_been_written"]:
            assert "MAY have been written" in error["detail"] and "same event_ids" in error["detail"]
    # "none was written" is never said of events that reached Kafka before their retry.
    assert all(r[3]["error"]["may_have_been_written"] for r in written_anyway)
    assert retried_ok == len(refused), "the retries were not accepted after the broker came back"
    assert all(counts.get(i, 0) >= 1 for ids in refused_ids for i in ids)
