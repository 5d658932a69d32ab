"""The recommender with its broker frozen (SIGSTOP), over real HTTP: requests that produce
(feedback; bundles once their impressions are overdue) answer 503 + Retry-After within
``kafka.produce_timeout_s``, never a 500; recommendations keep being served (their impressions are
logged in the background). A broker and a recommender of this test's own (slow: a stack of its
own; the producer's bound itself is tested without Ray in tests/serving/test_publisher_broker_freeze.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from recommender_support import learner_stats, recommender_args, wait_for

from streamrec.local_stack import EmbeddedBroker
from streamrec.runtime.kafka import ensure_topics
from support import FRONTEND, free_port, make_settings

pytestmark = [pytest.mark.kafka, pytest.mark.ray, pytest.mark.slow]

APP = "frozen-recommender"
MARGIN_S = 1.5


def test_a_frozen_broker_turns_producing_requests_into_prompt_503s(tmp_path: Path, ray_serve: int) -> None:
    from ray import serve

    from serving.app.api import build_app

    settings = make_settings(tmp_path, free_port())
    broker = EmbeddedBroker(settings)
    broker.start()
    ensure_topics(settings.kafka)
    serve.run(build_app(recommender_args(settings)), name=APP, route_prefix=f"/{APP}")
    url = f"http://127.0.0.1:{ray_serve}/{APP}"
    produce_timeout_s = settings.kafka.produce_timeout_s
    replies: list[tuple[str, int, float, dict[str, Any], httpx.Headers]] = []

    async def shopper(client: httpx.AsyncClient, n: int, until: float) -> None:
        i = 0
        while time.monotonic() < until:
            i += 1
            user = f"frozen-{n}-{i}"
            calls = [
                ("feedback", client.post("/v1/feedback", json={"type": "click", "request_id": f"r{n}{i}", "user_id": user, "item_id": "item-1"})),
                ("bundles", client.get("/v1/bundles", params={"user_id": user})),
                ("recommendations", client.get("/v1/recommendations", params={"user_id": user})),
            ]
            for what, call in calls:
                started = time.monotonic()
                reply = await call
                replies.append((what, reply.status_code, time.monotonic() - started, reply.json(), reply.headers))

    async def traffic(seconds: float, shoppers: int) -> None:
        async with httpx.AsyncClient(base_url=url, headers=FRONTEND, timeout=60) as client:
            until = time.monotonic() + seconds
            await asyncio.gather(*(shopper(client, n, until) for n in range(shoppers)))

    try:
        with httpx.Client(base_url=url, headers=FRONTEND, timeout=30) as c:
            wait_for(lambda: (learner_stats(c) or {}).get("offsets"), what="learner consuming")
            for what in ("/v1/bundles", "/v1/recommendations"):  # producers built, metadata known
                assert c.get(what, params={"user_id": "warm"}).status_code == 200
            assert c.post("/v1/feedback", json={"type": "click", "request_id": "r", "user_id": "warm", "item_id": "item-1"}).status_code == 200
        broker.pause()
        try:
            asyncio.run(traffic(8.0, 6))
        finally:
            broker.resume()
    finally:
        serve.delete(APP)
        broker.resume()
        broker.stop()

    by_kind = {what: sorted((s, round(t, 2)) for w, s, t, _, _ in replies if w == what) for what in ("feedback", "bundles", "recommendations")}
    slowest = max(t for _, _, t, _, _ in replies)
    print(f"\nrecommender, frozen broker, produce_timeout_s={produce_timeout_s:g}: slowest {slowest:.2f} s; " + "; ".join(
        f"{what}: {len(v)} requests, statuses {sorted({s for s, _ in v})}, max {max(t for _, t in v):.2f} s" for what, v in by_kind.items()
    ))
    assert all(status in (200, 503) for _, status, _, _, _ in replies), [r[:3] for r in replies if r[1] not in (200, 503)]
    assert slowest <= produce_timeout_s + MARGIN_S
    assert {s for s, _ in by_kind["feedback"]} == {503}  # acknowledged by nobody
    for _, status, _, body, headers in replies:
        if status == 503:
            assert headers["retry-after"] == "1" and body["error"]["reason"] == "broker_unavailable"
