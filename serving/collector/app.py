"""The event collector: `POST /v1/events` on Ray Serve, answering only after Kafka acknowledged.

Deployed from a Serve config file (``deploy/local/serve.yaml`` locally, the RayService manifest on a
cluster) through :func:`build_app`, whose ``args`` may override any part of the streamrec settings.
"""


import inspect
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pydantic_core
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from ray import serve
from ray.serve import metrics

from features.events import SCHEMA_VERSION, event_json_schema
from serving import replica_loopback
from serving.auth import FRONTEND_KEY_SCHEME, SCHEME_OF_ROLE, SECURITY_SCHEMES, AuthRejected, Role, gate_from_settings, openapi_security
from serving.collector.ingest import (
    BodyRejected,
    IngestResult,
    body_limits,
    dead_letter,
    decode_body,
    validate_elements,
)
from serving.collector.publisher import BrokerUnavailable, EventPublisher, OutgoingRecord, event_record
from serving.collector.schemas import (
    EVENTS_BODY,
    EVENTS_RESPONSES,
    EventSchemaDocument,
    Health,
    IngestResponse,
    JavaScriptFile,
    component_schemas,
)
from serving.counter_buffer import BufferedCounter
from serving.errors import error_response as _error
from serving.frontend import TRACKER_JS, FrontendCors
from serving.request_body import add_openapi_components, decode_content_encoding, may_hold_surrogates, read_body
from streamrec.runtime.config import Settings, get_settings


replica_loopback.install()  # before Ray starts this replica's gRPC server (serving/replica_loopback.py)

api = FastAPI(
    title="streamrec collector",
    version=f"v{SCHEMA_VERSION}",
    description="Clickstream events from the web frontend into Kafka. Events follow the schema at /v1/events/schema.",
    openapi_tags=[
        {"name": "events", "description": "Sending events, and their contract."},
        {"name": "frontend", "description": "What the browser loads."},
        {"name": "health", "description": "Liveness, without a credential."},
    ],
    generate_unique_id_function=lambda route: route.name,  # operationIds: the handlers' names
)
# Before serve.ingress copies the app: the body schemas and the credentials' security schemes.
add_openapi_components(
    api, component_schemas, {name: SECURITY_SCHEMES[name] for name in (SCHEME_OF_ROLE[Role.FRONTEND], FRONTEND_KEY_SCHEME)}
)


