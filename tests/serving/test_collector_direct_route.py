"""`POST /v1/events` goes from the mount-root middleware straight to its handler on the replica,
skipping Starlette's routing and FastAPI's request handling (serving/collector/app.py), and only
where nothing else would have run on the ordinary way."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from serving.collector.app import _events_route, _MountRootAsSlash, _walk_routes

ROOT = "/v1/events"


def _toy_app(**post_kwargs: Any) -> tuple[FastAPI, list[dict[str, Any]]]:
    """A Serve-ingressed class with the collector's shape: `POST /` taking the raw Request."""
    app = FastAPI()
    seen: list[dict[str, Any]] = []

    class Toy:
        name = "default replica"

        @app.post("/", **post_kwargs)
        async def post(self, request: Request) -> JSONResponse:
            # Starlette's router puts the matched endpoint in the scope; the direct way does not.
            seen.append({"replica": self.name, "routed": "endpoint" in request.scope, "body": await request.body(),
                         "key": request.query_params.get("key")})
            return JSONResponse({"ok": True})

        @app.get("/healthz")
        async def healthz(self) -> dict[str, str]:
            return {"status": "ok"}

    serve.ingress(app)(Toy)
    app.add_middleware(_MountRootAsSlash)
    chosen = Toy()
    chosen.name = "chosen replica"
    # The replica comes from the `self` dependency serve.ingress gave the methods: answer as `chosen`.
    for route, _ in _walk_routes(app.router, ()):
        self_param = inspect.signature(route.endpoint).parameters.get("self") if hasattr(route, "endpoint") else None
        if self_param is not None:
            app.dependency_overrides[self_param.default.dependency] = lambda: chosen
    return app, seen


async def _call(app: FastAPI, method: str, path: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, root_path=ROOT)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.request(method, path, **kwargs)


def test_post_to_the_mount_root_reaches_the_replica_without_routing() -> None:
    app, seen = _toy_app()
    assert _events_route(app) is not None
    for path in (ROOT, ROOT + "/", ROOT + "?key=pk_1"):
        response = asyncio.run(_call(app, "POST", path, content=b'{"a": 1}'))
        assert response.status_code == 200 and response.json() == {"ok": True}
    assert [s["routed"] for s in seen] == [False, False, False]
    assert {s["replica"] for s in seen} == {"chosen replica"}  # the app's dependency override applied
    assert seen[0]["body"] == b'{"a": 1}' and seen[2]["key"] == "pk_1"
    # Every other request takes the ordinary way.
    assert asyncio.run(_call(app, "GET", ROOT + "/healthz")).json() == {"status": "ok"}


def test_a_route_with_other_dependencies_keeps_the_ordinary_way() -> None:
    checked: list[bool] = []

    def check() -> None:
        checked.append(True)

    app, seen = _toy_app(dependencies=[Depends(check)])
    assert _events_route(app) is None
    assert asyncio.run(_call(app, "POST", ROOT, content=b"{}")).status_code == 200
    assert checked == [True] and seen[0]["routed"] is True


def test_the_collector_app_has_its_direct_route() -> None:
    from serving.collector.app import Collector

    app = inspect.getclosurevars(Collector.func_or_class.__init__).nonlocals["frozen_app_or_func"]  # what Serve ships
    route = _events_route(app)
    assert route is not None and route.endpoint.__name__ == "post_events"
