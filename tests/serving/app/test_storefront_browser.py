"""The storefront in a real browser: headless Chromium, driven over the Chrome DevTools protocol,
shops at /shop/ on the session's stack (collector at /v1/events, recommender at /, a real broker).

Opens a product page, adds a bundle (a click carrying the slate's feedback token), buys it, adds and
buys an item, and closes the page with events still queued (so the tracker's page-hide beacon
sends them). Then: every event the page created is in Kafka exactly once, and the learner credited
the bundle click to the variant that showed it. The screenshot is kept in reports/test-artifacts/.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from recommender_support import learner_stats, recommender, wait_for  # noqa: F401 (fixture)

from streamrec.runtime.kafka import read_topic, topic_end_offsets
from support import FRONTEND

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[3] / "reports" / "test-artifacts"

pytestmark = [
    pytest.mark.kafka, pytest.mark.ray,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make system-deps installs it)"),
]


class DevTools:
    """The few Chrome DevTools protocol calls this test needs, over the browser's websocket: replies
    are matched to calls by id; events go to ``on_event`` (a coroutine function) as they arrive.
    (Written here: selenium/chromedriver would add a driver process and a dependency for a few calls.)"""

    def __init__(self, socket: Any, on_event: Any = None) -> None:
        self._socket, self._next_id = socket, 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._on_event = on_event
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for raw in self._socket:
            message = json.loads(raw)
            if "id" in message and message["id"] in self._waiting:
                self._waiting.pop(message["id"]).set_result(message)
            elif self._on_event is not None and "method" in message:
                asyncio.get_running_loop().create_task(self._on_event(self, message))

    async def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        reply = asyncio.get_running_loop().create_future()
        self._waiting[self._next_id] = reply
        await self._socket.send(json.dumps(message))
        answer = await asyncio.wait_for(reply, timeout=60)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    async def evaluate(self, session: str, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", session, expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_until(self, session: str, expression: str, timeout_s: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                value = await self.evaluate(session, expression)
            except RuntimeError:  # e.g. no document.body yet while the page loads
                value = None
            if value:
                return value
            await asyncio.sleep(0.1)
        page = await self.evaluate(session, "`${location.href} ready=${document.body.dataset.ready} ${document.body.innerText}`")
        raise AssertionError(f"timed out waiting for {expression}; the page: {page[:2000]}")


def _start_chromium(profile: Path) -> tuple[subprocess.Popen[bytes], str]:
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
            "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage",
            "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", f"--user-data-dir={profile}",
            "--window-size=1280,1400", "about:blank"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise AssertionError("chromium did not open its DevTools port")
        time.sleep(0.1)
    port, path = port_file.read_text().splitlines()[:2]
    return process, f"ws://127.0.0.1:{port}{path}"


async def _shop(ws_url: str, shop_url: str, shot: Path) -> dict[str, Any]:
    import websockets

    async with websockets.connect(ws_url, max_size=None) as socket:
        tools = DevTools(socket)
        target = (await tools.call("Target.createTarget", url="about:blank"))["targetId"]
        session = (await tools.call("Target.attachToTarget", targetId=target, flatten=True))["sessionId"]
        await tools.call("Page.enable", session)
        await tools.call("Page.navigate", session, url=shop_url)
        await tools.wait_until(session, "!!(document.body.dataset.ready && document.querySelector('[data-testid=bundle]'))")
        variant = await tools.evaluate(session, "document.querySelector('[data-testid=variant]').textContent")
        slate = await tools.evaluate(session, "window.streamrecShop.last.bundles")
        for test_id in ("bundle-click", "bundle-buy", "add-to-cart", "buy-now"):
            await tools.evaluate(session, f"document.querySelector('[data-testid={test_id}]').click()")
        await tools.wait_until(session, "document.querySelector('[data-testid=status]').textContent")
        png = await tools.call("Page.captureScreenshot", session, format="png")
        shot.write_bytes(base64.b64decode(png["data"]))
        page = await tools.evaluate(session, "({created: window.streamrecShop.created, errors: window.streamrecShop.errors, "
                                             "stats: window.streamrecShop.tracker.stats, pending: window.streamrecShop.tracker.pending})")
        # Closing the page: Page.close runs its unload steps (pagehide, visibilitychange: the
        # tracker's beacon); Target.closeTarget would discard the page without them.
        await tools.call("Page.close", session)
        return {"variant_text": variant, "slate": slate, **page}


def test_a_shopper_in_chromium_reaches_kafka_once_and_the_learner_credits_the_click(collector, recommender, tmp_path) -> None:  # noqa: F811
    settings = recommender.settings
    start = topic_end_offsets(settings.kafka, settings.kafka.topics.events)
    user = f"browser-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=recommender.url, headers=FRONTEND, timeout=30) as c:
        before = learner_stats(c)
    # A long flush interval: the events of the last clicks are still queued when the page closes.
    shop_url = f"{recommender.url}/shop/?user={user}&flush_ms=60000#/item/item-2"
    shot = tmp_path / "storefront.png"
    process, ws_url = _start_chromium(tmp_path / "profile")
    try:
        seen = asyncio.run(_shop(ws_url, shop_url, shot))
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, ARTIFACTS / "storefront.png")
        assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
        # The browser stays up: the closed page's beacon is sent by the browser, after the page is gone.
        _check_delivery_and_credit(recommender, start, user, before, seen)
    finally:
        process.terminate()
        process.wait(timeout=30)


def _check_delivery_and_credit(recommender, start, user, before, seen) -> None:  # noqa: ANN001, F811
    settings = recommender.settings

    slate = seen["slate"]
    assert f"variant {slate['variant']}" in seen["variant_text"] and seen["errors"] == []
    created = {e["event_id"]: e["type"] for e in seen["created"]}
    assert Counter(created.values()) >= Counter({"view": 1, "click": 1, "add_to_cart": 2, "bundle_purchase": 1, "purchase": 1})
    assert seen["pending"] > 0  # some were still queued at close: they travel by beacon

    events = _events_of(settings, start, user, len(created))
    got = sorted((e["type"], e["event_id"]) for e in events)
    assert got == sorted((t, i) for i, t in created.items()), f"page: {seen}; Kafka: {got}"  # each once, nothing else
    click = next(e for e in events if e["type"] == "click")
    assert (click["request_id"], click["feedback_token"]) == (slate["request_id"], slate["feedback_token"])
    assert click["bundle_id"] == slate["bundles"][0]["bundle_id"] and click["session_id"] == events[0]["session_id"]

    key = f"{slate['experiment']} {slate['variant']}"
    with httpx.Client(base_url=recommender.url, headers=FRONTEND, timeout=30) as c:
        after = wait_for(lambda: (s := learner_stats(c)) and s["variants"].get(key, {}).get("clicks", 0)
                         > (before or {}).get("variants", {}).get(key, {}).get("clicks", 0) and s,
                         timeout_s=30, what="the learner crediting the browser's click")
    assert after["variants"][key]["clicks"] >= 1


def _events_of(settings, start: dict[int, int], user: str, expected: int) -> list[dict[str, Any]]:  # noqa: ANN001
    """The user's non-impression events since ``start``, once ``expected`` arrived (or after 60 s)."""
    def arrived() -> list[dict[str, Any]]:
        records = read_topic(settings.kafka, settings.kafka.topics.events, start=start, timeout_s=5)
        return [json.loads(r.value) for r in records if r.key == user.encode() and json.loads(r.value)["type"] != "impression"]

    deadline = time.monotonic() + 60
    while len(events := arrived()) < expected and time.monotonic() < deadline:
        time.sleep(1)
    return events