class _MountRootAsSlash:
    """Serve mounts this app at route_prefix /v1/events, so `POST /v1/events` reaches it as an
    empty sub-path, which Starlette would answer with a 307 redirect to /v1/events/. Frontends
    post to the bare URL: treat it as "/" (pure ASGI, so the request body still streams).

    `POST /v1/events`, the one hot route, is then handed straight to its handler on the replica
    (:func:`_events_route`): Starlette's routing and FastAPI's request handling took ~0.13 ms of
    the ~0.84 ms of replica CPU a single event cost (BENCHMARKS.md), and this handler takes the raw
    Request and returns a Response, so they add nothing to it. The route stays declared on the app
    (the OpenAPI document, and the path taken if the handler cannot be found).
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        root = scope.get("root_path", "")
        if scope["type"] == "http" and root and scope["path"] in (root, root.rstrip("/"), root.rstrip("/") + "/"):
            route = _events_route(scope.get("app")) if scope["method"] == "POST" else None
            if route is not None:
                await route.serve(scope, receive, send)
                return
            scope = {**scope, "path": root.rstrip("/") + "/", "raw_path": (root.rstrip("/") + "/").encode()}
        await self.app(scope, receive, send)


@dataclass(frozen=True)
class _DirectRoute:
    """A class-based route's handler and the dependency that gives its replica object (``self``)."""

    app: FastAPI
    endpoint: Callable[..., Awaitable[Response]]
    replica: Callable[[], Any]

    async def serve(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # The app's dependency overrides apply, as FastAPI would apply them (tests answer as a chosen object).
        instance = self.app.dependency_overrides.get(self.replica, self.replica)()
        if inspect.isawaitable(instance):
            instance = await instance
        response = await self.endpoint(instance, Request(scope, receive))
        await response(scope, receive, send)


_DIRECT_ROUTES: "weakref.WeakKeyDictionary[Any, _DirectRoute | None]" = weakref.WeakKeyDictionary()


def _events_route(app: Any) -> _DirectRoute | None:
    """`POST /` of this (Serve-ingressed) app as a direct route, found once per app; None where the
    app has no such class-based route, or where FastAPI would resolve anything besides the replica
    and the Request for it (dependencies of the app, a router or the route; other parameters):
    then the request takes the ordinary way."""
    if app is None:
        return None
    try:
        return _DIRECT_ROUTES[app]
    except KeyError:
        pass
    found = None
    for route, inherited in _walk_routes(getattr(app, "router", None), ()):
        if isinstance(route, APIRoute) and route.path == "/" and "POST" in route.methods:
            # serve.ingress gives the method a keyword `self` whose default is Depends(the replica).
            params = inspect.signature(route.endpoint).parameters
            replica = getattr(getattr(params.get("self"), "default", None), "dependency", None)
            takes_request_only = list(params) == ["self", "request"] and params["request"].annotation in (Request, "Request")
            if replica is not None and takes_request_only and not inherited and not route.dependencies:
                found = _DirectRoute(app, route.endpoint, replica)
            break
    _DIRECT_ROUTES[app] = found
    return found


def _walk_routes(router: Any, inherited: tuple[Any, ...]) -> Iterator[tuple[Any, tuple[Any, ...]]]:
    """Every route under ``router`` with the dependencies its routers add to it."""
    inherited = (*inherited, *getattr(router, "dependencies", ()))
    for route in getattr(router, "routes", ()):
        yield route, inherited
        if hasattr(route, "original_router"):  # include_router's node (FastAPI >= 0.137)
            yield from _walk_routes(route.original_router, (*inherited, *getattr(route, "dependencies", ())))


api.add_middleware(_MountRootAsSlash)
api.add_middleware(FrontendCors)  # outermost: a preflight is answered before any routing


class CollectorArgs(BaseModel):
    """`args:` of the Serve config. `settings` overrides the streamrec settings (env and file)."""

    settings: dict[str, Any] = Field(default_factory=dict)



def _result_status(result: IngestResult) -> int:
    if not result.rejected:
        return 200
    if not result.accepted:
        return 422
    return 207


def _response_body(result: IngestResult) -> dict[str, Any]:
    outcomes: list[dict[str, Any]] = [
        {"index": a.index, "status": "accepted", "event_id": a.event_id} for a in result.accepted
    ]
    outcomes += [
        {"index": r.index, "status": "rejected", "event_id": r.event_id, "reason": r.reason, "detail": r.detail}
        for r in result.rejected
    ]
    outcomes.sort(key=lambda o: o["index"])
    return {"accepted": len(result.accepted), "rejected": len(result.rejected), "results": outcomes}


class _IngestJSONResponse(JSONResponse):
    """Rendered by pydantic-core (Rust) rather than ``json.dumps``: a 500-event batch's results cost
    ~1.5 us an event that way, ~0.4 us this way. The body holds ints and strings only."""

    def render(self, content: Any) -> bytes:
        return pydantic_core.to_json(content)


def _frontend_credential(request: Request) -> str:
    """The Authorization header, else the ``key`` query parameter as a bearer credential:
    ``navigator.sendBeacon`` (the tracker's flush when a page is hidden) cannot set headers. Only
    the frontend role is accepted here, so a key in a URL can never be more than the publishable one."""
    header = request.headers.get("authorization", "")
    if header:
        return header
    key = request.query_params.get("key", "")
    return f"Bearer {key}" if key else ""


@serve.deployment(name="Collector")
@serve.ingress(api)
class Collector:
    def __init__(self, args: CollectorArgs | None = None) -> None:
        overrides = (args or CollectorArgs()).settings
        self._settings: Settings = Settings(**overrides) if overrides else get_settings()
        self.frontend = self._settings.frontend  # read by FrontendCors
        self._limits = self._settings.collector.limits
        self._body_limits = body_limits(self._limits)
        self._topics = self._settings.kafka.topics
        self._gate = gate_from_settings(self._settings)  # the recommender's check: one for both apps
        self._publisher = EventPublisher(self._settings.kafka)
        # Summed in the replica, recorded once a second (and at each health check): one per request.
        self._accepted = BufferedCounter(metrics.Counter(
            "streamrec_collector_events_accepted", description="Events acknowledged by Kafka."
        ))
        self._rejected = BufferedCounter(metrics.Counter(
            "streamrec_collector_events_rejected",
            description="Events or bodies sent to the dead-letter topic, by reason.",
            tag_keys=("reason",),
        ))
        self._unavailable = metrics.Counter(
            "streamrec_collector_broker_unavailable", description="Requests answered 503 because Kafka did not ack."
        )
        self._produce_seconds = metrics.Histogram(
            "streamrec_collector_produce_latency_seconds",
            description="Time from send to the broker's acknowledgement of a request's records (seconds).",
            boundaries=[0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0],
        )

    async def _publish(self, records: list[OutgoingRecord]) -> float:
        """Publish and return the time until the broker acknowledged, in milliseconds."""
        started = time.perf_counter()
        await self._publisher.publish(records)
        elapsed_s = time.perf_counter() - started
        self._produce_seconds.observe(elapsed_s)
        return elapsed_s * 1000

    def _dlq(self, key: str | None, value: bytes) -> OutgoingRecord:
        return OutgoingRecord(self._topics.dlq, key.encode() if key else None, value)

    async def _reject_body(self, exc: BodyRejected, raw: bytes, size: int, now: datetime) -> JSONResponse:
        record = dead_letter(exc.reason, exc.detail, raw, now, self._limits, original_size=size)
        try:
            await self._publish([self._dlq(None, record)])
        except BrokerUnavailable as unavailable:
            return self._broker_down(unavailable)
        self._rejected.inc(tags={"reason": exc.reason})
        return _error(exc.status, exc.reason, exc.detail, exc.headers)

    def _broker_down(self, exc: BrokerUnavailable) -> JSONResponse:
        self._unavailable.inc()
        if exc.maybe_written:
            detail = (
                f"events were NOT accepted: {exc}. Some of them MAY have been written all the same: retry "
                "the same request with the same event_ids; that is safe (idempotent), as every reader of "
                "the events de-duplicates them by event_id."
            )
        else:
            detail = f"events were NOT accepted and none was written: {exc}. Retry the same request."
        return _error(
            503, "broker_unavailable", detail, headers={"Retry-After": "1"},
            may_have_been_written=exc.maybe_written, retry_with_same_event_ids=True,
        )

    @api.post(
        "/", summary="Send one event, a JSON array of events, or NDJSON", tags=["events"],
        response_model=IngestResponse, responses=EVENTS_RESPONSES,
        # The body is read raw (bounds, strict JSON, NDJSON, text/plain): declared, not parsed, here.
        openapi_extra={**EVENTS_BODY, "security": openapi_security(Role.FRONTEND, query_key=True)},
    )
    async def post_events(self, request: Request) -> JSONResponse:
        try:
            self._gate.check(_frontend_credential(request), (Role.FRONTEND,))
        except AuthRejected as exc:
            return _error(exc.status, exc.reason, exc.detail, exc.headers)
        started = time.perf_counter()
        now = datetime.now(timezone.utc)
        try:
            raw = await read_body(request, self._body_limits)
        except BodyRejected as exc:
            declared = request.headers.get("content-length", "")
            size = int(declared) if declared.isdigit() else len(exc.partial_body)
            return await self._reject_body(exc, exc.partial_body, size, now)
        try:
            # Frontends may gzip a batch: inflated up to max_body_bytes (a gzip bomb stops there).
            body = decode_content_encoding(raw, request.headers.get("content-encoding", ""), self._limits.max_body_bytes)
        except BodyRejected as exc:
            return await self._reject_body(exc, raw, len(raw), now)
        try:
            elements, is_batch = decode_body(body, request.headers.get("content-type", ""), self._limits)
        except BodyRejected as exc:
            return await self._reject_body(exc, body, len(body), now)
        result = validate_elements(elements, is_batch, self._limits, now, surrogates_possible=may_hold_surrogates(body))
        records = [event_record(self._topics.events, a.event, a.wire) for a in result.accepted]
        records += [
            self._dlq(
                r.user_id,
                dead_letter(r.reason, r.detail, r.raw, now, self._limits, errors=r.errors, index=r.index, event_id=r.event_id),
            )
            for r in result.rejected
        ]
        try:
            produce_ms = await self._publish(records)
        except BrokerUnavailable as exc:
            return self._broker_down(exc)
        if result.accepted:
            self._accepted.inc(len(result.accepted))
        for r in result.rejected:
            self._rejected.inc(tags={"reason": r.reason})
        total_ms = (time.perf_counter() - started) * 1000
        # Server-Timing lets a client tell time in the collector and Kafka from time on the wire.
        timing = {"server-timing": f"produce;dur={produce_ms:.2f}, total;dur={total_ms:.2f}"}
        return _IngestJSONResponse(_response_body(result), status_code=_result_status(result), headers=timing)

    @api.get(
        "/tracker.js", summary="The browser tracker (an ES module; no credential needed to load it)", tags=["frontend"],
        response_class=JavaScriptFile, response_description="The tracker's source.",
    )
    async def tracker(self) -> FileResponse:
        return FileResponse(
            TRACKER_JS, media_type="text/javascript; charset=utf-8", headers={"cache-control": "public, max-age=300"}
        )

    @api.get(
        "/schema", summary="The JSON Schema of the event contract", tags=["events"], response_model=EventSchemaDocument,
    )
    async def schema(self) -> JSONResponse:
        return JSONResponse(event_json_schema())

    @api.get("/healthz", summary="Liveness: the replica answers", tags=["health"], response_model=Health)
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok", "service": "collector"}

    def check_health(self) -> None:
        """Serve's periodic health check: the Kafka producer this replica owns (EventPublisher.check);
        and the counters' pending sums are recorded, so that none waits longer when traffic stops."""
        self._accepted.flush()
        self._rejected.flush()
        self._publisher.check()

    def __del__(self) -> None:
        publisher = getattr(self, "_publisher", None)
        if publisher is not None:
            publisher.close()


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder named by the Serve config's `import_path`."""
    return Collector.bind(CollectorArgs.model_validate(args or {}))
