"""The published OpenAPI documents of both apps against what their handlers answer (issue 27).

Each app is served as Serve ships it to a replica (the FastAPI app ``serve.ingress`` froze, copied
as pickling copies it, its class-based routes answered by an instance of the deployment's own
class), by uvicorn in this process on a real socket, on the session's real broker: no Ray, so a
replica whose broker is gone (503), whose learner is down (503) or whose credential guessing is
throttled (429) is simply another instance. Then, table-driven:

* every case's status is documented for its operation, its body validates (``jsonschema``) against
  the schema the live ``/openapi.json`` documents for that status and media type, and the headers
  documented as required are there;
* every documented (operation, status) has a case that produces it;
* no operation lacks a summary, tags, its parameters or its body, and no answer an empty schema.
"""

from __future__ import annotations

import gzip
import inspect
import json
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jsonschema
import pytest
import referencing
import uvicorn
from fastapi.routing import APIRoute
from ray import cloudpickle  # what Serve pickles the app with
from recommender_support import recommender, recommender_args, wait_for  # noqa: F401 (fixture)
from referencing.jsonschema import DRAFT202012

from support import ADMIN, FRONTEND, READER, TEST_LIMITS, TEST_TOKEN, free_port, make_event, make_settings, settings_overrides

pytestmark = [pytest.mark.kafka]

BODY_READ_TIMEOUT_S = 1.0
UNAUTHENTICATED = {("collector", "get", "/tracker.js"), ("collector", "get", "/schema"), ("collector", "get", "/healthz"),
                   ("recommender", "get", "/healthz")}
# What each operation takes besides its credential (issue 27: none may go undocumented).
PARAMETERS = {
    ("collector", "post", "/"): {"Content-Encoding"},
    ("recommender", "get", "/v1/bundles"): {"user_id", "item_id", "session_id", "experiment", "k"},
    ("recommender", "get", "/v1/recommendations"): {"user_id", "item_id", "session_id", "k", "diversity", "min_cross_category", "exclude", "cart"},
    ("recommender", "get", "/v1/experiments/{name}"): {"name"},
    ("recommender", "delete", "/v1/admin/users/{user_id}"): {"user_id", "reason"},
    **{("recommender", "post", p): {"Content-Encoding"} for p in ("/v1/bundles", "/v1/recommendations", "/v1/feedback")},
}


# -- the apps, in process ---------------------------------------------------------------------------


def _ingress(deployment: Any) -> tuple[type, Any]:
    """The deployment's own class and a copy of the app its replicas serve (what serve.ingress froze,
    copied by pickling as Serve ships it: the test's requests leave the module's app untouched)."""
    free = inspect.getclosurevars(deployment.func_or_class.__init__).nonlocals
    return free["cls"], cloudpickle.loads(cloudpickle.dumps(free["frozen_app_or_func"]))


def _routes(router: Any) -> Iterator[Any]:
    for route in router.routes:
        yield route
        if hasattr(route, "original_router"):  # include_router's node (FastAPI >= 0.137)
            yield from _routes(route.original_router)


class _Served:
    """An app on a loopback port (uvicorn in a thread), its routes answered by the replica object
    last given to ``answer_as``."""

    def __init__(self, app: Any) -> None:
        self.app = app
        # The class-based routes' `self` is a dependency that asks Serve for the replica's object.
        self._replica = next(
            inspect.signature(r.endpoint).parameters["self"].default.dependency
            for r in _routes(app.router) if isinstance(r, APIRoute) and "self" in inspect.signature(r.endpoint).parameters
        )
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=f"uvicorn-{self.port}", daemon=True)
        self._thread.start()
        wait_for(lambda: self._server.started, timeout_s=30, what="uvicorn started")

    def answer_as(self, instance: Any) -> None:
        self.app.dependency_overrides[self._replica] = lambda: instance

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


class _Handle:
    """`handle.method.remote(...)` on an object in this process (a DeploymentHandle's calls)."""

    def __init__(self, target: Any | None) -> None:
        self._target = target  # None: a learner that is down (its replica restarting)

    def __getattr__(self, name: str) -> Any:
        target = self._target

        class _Method:
            def remote(self, *args: Any, **kwargs: Any) -> Any:
                if target is None:
                    async def down() -> Any:
                        raise RuntimeError("the learner's replica is restarting")
                    return down()
                return getattr(target, name)(*args, **kwargs)

        return _Method()


