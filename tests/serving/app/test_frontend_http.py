"""The browser's side of both apps over real HTTP: the tracker script, CORS for the configured origin
only, the beacon form of a batch (key in the URL, text/plain), and the demo storefront's files."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from recommender_support import recommender  # noqa: F401 (fixture)

from streamrec.runtime.config import Settings
from streamrec.runtime.kafka import read_topic, topic_end_offsets
from support import FRONTEND, TEST_ADMIN_TOKEN, TEST_ORIGIN, TEST_TOKEN, make_event

pytestmark = [pytest.mark.kafka, pytest.mark.ray]

EVIL_ORIGIN = "http://evil.test.example"


def _event(event_type: str = "view", **fields) -> dict:  # noqa: ANN003
    """A contract event of an item no other test uses: the session's recommender counts popularity
    over every test's events, and the cold-start test expects its own items on top."""
    return make_event(event_type, item_id=f"fe-{uuid.uuid4().hex[:8]}", **fields)


def _preflight(base_url: str, path: str, origin: str) -> httpx.Response:
    return httpx.options(base_url + path, headers={
        "origin": origin, "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type",
    }, timeout=30)


def test_the_tracker_is_served_without_a_credential_as_a_javascript_module(collector) -> None:
    r = httpx.get(f"{collector.url}/v1/events/tracker.js", timeout=30)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/javascript")
    assert "export function createTracker" in r.text and "sendBeacon" in r.text and "keepalive: true" in r.text


@pytest.mark.parametrize("app", ["collector", "recommender"])
def test_cors_preflight_is_granted_to_the_configured_origin_only(app, collector, recommender) -> None:  # noqa: F811
    base, path = (collector.url, "/v1/events") if app == "collector" else (recommender.url, "/v1/bundles")
    granted = _preflight(base, path, TEST_ORIGIN)
    assert granted.status_code == 200, granted.text
    assert granted.headers["access-control-allow-origin"] == TEST_ORIGIN
    assert "authorization" in granted.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in granted.headers  # the key is a header, never a cookie
    refused = _preflight(base, path, EVIL_ORIGIN)
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers


def test_a_cross_origin_post_gets_cors_headers_and_its_timing_exposed(collector) -> None:
    with collector.client() as c:
        ok = c.post("/v1/events", json=_event(), headers={"origin": TEST_ORIGIN})
        other = c.post("/v1/events", json=_event(), headers={"origin": EVIL_ORIGIN})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == TEST_ORIGIN
    assert "server-timing" in ok.headers["access-control-expose-headers"].lower()
    # The server still answers a foreign origin's simple request; the browser hides it from the page.
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers


def test_a_beacon_batch_with_the_key_in_the_url_reaches_kafka(collector) -> None:
    settings = collector.settings
    start = topic_end_offsets(settings.kafka, settings.kafka.topics.events)
    user = f"beacon-{uuid.uuid4().hex[:8]}"
    batch = [_event(user_id=user), _event("add_to_cart", user_id=user)]
    r = httpx.post(f"{collector.url}/v1/events?key={TEST_TOKEN}", content=json.dumps(batch).encode(),
                   headers={"content-type": "text/plain;charset=UTF-8", "origin": TEST_ORIGIN}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 2
    records = read_topic(settings.kafka, settings.kafka.topics.events, start=start, timeout_s=20)
    assert sorted(json.loads(x.value)["event_id"] for x in records if x.key == user.encode()) == sorted(e["event_id"] for e in batch)


@pytest.mark.parametrize("key", ["", "wrong-key", TEST_ADMIN_TOKEN])
def test_a_url_key_is_only_ever_the_publishable_one(collector, recommender, key: str) -> None:  # noqa: F811
    refused = httpx.post(f"{collector.url}/v1/events", params={"key": key} if key else None,
                         content=json.dumps(_event()).encode(), headers={"content-type": "text/plain"}, timeout=30)
    assert refused.status_code == 401
    # The recommender takes no key from a URL at all, whichever token it is.
    for token in (TEST_TOKEN, TEST_ADMIN_TOKEN):
        assert httpx.get(f"{recommender.url}/v1/learner", params={"key": token}, timeout=30).status_code == 401
        assert httpx.get(f"{recommender.url}/v1/bundles", params={"user_id": "u", "key": token}, timeout=30).status_code in (401, 422)


def test_the_storefront_serves_its_page_script_and_config(recommender) -> None:  # noqa: F811
    with httpx.Client(base_url=recommender.url, timeout=30) as c:
        page = c.get("/shop/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="/shop/shop.js">' in page.text
        script = c.get("/shop/shop.js")
        assert script.status_code == 200 and 'from "/v1/events/tracker.js"' in script.text
        config = c.get("/shop/config.json").json()
        assert config == {"key": TEST_TOKEN, "collector_url": "/v1/events", "experiment": "bundles_ab"}
        assert c.get("/shop").status_code in (200, 307)
        for escape in ("/shop/../api.py", "/shop/%2e%2e/api.py", "/shop/..%2fapi.py", "/shop/nope.js"):
            assert c.get(escape).status_code == 404, escape
        assert "/shop/{path}" not in c.get("/openapi.json").text  # the demo is not part of the API


def test_the_storefront_is_on_in_development_and_off_in_production_unless_configured() -> None:
    prod = {"environment": "production", "collector": {"auth_token": "p" * 32},
            "serving": {"admin_token": "a" * 32, "reader_token": "r" * 32, "feedback_signing_key": "k" * 32}}
    assert Settings().storefront_served is True
    assert Settings(frontend={"storefront": False}).storefront_served is False
    assert Settings(**prod).storefront_served is False
    assert Settings(**prod, frontend={"storefront": True}).storefront_served is True


@pytest.mark.parametrize("origin", ["*", "https://shop.example.com/", "https://*.example.com", "shop.example.com"])
def test_allowed_origins_are_exact_origins(origin: str) -> None:
    with pytest.raises(ValueError, match="not an origin"):
        Settings(frontend={"allowed_origins": [origin]})
    assert Settings(frontend={"allowed_origins": ["https://shop.example.com:8443"]}).frontend.allowed_origins


def test_frontend_token_header_still_works_next_to_the_url_key(collector) -> None:
    r = httpx.post(f"{collector.url}/v1/events", json=_event(), headers=FRONTEND, timeout=30)
    assert r.status_code == 200