async def _shop_through_an_outage(ws_url: str, shop_url: str, failures: int) -> dict[str, Any]:
    """Shop while the collector's first ``failures`` POSTs are answered 503 (the browser's own
    request interception), then wait until the tracker has nothing left to send."""
    import websockets

    injected = []

    async def on_event(tools: DevTools, message: dict[str, Any]) -> None:
        if message["method"] != "Fetch.requestPaused":
            return
        paused, session = message["params"], message.get("sessionId")
        if paused["request"]["method"] == "POST" and len(injected) < failures:
            injected.append(paused["request"]["postData"] if "postData" in paused["request"] else "")
            body = base64.b64encode(b'{"error": {"reason": "broker_unavailable"}}').decode()
            await tools.call("Fetch.fulfillRequest", session, requestId=paused["requestId"], responseCode=503,
                             responseHeaders=[{"name": "retry-after", "value": "0"}, {"name": "content-type", "value": "application/json"}],
                             body=body)
        else:
            await tools.call("Fetch.continueRequest", session, requestId=paused["requestId"])

    async with websockets.connect(ws_url, max_size=None) as socket:
        tools = DevTools(socket, on_event)
        target = (await tools.call("Target.createTarget", url="about:blank"))["targetId"]
        session = (await tools.call("Target.attachToTarget", targetId=target, flatten=True))["sessionId"]
        await tools.call("Fetch.enable", session, patterns=[{"urlPattern": "*/v1/events*"}])
        await tools.call("Page.navigate", session, url=shop_url)
        await tools.wait_until(session, "!!(document.body.dataset.ready && document.querySelector('[data-testid=add-to-cart]'))")
        for test_id in ("add-to-cart", "buy-now"):
            await tools.evaluate(session, f"document.querySelector('[data-testid={test_id}]').click()")
        shop = "window.streamrecShop"
        await tools.wait_until(session, f"{shop}.tracker.pending === 0 && {shop}.tracker.stats.sent >= {shop}.created.length")
        page = await tools.evaluate(session, f"({{created: {shop}.created, stats: {shop}.tracker.stats, errors: {shop}.errors}})")
        await tools.call("Page.close", session)
        return {**page, "injected": injected}


def test_the_tracker_retries_a_503_with_the_same_event_ids_and_kafka_gets_each_once(collector, recommender, tmp_path) -> None:  # noqa: F811
    settings = recommender.settings
    start = topic_end_offsets(settings.kafka, settings.kafka.topics.events)
    user = f"outage-{uuid.uuid4().hex[:8]}"
    process, ws_url = _start_chromium(tmp_path / "profile")
    try:
        seen = asyncio.run(_shop_through_an_outage(ws_url, f"{recommender.url}/shop/?user={user}&flush_ms=200#/item/item-3", failures=2))
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert len(seen["injected"]) == 2 and seen["stats"]["retried"] >= 2 and seen["errors"] == []
    refused_ids = {e["event_id"] for body in seen["injected"] if body for e in json.loads(body)}
    created = {e["event_id"]: e["type"] for e in seen["created"]}
    assert refused_ids and refused_ids <= set(created)  # what was refused was sent again, same ids
    events = _events_of(settings, start, user, len(created))
    assert sorted(e["event_id"] for e in events) == sorted(created)  # each exactly once