@dataclass
class Stack:
    served: dict[str, _Served]
    replicas: dict[tuple[str, str], Any]  # (app, "up" | "down" | "throttled") -> replica object
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)  # app -> its live /openapi.json


@pytest.fixture(scope="module")
def stack(kafka_broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from serving.app.api import RecommenderAPI
    from serving.app.args import RecommenderArgs
    from serving.app.learner import BanditLearner
    from serving.collector.app import Collector, CollectorArgs

    port = int(kafka_broker.settings.kafka.bootstrap_servers.rsplit(":", 1)[1])

    def settings(name: str, broker_port: int, kafka: dict[str, Any] | None = None, serving: dict[str, Any] | None = None) -> Any:
        return make_settings(
            tmp_path_factory.mktemp(name), broker_port, kafka=kafka or {},
            collector={"limits": {**TEST_LIMITS, "body_read_timeout_s": BODY_READ_TIMEOUT_S}},
            serving={"body_read_timeout_s": BODY_READ_TIMEOUT_S, **(serving or {})},
        )

    up = settings("openapi-up", port)
    # No broker listens on a free port: every produce fails within the (short) produce timeout.
    down = settings("openapi-down", free_port(), kafka={"produce_timeout_s": 1.0, "metadata_timeout_s": 0.5})
    # One failed guess and the bucket stays empty for the test's length (no request gets past the gate).
    throttled = settings("openapi-throttled", free_port(), serving={"auth_failure_burst": 1, "auth_failures_per_s": 0.001})

    collector_cls, collector_app = _ingress(Collector)
    recommender_cls, recommender_app = _ingress(RecommenderAPI)
    switch_interval = sys.getswitchinterval()  # the recommender sets the process's (its replica's own)
    learner = BanditLearner.func_or_class(RecommenderArgs.model_validate(recommender_args(up)))
    replicas = {
        ("collector", "up"): collector_cls(CollectorArgs(settings=settings_overrides(up))),
        ("collector", "down"): collector_cls(CollectorArgs(settings=settings_overrides(down))),
        ("recommender", "up"): recommender_cls(RecommenderArgs.model_validate(recommender_args(up)), _Handle(learner)),
        ("recommender", "down"): recommender_cls(RecommenderArgs.model_validate(recommender_args(down)), _Handle(None)),
        ("recommender", "throttled"): recommender_cls(RecommenderArgs.model_validate(recommender_args(throttled)), _Handle(None)),
    }
    served = {"collector": _Served(collector_app), "recommender": _Served(recommender_app)}
    built = Stack(served, replicas)
    try:
        for name, s in served.items():
            s.answer_as(replicas[(name, "up")])
            with httpx.Client(base_url=f"http://127.0.0.1:{s.port}") as c:
                built.docs[name] = c.get("/openapi.json").raise_for_status().json()  # the live document
        yield built
    finally:
        for s in served.values():
            s.close()
        for replica in replicas.values():
            replica.__del__()  # closes its producers now rather than at collection
        learner.__del__()  # stops its consumer thread
        sys.setswitchinterval(switch_interval)


# -- the cases ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One request that must get ``status`` from ``app`` at the documented ``method`` ``path``."""

    app: str
    method: str
    path: str  # as documented
    status: int
    url: str | None = None  # the concrete URL (default: path)
    kwargs: dict[str, Any] = field(default_factory=dict)  # httpx.request's
    replica: str = "up"
    slow_body: bytes | None = None  # sent a byte at a time, slower than the body-read timeout
    before: Callable[[httpx.Client], None] | None = None  # on the same replica, first

    @property
    def id(self) -> str:
        extra = f"-{self.replica}" if self.replica != "up" else ""
        return f"{self.app}-{self.method}-{self.url or self.path}-{self.status}{extra}"


def _json(body: Any, **headers: str) -> dict[str, Any]:
    return {"content": json.dumps(body).encode(), "headers": {"content-type": "application/json", **FRONTEND, **headers}}


def _throttle(client: httpx.Client) -> None:
    """A wrong admin credential: the throttled replica's guessing bucket (burst 1) is then empty."""
    client.get("/v1/learner", headers={"Authorization": "Bearer a-guess"})


def _outcomes_folded(client: httpx.Client) -> None:
    """Bundles served until the learner has folded some, so that the experiment's analysis is not null."""

    def analysed() -> Any:
        assert client.get("/v1/bundles", params={"user_id": f"openapi-{time.monotonic_ns()}"}, headers=FRONTEND).status_code == 200
        return client.get("/v1/experiments/bundles_ab", headers=READER).json()["analysis"]

    wait_for(analysed, interval_s=0.5, what="an analysis of the experiment")


def _event() -> dict[str, Any]:
    # An item of its own: the session's popularity, which other tests' cold starts expect, is left alone.
    return make_event(item_id=f"openapi-{uuid.uuid4().hex[:8]}")


NEVER_SHOWN = {"type": "click", "request_id": "r-openapi", "user_id": "openapi-user", "bundle_id": "bundle-1"}
ITEM_CLICK = {"type": "click", "request_id": "r-openapi", "user_id": "openapi-user", "item_id": f"openapi-{uuid.uuid4().hex[:8]}"}
# A small gzip body that inflates past any configured body limit.
GZIP_BOMB = {"content": gzip.compress(b" " * 2_000_000), "headers": {"content-type": "application/json",
                                                                      "content-encoding": "gzip", **FRONTEND}}
BROTLI = {"content": b'{"user_id": "u"}', "headers": {"content-type": "application/json", "content-encoding": "br", **FRONTEND}}
NOT_JSON = {"content": b"{not json", "headers": {"content-type": "application/json", **FRONTEND}}
NO_CREDENTIAL: dict[str, Any] = {"headers": {"content-type": "application/json"}, "content": b'{"user_id": "u"}'}

COLLECTOR = [
    Case("collector", "post", "/", 200, kwargs=_json(_event())),
    # sendBeacon: the key in the URL, JSON as text/plain
    Case("collector", "post", "/", 200, kwargs={"params": {"key": TEST_TOKEN}, "content": json.dumps(_event()).encode(),
                                                "headers": {"content-type": "text/plain;charset=UTF-8"}}),
    Case("collector", "post", "/", 200, kwargs={"content": "\n".join(json.dumps(_event()) for _ in range(2)).encode(),
                                                "headers": {"content-type": "application/x-ndjson", **FRONTEND}}),
    Case("collector", "post", "/", 207, kwargs=_json([_event(), {"type": "view"}])),
    Case("collector", "post", "/", 422, kwargs=_json([{"type": "view"}])),
    Case("collector", "post", "/", 422, kwargs=_json([])),  # empty_batch: an error body
    Case("collector", "post", "/", 400, kwargs={"content": b'{"a": 1, "a": 2}', "headers": {"content-type": "application/json", **FRONTEND}}),
    Case("collector", "post", "/", 401, kwargs=NO_CREDENTIAL),
    Case("collector", "post", "/", 408, slow_body=json.dumps(_event()).encode()),
    Case("collector", "post", "/", 413, kwargs=_json([{}] * (TEST_LIMITS["max_batch_events"] + 1))),
    Case("collector", "post", "/", 413, kwargs=GZIP_BOMB),
    Case("collector", "post", "/", 415, kwargs={"content": b"<event/>", "headers": {"content-type": "application/xml", **FRONTEND}}),
    Case("collector", "post", "/", 415, kwargs={**BROTLI, "content": json.dumps(_event()).encode()}),
    Case("collector", "post", "/", 503, kwargs=_json(_event()), replica="down"),
    Case("collector", "get", "/tracker.js", 200),
    Case("collector", "get", "/schema", 200),
    Case("collector", "get", "/healthz", 200),
]

RECOMMENDER = [
    # bundles
    Case("recommender", "get", "/v1/bundles", 200, kwargs={"params": {"user_id": "openapi-user", "k": 2}, "headers": FRONTEND}),
    Case("recommender", "get", "/v1/bundles", 401, kwargs={"params": {"user_id": "u"}}),
    Case("recommender", "get", "/v1/bundles", 404, kwargs={"params": {"user_id": "u", "experiment": "nope"}, "headers": FRONTEND}),
    Case("recommender", "get", "/v1/bundles", 422, kwargs={"params": {"user_id": "u", "k": "many"}, "headers": FRONTEND}),
    Case("recommender", "get", "/v1/bundles", 503, kwargs={"params": {"user_id": "u"}, "headers": FRONTEND}, replica="down"),
    Case("recommender", "post", "/v1/bundles", 200, kwargs=_json({"item_id": "item-1"})),
    Case("recommender", "post", "/v1/bundles", 400, kwargs=NOT_JSON),
    Case("recommender", "post", "/v1/bundles", 401, kwargs=NO_CREDENTIAL),
    Case("recommender", "post", "/v1/bundles", 404, kwargs=_json({"user_id": "u", "experiment": "nope"})),
    Case("recommender", "post", "/v1/bundles", 408, slow_body=b'{"user_id": "openapi-slow"}'),
    Case("recommender", "post", "/v1/bundles", 413, kwargs=GZIP_BOMB),
    Case("recommender", "post", "/v1/bundles", 415, kwargs=BROTLI),
    Case("recommender", "post", "/v1/bundles", 422, kwargs=_json({})),
    Case("recommender", "post", "/v1/bundles", 503, kwargs=_json({"user_id": "u"}), replica="down"),
    # feedback
    Case("recommender", "post", "/v1/feedback", 200, kwargs=_json(ITEM_CLICK)),
    Case("recommender", "post", "/v1/feedback", 400, kwargs=NOT_JSON),
    Case("recommender", "post", "/v1/feedback", 401, kwargs={**NO_CREDENTIAL, "content": json.dumps(ITEM_CLICK).encode()}),
    Case("recommender", "post", "/v1/feedback", 403, kwargs=_json(NEVER_SHOWN)),
    Case("recommender", "post", "/v1/feedback", 408, slow_body=json.dumps(ITEM_CLICK).encode()),
    Case("recommender", "post", "/v1/feedback", 413, kwargs=GZIP_BOMB),
    Case("recommender", "post", "/v1/feedback", 415, kwargs=BROTLI),
    Case("recommender", "post", "/v1/feedback", 422, kwargs=_json({**ITEM_CLICK, "type": "like"})),
    Case("recommender", "post", "/v1/feedback", 422, kwargs=_json({**NEVER_SHOWN, "type": "dismiss", "bundle_id": None})),
    Case("recommender", "post", "/v1/feedback", 503, kwargs=_json(ITEM_CLICK), replica="down"),
    # recommendations
    Case("recommender", "get", "/v1/recommendations", 200,
         kwargs={"params": {"user_id": "openapi-user", "k": 3, "exclude": "item-1,item-2", "cart": ["item-3"]}, "headers": FRONTEND}),
    Case("recommender", "get", "/v1/recommendations", 401, kwargs={"params": {"user_id": "u"}}),
    Case("recommender", "get", "/v1/recommendations", 422, kwargs={"params": {"user_id": "u", "colour": "red"}, "headers": FRONTEND}),
    Case("recommender", "post", "/v1/recommendations", 200, kwargs=_json({"user_id": "openapi-user", "k": 3, "cart": ["item-3"]})),
    Case("recommender", "post", "/v1/recommendations", 400, kwargs=NOT_JSON),
    Case("recommender", "post", "/v1/recommendations", 401, kwargs=NO_CREDENTIAL),
    Case("recommender", "post", "/v1/recommendations", 408, slow_body=b'{"user_id": "openapi-slow"}'),
    Case("recommender", "post", "/v1/recommendations", 413, kwargs=GZIP_BOMB),
    Case("recommender", "post", "/v1/recommendations", 415, kwargs=BROTLI),
    Case("recommender", "post", "/v1/recommendations", 422, kwargs=_json({"user_id": "u", "k": 10_000})),
    # experiments and admin
    Case("recommender", "get", "/v1/experiments", 200, kwargs={"headers": ADMIN}),
    Case("recommender", "get", "/v1/experiments", 401, kwargs={"headers": READER}),
    Case("recommender", "get", "/v1/experiments", 429, kwargs={"headers": ADMIN}, replica="throttled", before=_throttle),
    Case("recommender", "get", "/v1/experiments/{name}", 200, url="/v1/experiments/bundles_ab", kwargs={"headers": READER},
         before=_outcomes_folded),
    Case("recommender", "get", "/v1/experiments/{name}", 200, url="/v1/experiments/solo_ucb", kwargs={"headers": ADMIN}),
    Case("recommender", "get", "/v1/experiments/{name}", 401, url="/v1/experiments/bundles_ab", kwargs={"headers": FRONTEND}),
    Case("recommender", "get", "/v1/experiments/{name}", 404, url="/v1/experiments/nope", kwargs={"headers": READER}),
    Case("recommender", "get", "/v1/experiments/{name}", 429, url="/v1/experiments/bundles_ab", kwargs={"headers": READER},
         replica="throttled", before=_throttle),
    Case("recommender", "get", "/v1/experiments/{name}", 503, url="/v1/experiments/bundles_ab", kwargs={"headers": READER},
         replica="down"),
    Case("recommender", "get", "/v1/learner", 200, kwargs={"headers": ADMIN}),
    Case("recommender", "get", "/v1/learner", 401, kwargs={"headers": FRONTEND}),
    Case("recommender", "get", "/v1/learner", 429, kwargs={"headers": ADMIN}, replica="throttled", before=_throttle),
    Case("recommender", "get", "/v1/learner", 503, kwargs={"headers": ADMIN}, replica="down"),
    Case("recommender", "delete", "/v1/admin/users/{user_id}", 202, url="/v1/admin/users/openapi-gone",
         kwargs={"params": {"reason": "test"}, "headers": ADMIN}),
    Case("recommender", "delete", "/v1/admin/users/{user_id}", 401, url="/v1/admin/users/u", kwargs={"headers": READER}),
    Case("recommender", "delete", "/v1/admin/users/{user_id}", 422, url="/v1/admin/users/not%20an%20id", kwargs={"headers": ADMIN}),
    Case("recommender", "delete", "/v1/admin/users/{user_id}", 429, url="/v1/admin/users/u", kwargs={"headers": ADMIN},
         replica="throttled", before=_throttle),
    Case("recommender", "delete", "/v1/admin/users/{user_id}", 503, url="/v1/admin/users/u", kwargs={"headers": ADMIN}, replica="down"),
    Case("recommender", "get", "/healthz", 200),
]

CASES = COLLECTOR + RECOMMENDER


def _slow_post(port: int, path: str, body: bytes) -> httpx.Response:
    """POST ``body`` over a raw socket, its first bytes at once and then one every 0.25 s, until
    the server answers; the answer as an httpx.Response."""
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TEST_TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + body[:5])
        sock.settimeout(0.25)
        answer, sent = b"", 5
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if not answer and sent < len(body):
                    try:
                        sock.sendall(body[sent : sent + 1])
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # the server answered and closed meanwhile: read what it sent
                    sent += 1
                continue
            except ConnectionResetError:  # closed after a byte it did not read: the answer is in
                break
            if not chunk:  # the 408 closes the connection
                break
            answer += chunk
    head_bytes, _, content = answer.partition(b"\r\n\r\n")
    status_line, *lines = head_bytes.decode("latin-1").split("\r\n")
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines]
    return httpx.Response(int(status_line.split(" ", 2)[1]), headers=headers, content=content)


