"""The demo's simulation is honest (issue 24, item 6): the shoppers' future reaches serving and
training only through the events they send as they happen.

* No serving, training, pipeline or contract code imports the simulator (only the demo's
  orchestration, ``streamrec/demo.py``, runs it).
* The history the demo replays and trains on ends before the cut; the future is the shoppers' own.
* Everything one shopper's step sends over HTTP names only the item it is looking at now and the
  items the server showed it: never an item of its later events.
"""

from __future__ import annotations

import ast
import asyncio
import json
import random
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qsl

import httpx

from streamrec.simulation.shoppers import Shopper, ShopperModel, ShopperRun, _Visit, split_shoppers

REPO = Path(__file__).resolve().parents[2]
# The only module outside the simulator that may import it: the demo's orchestration.
ORCHESTRATION = {REPO / "streamrec" / "demo.py"}


def _imports_simulation(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names] if node.module == "streamrec" else [])
        found += [n for n in names if n == "streamrec.simulation" or n.startswith("streamrec.simulation.")]
    return found


def test_no_serving_training_or_pipeline_code_imports_the_simulator() -> None:
    rooms = ("features", "pipelines", "ray_jobs", "serving", "streamrec")
    offenders = {}
    for room in rooms:
        for path in (REPO / room).rglob("*.py"):
            if path.is_relative_to(REPO / "streamrec" / "simulation") or path in ORCHESTRATION:
                continue
            if found := _imports_simulation(path):
                offenders[str(path.relative_to(REPO))] = found
    assert not offenders, offenders
    assert _imports_simulation(REPO / "streamrec" / "demo.py"), "the check would not see an import"


def _event(user: str, kind: str, item: str, ts: datetime) -> dict:
    return {"schema_version": 1, "event_id": str(uuid.uuid4()), "type": kind, "user_id": user, "session_id": "s",
            "ts": ts.isoformat().replace("+00:00", "Z"), "item_id": item, "category_id": f"cat-{item}"}


def test_history_ends_before_the_cut_and_the_future_is_the_shoppers_own() -> None:
    cut = datetime(2017, 12, 2, tzinfo=timezone.utc)
    events = [
        _event("u1", "view", "h1", cut - timedelta(hours=2)),
        _event("u1", "view", "f1", cut + timedelta(hours=1)),
        _event("u2", "view", "h2", cut - timedelta(seconds=1)),
        _event("u3", "view", "f3", cut),  # no history: not a shopper, and never history
    ]
    history, shoppers = split_shoppers(events, cut)
    assert {e["item_id"] for e in history} == {"h1", "h2"}
    assert [(s.user_id, [e["item_id"] for e in s.future_events]) for s in shoppers] == [("u1", ["f1"])]


def test_a_shoppers_step_sends_nothing_of_its_future() -> None:
    now = datetime.now(timezone.utc)
    future = [_event("u1", "view", "now-item", now), _event("u1", "view", "later-1", now),
              _event("u1", "add_to_cart", "later-2", now), _event("u1", "purchase", "later-3", now)]
    future[3] = {**future[3], "items": [{"item_id": "later-3", "quantity": 1}]}
    del future[3]["item_id"]
    shopper = Shopper("u1", tuple(future))
    sent: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path + " " + json.dumps(dict(parse_qsl(request.url.query.decode()))) + " "
                    + request.content.decode())
        if request.url.path == "/v1/events":
            body = json.loads(request.content)
            return httpx.Response(200, json={"results": [{"status": "accepted", "event_id": e["event_id"]} for e in body]})
        if request.url.path == "/v1/bundles":  # a slate that happens to hold a later item, and others
            return httpx.Response(200, json={
                "request_id": "r1", "experiment": "e", "variant": "v", "policy": "p", "user_id": "u1",
                "feedback_token": "t.t", "bundles": [
                    {"bundle_id": "b1", "position": 0, "items": ["shown-1", "later-1"]},
                    {"bundle_id": "b2", "position": 1, "items": ["shown-2", "shown-3"]},
                ]})
        return httpx.Response(200, json={"request_id": "r2", "items": [{"item_id": "shown-4", "score": 1.0}], "source": "s"})

    async def step() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as client:
            visit = _Visit(client, "http://serving", "token", ShopperRun(), {}, ShopperModel(item_click=1.0),
                           random.Random(0), None)
            await visit.step(shopper, 0)

    asyncio.run(step())
    traffic = "\n".join(sent)
    assert "now-item" in traffic and '"bundle_id":"b1"' in traffic  # it did send its present and its feedback
    # later-1 may appear only as feedback on the slate that showed it (bundle b1), never otherwise
    for line in sent:
        if "later-1" in line:
            assert '"bundle_id": "b1"' in line or '"bundle_id":"b1"' in line, line
    assert "later-2" not in traffic and "later-3" not in traffic, traffic