def _send(stack: Stack, case: Case) -> httpx.Response:
    served = stack.served[case.app]
    served.answer_as(stack.replicas[(case.app, case.replica)])
    with httpx.Client(base_url=f"http://127.0.0.1:{served.port}", timeout=30) as client:
        if case.before is not None:
            case.before(client)
        if case.slow_body is not None:
            return _slow_post(served.port, case.url or case.path, case.slow_body)
        return client.request(case.method.upper(), case.url or case.path, **case.kwargs)


def _validator(doc: dict[str, Any], pointer: str) -> jsonschema.Draft202012Validator:
    """A validator of the schema at ``pointer`` in the OpenAPI document, its $refs resolved there."""
    registry = referencing.Registry().with_resource("urn:openapi", DRAFT202012.create_resource(doc))
    return jsonschema.Draft202012Validator({"$ref": f"urn:openapi#{pointer}"}, registry=registry,
                                           format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_each_answer_is_documented_and_matches_its_schema(stack: Stack, case: Case) -> None:
    doc = stack.docs[case.app]
    operation = doc["paths"][case.path][case.method]
    r = _send(stack, case)
    assert r.status_code == case.status, r.text[:500]
    documented = operation["responses"].get(str(r.status_code))
    assert documented is not None, f"{case.id}: status {r.status_code} is not documented; body {r.text[:300]}"
    media_type = r.headers["content-type"].split(";")[0].strip()
    assert media_type in documented["content"], f"{case.id}: {media_type} is not documented ({list(documented['content'])})"
    body = r.json() if media_type == "application/json" else r.text
    pointer = f"/paths/{_escape(case.path)}/{case.method}/responses/{r.status_code}/content/{_escape(media_type)}/schema"
    errors = sorted(_validator(doc, pointer).iter_errors(body), key=lambda e: list(e.absolute_path))
    assert not errors, f"{case.id}: the body does not match its schema: " + "; ".join(
        f"{'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}" for e in errors[:5]
    )
    for name, header in documented.get("headers", {}).items():
        if header.get("required"):
            assert name.lower() in r.headers, f"{case.id}: the documented header {name} is missing"


def test_every_documented_status_has_a_case_that_gets_it(stack: Stack) -> None:
    documented = {(app, method, path, int(status))
                  for app, doc in stack.docs.items() for path, ops in doc["paths"].items()
                  for method, op in ops.items() for status in op["responses"]}
    driven = {(c.app, c.method, c.path, c.status) for c in CASES}
    assert documented - driven == set(), "documented but never driven"
    assert driven - documented == set(), "driven but not documented"


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_no_operation_leaves_its_inputs_or_answers_undescribed(stack: Stack) -> None:
    for app, doc in stack.docs.items():
        components = doc["components"]
        for ref in _refs(doc):
            assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in components["schemas"], (app, ref)
        # FastAPI's own 422 body: documented only where FastAPI parses, which no handler here lets it do
        assert "HTTPValidationError" not in components["schemas"], app
        for path, ops in doc["paths"].items():
            for method, op in ops.items():
                where = (app, method, path)
                assert op.get("summary") and op.get("tags") and op.get("operationId"), where
                for status, answer in op["responses"].items():
                    assert answer.get("description"), (where, status)
                    assert answer.get("content"), (where, status, "no body documented")
                    assert all(c.get("schema") not in (None, {}) for c in answer["content"].values()), (where, status, "empty schema")
                assert {p["name"] for p in op.get("parameters", [])} == PARAMETERS.get(where, set()), where
                assert all(p.get("schema") for p in op.get("parameters", [])), where
                if method in ("post", "put", "patch"):
                    body = op.get("requestBody")
                    assert body and body.get("required") and body["content"], (where, "no request body documented")
                    assert all(c.get("schema") for c in body["content"].values()), where
                if where in UNAUTHENTICATED:
                    assert not op.get("security"), where
                else:
                    assert op.get("security"), (where, "no credential documented")
                    for requirement in op["security"]:
                        assert set(requirement) <= set(components["securitySchemes"]), (where, requirement)


def test_the_collector_documents_the_frontend_key_in_the_url_and_every_body_type(stack: Stack) -> None:
    doc = stack.docs["collector"]
    op = doc["paths"]["/"]["post"]
    assert {"frontendKey": []} in op["security"] and {"frontendToken": []} in op["security"]
    assert doc["components"]["securitySchemes"]["frontendKey"] == {**doc["components"]["securitySchemes"]["frontendKey"],
                                                                   "type": "apiKey", "in": "query", "name": "key"}
    assert set(op["requestBody"]["content"]) >= {"application/json", "text/plain", "application/x-ndjson"}
    assert not any(path.startswith("/shop") for path in stack.docs["recommender"]["paths"])  # the storefront is no API


@pytest.mark.ray
def test_serve_publishes_the_same_documents(stack: Stack, collector: Any, recommender: Any) -> None:  # noqa: F811
    """Through Serve's proxy: the documents tested above are the ones published (the components are
    added before serve.ingress copies the app, and survive its pickling)."""
    for name, url in (("collector", f"{collector.url}/v1/events/openapi.json"), ("recommender", f"{recommender.url}/openapi.json")):
        published = httpx.get(url, timeout=30).raise_for_status().json()
        servers = published.pop("servers", None)  # the route prefix, where Serve mounts the app
        assert published == stack.docs[name], name
        assert servers == ([{"url": "/v1/events"}] if name == "collector" else None), (name, servers)
