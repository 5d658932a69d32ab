"""The recommender Serve application: `/v1/bundles`, `/v1/feedback`, `/v1/experiments`,
`/v1/recommendations`, `/healthz`, and `DELETE /v1/admin/users/{user_id}` (admin token).

Composition (deployments, dependencies as DeploymentHandles)::

    RecommenderAPI (FastAPI ingress: experiment router, impression + feedback producer), holding
      │   in-process, so that a request makes no handle call (each costs milliseconds of CPU):
      │   ItemRanker       (retrieval, SASRec re-ranking over the live Feast sequence, MMR,
      │                     cross-category quota)
      │   BundleCandidates (Feast / registry / popularity: user context and candidate bundles)
      │   PolicyMirror     (copies of the learner's policies, pulled every serving.policy_refresh_s;
      │                     the bandit's selection runs on them)
      └── BanditLearner (one replica: owns the policies per (experiment, variant), learns from Kafka,
                         snapshots; popularity for the ranker; both pulled and cached per replica)

Deployed through :func:`build_app` from the Serve config (``deploy/local/serve.yaml``).
"""

import asyncio
import dataclasses
import json
import logging
import math
import sys
import uuid
from datetime import datetime, timezone
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve import metrics
from ray.serve.handle import DeploymentHandle

from features.events import (
    SCHEMA_VERSION,
    DismissEvent,
    EventRejected,
    ImpressionEvent,
    ShownSlot,
    ValidationContext,
    event_to_json,
    parse_event,
)
from features.privacy import Tombstone
from serving.app.args import RecommenderArgs
from serving.app.bundle_candidates import BundleCandidates
from serving.app.decision_log import DecisionLog
from serving.app.item_ranking import ItemRanker
from serving.app.learner import BanditLearner, new_learner_state
from serving.app.policy_mirror import PolicyMirror
from serving.app.replica_sources import ReplicaSources
from serving.app.schemas import (
    BundlesQuery,
    BundlesResponse,
    ExperimentList,
    ExperimentResults,
    FeedbackAccepted,
    FeedbackBody,
    Health,
    LearnerStats,
    RecommendationsQuery,
    RecommendationsResponse,
    UserDeletionAccepted,
    component_schemas,
    error_responses,
    json_body,
    path_parameter,
    query_parameters,
)
from serving.bandit.impressions import (
    CANDIDATES_HEADER,
    CONTEXT_HEADER,
    DecisionContext,
    decision_to_impression,
    encode_candidates,
)
from serving.auth import SCHEME_OF_ROLE, SECURITY_SCHEMES, AuthRejected, Role, gate_from_settings, openapi_security
from serving.collector.ingest import dead_letter
from serving.collector.publisher import BrokerUnavailable, EventPublisher, OutgoingRecord, event_record
from serving.counter_buffer import BufferedCounter
from serving.experiments import Experiment, analyze_experiment, assign_variant
from serving.feedback_tokens import FeedbackClaim, FeedbackRejected, check_claim, signer_from_settings
from serving import replica_loopback
from serving.errors import error_response as _error
from serving.frontend import STOREFRONT_DIR, FrontendCors
from serving.request_body import BodyLimits, BodyRejected, add_openapi_components, read_json_object
from streamrec.runtime.config import ServingConfig

replica_loopback.install()  # before Ray starts this replica's gRPC server (serving/replica_loopback.py)

api = FastAPI(
    title="streamrec recommender", version="v1",
    description="Bundles chosen by contextual bandits, item recommendations, A/B experiments.",
    openapi_tags=[
        {"name": "bundles", "description": "Slates of bundles chosen by the user's variant's bandit (frontend key)."},
        {"name": "recommendations", "description": "Ranked items (frontend key)."},
        {"name": "feedback", "description": "Clicks, purchases and dismissals of what was shown (frontend key)."},
        {"name": "experiments", "description": "A/B experiments: definitions (admin), results (reader or admin)."},
        {"name": "admin", "description": "The learner's state, user deletion (admin token)."},
        {"name": "health", "description": "Liveness, without a credential."},
    ],
    generate_unique_id_function=lambda route: route.name,  # operationIds: the handlers' names
)
api.add_middleware(FrontendCors)  # browsers of the configured origins (frontend.allowed_origins)
# Before serve.ingress copies the app: the schemas of the bodies read raw, the credentials' schemes.
add_openapi_components(api, component_schemas, {SCHEME_OF_ROLE[r]: SECURITY_SCHEMES[SCHEME_OF_ROLE[r]] for r in Role})

HANDLE_TIMEOUT_S = 10.0
log = logging.getLogger("ray.serve")


class ApiError(Exception):
    def __init__(self, status: int, reason: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail, self.headers = status, reason, detail, headers


DLQ_SOURCE = "recommender"



def _validation_detail(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(body)'}: {e['msg']}"
        for e in exc.errors(include_url=False, include_input=False)[:5]
    )


async def _read_json(request: Request, serving: ServingConfig) -> Any:
    """The JSON object of a POST body, bounded as the collector bounds its bodies
    (``serving.request_body``): at most ``serving.max_body_bytes``, received within
    ``serving.body_read_timeout_s`` (else 408), gzip inflated up to the limit (other codings 415),
    nested at most ``serving.max_json_depth`` deep (checked before parsing; else 400), no lone
    surrogate in any string (400)."""
    limits = BodyLimits(serving.max_body_bytes, serving.body_read_timeout_s, serving.max_json_depth)
    try:
        return await read_json_object(request, limits)
    except BodyRejected as exc:
        raise ApiError(exc.status, exc.reason, exc.detail, exc.headers) from None


def _query_dict(request: Request, list_fields: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in request.query_params.keys():
        values = request.query_params.getlist(key)
        if key in list_fields:
            out[key] = [v for raw in values for v in raw.split(",") if v]
        elif len(values) > 1:
            raise ApiError(422, "repeated_parameter", f"query parameter {key!r} is given {len(values)} times")
        else:
            out[key] = values[0]
    return out


def _parse(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", _validation_detail(exc)) from None


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _experiment_definition(e: Experiment) -> dict[str, Any]:
    # Never the salt: with it a user could pick their own variant by choosing ids.
    d = e.model_dump(mode="json", exclude={"salt"})
    d["control"] = e.control_name
    d["split"] = {v.name: v.share for v in e.variants}
    return d


def _item_list_impression(
    result: dict[str, Any], *, request_id: str, user_id: str, session_id: str | None, now: datetime
) -> ImpressionEvent:
    """The ``impression`` event of a served item list: one slot per item at its position.

    The ranking is deterministic given the request, so every slot's propensity is 1.0.
    """
    slots = [
        ShownSlot(id=item["item_id"], position=pos, propensity=1.0,
                  score=float(item["score"]) if math.isfinite(item["score"]) else None)
        for pos, item in enumerate(result["items"])
    ]
    return ImpressionEvent(
        schema_version=SCHEMA_VERSION, event_id=uuid.uuid4(), type="impression", user_id=user_id,
        session_id=session_id or "unknown", ts=now, received_at=now, request_id=request_id,
        surface="recommendations", slots=slots, policy=str(result.get("policy") or result["source"])[:64],
    )


async def _call(handle_call: Any, what: str) -> Any:
    try:
        return await asyncio.wait_for(handle_call, timeout=HANDLE_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise ApiError(503, f"{what}_unavailable", f"the {what} did not answer in {HANDLE_TIMEOUT_S:.0f}s; retry", {"Retry-After": "1"}) from None
    except ApiError:
        raise
    except Exception as exc:  # noqa: BLE001 - a replica restarting: tell the client to retry
        raise ApiError(503, f"{what}_unavailable", f"the {what} is unavailable ({type(exc).__name__}); retry", {"Retry-After": "1"}) from None


def _storefront_off() -> JSONResponse:
    return _error(404, "not_found", "the storefront is off (frontend.storefront)")


# Two replicas unless the Serve config says otherwise: a replica's event loop runs on one core
# (deploy/local/serve.yaml says why).
@serve.deployment(name="RecommenderAPI", num_replicas=2, max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class RecommenderAPI:
    def __init__(self, args: RecommenderArgs, learner: DeploymentHandle) -> None:
        self._args = args
        self._settings = args.resolved_settings()
        self._s = self._settings.serving
        self.frontend = self._settings.frontend  # read by FrontendCors
        self._storefront = StaticFiles(directory=STOREFRONT_DIR) if self._settings.storefront_served else None
        # The replica's process is this deployment's own: its event loop shares the GIL with
        # kafka-python's I/O thread, which Python's default 5 ms switch interval let hold it while
        # requests waited (serving.gil_switch_interval_s).
        sys.setswitchinterval(self._s.gil_switch_interval_s)
        self._experiments: dict[str, Experiment] = {e.name: e for e in args.experiments}
        self._default_experiment = args.default_experiment
        self._diversity = self._s.diversity
        self._min_cross = self._s.min_cross_category
        self._learner = learner
        sources = ReplicaSources.create(self._settings, learner)
        self._ranker = ItemRanker(sources)
        self._candidates = BundleCandidates(sources, args.catalogue)
        self._gate = gate_from_settings(self._settings)
        self._signer = signer_from_settings(self._settings)
        self._policies = PolicyMirror(new_learner_state(args, self._settings), learner, self._s.policy_refresh_s)
        # No linger: records go one at a time, and a bundle response may wait for its impression's ack.
        self._publisher = EventPublisher(self._settings.kafka, client_id="streamrec-recommender", linger_ms=0)
        self._decisions = DecisionLog(
            self._publisher, self._s.impression_ack_grace_s,
            count=lambda what, n: self._errors.inc(n, tags={"reason": f"impression_{what}"}),
        )
        self._background: set[asyncio.Task[None]] = set()
        # The per-request counters are summed in the replica, recorded once a second and at each
        # health check (serving/counter_buffer.py); errors and refusals are recorded at once.
        self._served = BufferedCounter(metrics.Counter(
            "streamrec_bundles_served", description="Bundle slates served (and logged as impressions), per variant.",
            tag_keys=("experiment", "variant"),
        ))
        self._feedback = BufferedCounter(metrics.Counter(
            "streamrec_feedback_received", description="Feedback accepted by POST /v1/feedback, by type.", tag_keys=("type",),
        ))
        self._recommended = BufferedCounter(metrics.Counter(
            "streamrec_recommendations_served", description="Item recommendation lists served, by source.", tag_keys=("source",),
        ))
        self._errors = metrics.Counter(
            "streamrec_recommender_errors", description="Requests answered with an error, by reason.", tag_keys=("reason",),
        )
        self._feedback_rejected = metrics.Counter(
            "streamrec_feedback_rejected", description="Feedback refused: forged, mismatched, not shown, expired token.",
            tag_keys=("reason",),
        )

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Live knobs: ``diversity``, ``min_cross_category``, ``shares: {experiment: {variant: share}}``."""
        unknown = set(user_config) - {"diversity", "min_cross_category", "shares"}
        if unknown:
            raise ValueError(f"unknown user_config keys {sorted(unknown)}")
        if "diversity" in user_config:
            value = float(user_config["diversity"])
            if not 0.0 <= value <= 1.0:
                raise ValueError("diversity must be in [0, 1]")
            self._diversity = value
        if "min_cross_category" in user_config:
            self._min_cross = int(user_config["min_cross_category"])
        experiments = dict(self._experiments)
        for name, shares in (user_config.get("shares") or {}).items():
            if name not in experiments:
                raise ValueError(f"shares for unknown experiment {name!r}")
            d = experiments[name].model_dump()
            d["variants"] = [{**v, "share": float(shares.get(v["name"], v["share"]))} for v in d["variants"]]
            experiments[name] = Experiment.model_validate(d)  # shares must still sum to 1
        self._experiments = experiments

    # -- helpers ----------------------------------------------------------------------------

    def _fail(self, exc: ApiError) -> JSONResponse:
        self._errors.inc(tags={"reason": exc.reason})
        return _error(exc.status, exc.reason, exc.detail, exc.headers)

    def _authorize(self, request: Request, *roles: Role) -> Role:
        try:
            return self._gate.check(request.headers.get("authorization", ""), roles)
        except AuthRejected as exc:
            raise ApiError(exc.status, exc.reason, exc.detail, exc.headers) from None

    def _experiment(self, name: str | None) -> Experiment:
        name = name or self._default_experiment
        experiment = self._experiments.get(name)
        if experiment is None:
            raise ApiError(404, "unknown_experiment", f"no experiment {name!r}; known: {sorted(self._experiments)}")
        return experiment

    async def _publish(self, records: list[OutgoingRecord], decision: bool = False) -> None:
        """Acknowledged by Kafka on return; a ``decision``'s records may instead be handed over and
        acknowledged in the background (``DecisionLog``)."""
        try:
            await (self._decisions.log(records) if decision else self._publisher.publish(records))
        except BrokerUnavailable as exc:
            # The collector's wording: a retry with the same event_ids is safe either way (de-duplicated downstream).
            said = "it MAY have been written" if exc.maybe_written else "nothing was written"
            raise ApiError(503, "broker_unavailable", f"{said}: {exc}. Retry (with the same event_id where there is one).",
                           {"Retry-After": "1"}) from None

    # -- the logic (callable through a handle too, e.g. in local testing mode) ---------------

    async def bundles(self, query: BundlesQuery) -> dict[str, Any]:
        """Choose a slate of bundles for a user / seed item with the user's variant's bandit,
        log it as an impression (acks=all, acknowledged in the background while the broker keeps
        up: ``DecisionLog``), and return it."""
        if query.user_id is None and query.item_id is None:
            raise ApiError(422, "invalid_request", "give user_id and/or item_id")
        k = query.k or self._s.default_k
        if k > self._s.max_k:
            raise ApiError(422, "k_too_large", f"k={k} is over the limit {self._s.max_k}")
        experiment = self._experiment(query.experiment)
        request_id = uuid.uuid4().hex
        user_id = query.user_id or f"anon-{request_id[:16]}"
        variant = assign_variant(experiment, user_id)
        cands = await self._candidates.bundle_candidates(query.user_id, query.item_id)
        response: dict[str, Any] = {
            "request_id": request_id, "experiment": experiment.name, "variant": variant,
            "policy": experiment.variant(variant).policy, "user_id": user_id, "bundles": [],
        }
        if not cands.bundles:
            response["note"] = "no candidate bundles (empty catalogue, no model, no events yet)"
            return response
        ids = cands.ids
        decision = await self._policies.select(experiment.name, variant, cands.context, ids, cands.features, k)
        now = datetime.now(timezone.utc)
        shown = [ids[i] for i in decision.indices]
        token = self._signer.issue(FeedbackClaim(
            request_id, user_id, experiment.name, variant, tuple(shown), int(now.timestamp() * 1000)
        ))
        impression = decision_to_impression(
            decision, user_id=user_id, session_id=query.session_id or "unknown", request_id=request_id, ts=now,
            experiment=experiment.name, variant=variant,
        ).model_copy(update={"received_at": now})
        context = DecisionContext(
            experiment.name, variant,
            # The decision's features (user; each shown bundle's arm features, ARM_FEATURES order):
            # the learner and OPE replay exactly what was decided.
            context=cands.context,
            shown_arms={ids[i]: cands.features[i] for i in decision.indices},
            # The shown bundles' items: a purchase's revenue counts only lines of the bought bundle.
            shown_items={ids[i]: cands.bundles[i].items for i in decision.indices},
        )
        decision_headers = (
            (CONTEXT_HEADER, context.encode()),
            # For `streamrec ope`, and the items for analyses that score every candidate.
            (CANDIDATES_HEADER, encode_candidates(ids, cands.features, [b.items for b in cands.bundles])),
        )
        await self._publish(
            [event_record(self._settings.kafka.topics.events, impression, event_to_json(impression), decision_headers)],
            decision=True,
        )
        self._served.inc(tags={"experiment": experiment.name, "variant": variant})
        response["policy"] = decision.policy
        response["bundles"] = [
            {
                "bundle_id": ids[i], "position": pos, "items": list(cands.bundles[i].items), "score": decision.scores[pos],
                "propensity": decision.propensities[pos], "reason": cands.bundles[i].reason, "source": cands.bundles[i].source,
            }
            for pos, i in enumerate(decision.indices)
        ]
        response["context_source"] = "feast" if cands.feast_user else "cold_start"
        # Sent back with a click or purchase of this slate (event field feedback_token).
        response["feedback_token"] = token
        return response

    async def _refuse_feedback(self, body: FeedbackBody, raw: bytes, exc: FeedbackRejected, now: datetime) -> ApiError:
        """Dead-letter refused feedback with its reason, count it, and say why (403)."""
        record = dead_letter(exc.reason, exc.detail, raw, now, self._settings.collector.limits,
                             event_id=str(body.event_id) if body.event_id else None, source=DLQ_SOURCE)
        await self._publish([OutgoingRecord(self._settings.kafka.topics.dlq, body.user_id.encode(), record)])
        self._feedback_rejected.inc(tags={"reason": exc.reason})
        return ApiError(403, exc.reason, exc.detail)

    def _check_feedback(self, body: FeedbackBody, now: datetime) -> None:
        """Bundle feedback must carry the slate's token, for this request, user and a shown bundle,
        within the attribution window. Whether it is the first of its kind is the learner's to
        judge (it alone sees every replica's feedback): it skips replays when it folds the log."""
        if body.bundle_id is None:
            return  # an item click (organic, never credited); a dismiss or purchase without one is a 422 below
        claim = self._signer.verify(body.feedback_token)
        check_claim(claim, request_id=body.request_id, user_id=body.user_id, bundle_id=body.bundle_id,
                    at_ms=int(now.timestamp() * 1000), window_s=self._s.attribution_window_s)

    async def feedback(self, body: FeedbackBody, raw: bytes = b"") -> dict[str, Any]:
        """Produce feedback as contract events (click, bundle_purchase) or a dismiss record,
        once its feedback token verifies (``_check_feedback``); refused feedback is dead-lettered."""
        now = datetime.now(timezone.utc)
        event_id = body.event_id or uuid.uuid4()
        common: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "event_id": str(event_id), "user_id": body.user_id,
            "session_id": body.session_id or "unknown", "ts": (body.ts or now).isoformat(), "request_id": body.request_id,
            "feedback_token": body.feedback_token,
        }
        limits = self._settings.collector.limits
        vctx = ValidationContext(
            now=now, max_id_chars=limits.max_id_chars, max_text_chars=limits.max_text_chars, max_list_items=limits.max_list_items
        )
        if body.type == "dismiss":
            if body.bundle_id is None:
                raise ApiError(422, "missing_field", "a dismiss names the bundle_id")
            dismiss = DismissEvent(
                event_id=event_id, user_id=body.user_id, session_id=common["session_id"], ts=body.ts or now,
                received_at=now, request_id=body.request_id, bundle_id=body.bundle_id, feedback_token=body.feedback_token or "",
            )
            # Not a contract event (the feedback topic's own record): its headers are written here.
            record = OutgoingRecord(
                self._settings.kafka.topics.feedback, body.user_id.encode(), dismiss.model_dump_json().encode(),
                (("schema_version", str(SCHEMA_VERSION).encode()), ("type", b"dismiss")),
            )
        else:
            payload = dict(common)
            if body.type == "click":
                payload.update(type="click", item_id=body.item_id, bundle_id=body.bundle_id, position=body.position)
            else:
                if body.items is None:
                    raise ApiError(422, "missing_field", "a purchase lists the bought items (items)")
                payload.update(
                    type="bundle_purchase", bundle_id=body.bundle_id, order_id=body.order_id, currency=body.currency,
                    items=[line.model_dump(exclude_none=True) for line in body.items],
                )
            payload = {k: v for k, v in payload.items() if v is not None}
            try:
                event = parse_event(payload, vctx).model_copy(update={"received_at": now})
            except EventRejected as exc:
                raise ApiError(422, exc.reason, exc.detail) from None
            record = event_record(self._settings.kafka.topics.events, event, event_to_json(event))
        try:  # after the shape checks: a malformed body is a 422, an unverified one a 403
            self._check_feedback(body, now)
        except FeedbackRejected as exc:
            raise await self._refuse_feedback(body, raw, exc, now) from None
        kind = "bundle_purchase" if body.type == "purchase" else body.type
        await self._publish([record])
        self._feedback.inc(tags={"type": kind})
        return {"accepted": True, "event_id": str(event_id), "type": kind, "topic": record.topic}

    async def recommendations(self, query: RecommendationsQuery) -> dict[str, Any]:
        """Rank items for a user / current item / cart, and log the served list as an impression
        in the background (clicks name its ``request_id``)."""
        if query.k > self._s.max_k:
            raise ApiError(422, "k_too_large", f"k={query.k} is over the limit {self._s.max_k}")
        for name in ("exclude", "cart"):
            if len(getattr(query, name)) > self._s.max_candidates:
                raise ApiError(422, "list_too_long", f"{name} has {len(getattr(query, name))} ids; the limit is {self._s.max_candidates}")
        diversity = self._diversity if query.diversity is None else query.diversity
        min_cross = self._min_cross if query.min_cross_category is None else query.min_cross_category
        result = await self._ranker.recommend(
            query.user_id, query.item_id, query.k, diversity, min_cross, query.exclude, cart=query.cart
        )
        self._recommended.inc(tags={"source": result["source"].split("@")[0]})
        request_id = uuid.uuid4().hex
        if result["items"]:
            self._log_impression_later(result, request_id, query)
        return {"request_id": request_id, "user_id": query.user_id, "diversity": diversity, "min_cross_category": min_cross, **result}

    def _log_impression_later(self, result: dict[str, Any], request_id: str, query: RecommendationsQuery) -> None:
        """Publish the list's impression without making the response wait for the broker's ack."""
        user_id = query.user_id or f"anon-{request_id[:16]}"
        try:
            impression = _item_list_impression(
                result, request_id=request_id, user_id=user_id, session_id=query.session_id, now=datetime.now(timezone.utc)
            )
        except ValidationError as exc:  # e.g. a registered id outside the event contract
            self._errors.inc(tags={"reason": "impression_invalid"})
            log.warning("impression of %s not logged: %s", request_id, _validation_detail(exc))
            return
        record = event_record(self._settings.kafka.topics.events, impression, event_to_json(impression))
        task = asyncio.get_running_loop().create_task(self._publish_impression(record, request_id))
        self._background.add(task)  # a strong reference until done (the loop keeps only weak ones)
        task.add_done_callback(self._background.discard)

    async def _publish_impression(self, record: OutgoingRecord, request_id: str) -> None:
        try:
            await self._publisher.publish([record])
        except BrokerUnavailable as exc:
            self._errors.inc(tags={"reason": "impression_not_logged"})
            log.warning("impression of %s not logged: %s", request_id, exc)

    async def experiment_report(self, name: str) -> dict[str, Any]:
        experiment = self._experiment(name)
        outcomes = await _call(self._learner.experiment_outcomes.remote(name), "learner")
        stats = await _call(self._learner.stats.remote(), "learner")
        live = {
            v.name: {**stats["variants"].get(f"{name} {v.name}", {}),
                     # which named signal the variant learned to trust (linear policies with shared weights)
                     "feature_weights": stats["feature_weights"].get(f"{name} {v.name}")}
            for v in experiment.variants
        }
        report = analyze_experiment(experiment, outcomes) if outcomes else None
        return {
            "experiment": _experiment_definition(experiment), "live": live,
            "analysis": _jsonable(report) if report is not None else None,
            "analysis_note": None if report is not None else "no requests yet",
        }

    # -- HTTP -------------------------------------------------------------------------------

    @api.get(
        "/v1/bundles", summary="Bundles for a user and/or seed item (query parameters)", tags=["bundles"],
        response_model=BundlesResponse,
        responses=error_responses(401, 404, 422, 503, described={
            422: "invalid_request (a parameter, an unknown parameter, neither user_id nor item_id), k_too_large, repeated_parameter.",
            503: "broker_unavailable: the slate's impression was not acknowledged by Kafka in time; retry.",
        }),
        # The query string is parsed by the handler (BundlesQuery): declared here, not parsed by FastAPI.
        openapi_extra={"parameters": query_parameters(BundlesQuery), "security": openapi_security(Role.FRONTEND)},
    )
    async def get_bundles(self, request: Request) -> JSONResponse:
        try:
            self._authorize(request, Role.FRONTEND)
            return JSONResponse(await self.bundles(_parse(BundlesQuery, _query_dict(request))))
        except ApiError as exc:
            return self._fail(exc)

    @api.post(
        "/v1/bundles", summary="Bundles for a user and/or seed item (JSON body)", tags=["bundles"],
        response_model=BundlesResponse,
        responses=error_responses(400, 401, 404, 408, 413, 415, 422, 503, described={
            422: "invalid_request (a field, an unknown field, neither user_id nor item_id), k_too_large.",
            503: "broker_unavailable: the slate's impression was not acknowledged by Kafka in time; retry.",
        }),
        openapi_extra={**json_body(BundlesQuery, "As the query parameters of GET /v1/bundles."),
                       "security": openapi_security(Role.FRONTEND)},
    )
    async def post_bundles(self, request: Request) -> JSONResponse:
        try:
            self._authorize(request, Role.FRONTEND)
            return JSONResponse(await self.bundles(_parse(BundlesQuery, await _read_json(request, self._s))))
        except ApiError as exc:
            return self._fail(exc)

    @api.post(
        "/v1/feedback", summary="Click / purchase / dismiss of a shown bundle, by request_id", tags=["feedback"],
        response_model=FeedbackAccepted,
        responses=error_responses(400, 401, 403, 408, 413, 415, 422, 503, described={
            422: "invalid_request (a field, an unknown field), missing_field (a dismiss without bundle_id, a purchase "
                 "without items), or an event-contract reason.",
            503: "broker_unavailable: Kafka did not acknowledge in time; retry with the same event_id.",
        }),
        openapi_extra={**json_body(FeedbackBody, "Feedback on a slate (by its request_id and feedback_token) or an item list."),
                       "security": openapi_security(Role.FRONTEND)},
    )
    async def post_feedback(self, request: Request) -> JSONResponse:
        try:
            self._authorize(request, Role.FRONTEND)
            data = await _read_json(request, self._s)
            raw = json.dumps(data, ensure_ascii=True, separators=(",", ":")).encode()
            return JSONResponse(await self.feedback(_parse(FeedbackBody, data), raw))
        except ApiError as exc:
            return self._fail(exc)

    @api.get(
        "/v1/recommendations", summary="Ranked items for a user (query parameters)", tags=["recommendations"],
        response_model=RecommendationsResponse,
        responses=error_responses(401, 422, described={
            422: "invalid_request (a parameter, an unknown parameter), k_too_large, list_too_long, repeated_parameter.",
        }),
        openapi_extra={"parameters": query_parameters(RecommendationsQuery), "security": openapi_security(Role.FRONTEND)},
    )
    async def get_recommendations(self, request: Request) -> JSONResponse:
        try:
            self._authorize(request, Role.FRONTEND)
            query = _parse(RecommendationsQuery, _query_dict(request, ("exclude", "cart")))
            return JSONResponse(await self.recommendations(query))
        except ApiError as exc:
            return self._fail(exc)

    @api.post(
        "/v1/recommendations", summary="Ranked items for a user (JSON body)", tags=["recommendations"],
        response_model=RecommendationsResponse,
        responses=error_responses(400, 401, 408, 413, 415, 422, described={
            422: "invalid_request (a field, an unknown field), k_too_large, list_too_long.",
        }),
        openapi_extra={**json_body(RecommendationsQuery, "As the query parameters of GET /v1/recommendations (lists as arrays)."),
                       "security": openapi_security(Role.FRONTEND)},
    )
    async def post_recommendations(self, request: Request) -> JSONResponse:
        try:
            self._authorize(request, Role.FRONTEND)
            query = _parse(RecommendationsQuery, await _read_json(request, self._s))
            return JSONResponse(await self.recommendations(query))
        except ApiError as exc:
            return self._fail(exc)

    @api.get(
        "/v1/experiments", summary="Experiment definitions and traffic splits (admin token)", tags=["experiments"],
        response_model=ExperimentList, responses=error_responses(401, 429),
        openapi_extra={"security": openapi_security(Role.ADMIN)},
    )
    async def list_experiments(self, request: Request) -> JSONResponse:
        try:
            self._authorize(request, Role.ADMIN)
        except ApiError as exc:
            return self._fail(exc)
        return JSONResponse({
            "default": self._default_experiment,
            "experiments": [_experiment_definition(e) for e in self._experiments.values()],
        })

    @api.get(
        "/v1/experiments/{name}", summary="Definition, split and live results per variant (reader or admin token)",
        tags=["experiments"], response_model=ExperimentResults,
        responses=error_responses(401, 404, 429, 503, described={503: "learner_unavailable: retry."}),
        openapi_extra={"parameters": [path_parameter("name", "The experiment's name.")],
                       "security": openapi_security(Role.READER, Role.ADMIN)},
    )
    async def get_experiment(self, request: Request) -> JSONResponse:
        # Path parameters are read from the request and declared in openapi_extra: as handler
        # parameters FastAPI would document a 422 that is never answered here, and Serve's copy of
        # the app would show a Path()'s description with a spurious `example: {}`.
        try:
            self._authorize(request, Role.READER, Role.ADMIN)
            return JSONResponse(await self.experiment_report(request.path_params["name"]))
        except ApiError as exc:
            return self._fail(exc)

    @api.get(
        "/v1/learner", summary="The bandit learner's counters, offsets and restore info (admin token)", tags=["admin"],
        response_model=LearnerStats,
        responses=error_responses(401, 429, 503, described={503: "learner_unavailable: retry."}),
        openapi_extra={"security": openapi_security(Role.ADMIN)},
    )
    async def learner_stats(self, request: Request) -> JSONResponse:
        try:
            self._authorize(request, Role.ADMIN)
            return JSONResponse(_jsonable(await _call(self._learner.stats.remote(), "learner")))
        except ApiError as exc:
            return self._fail(exc)

    async def delete_user(self, user_id: str, reason: str | None) -> dict[str, Any]:
        """Publish the user's tombstone (acks=all) and make the learner forget the user now.

        The feature pipeline purges the lake, Feast and its state when it reads the tombstone at
        its next micro-batch, and training the model registry at its next retrain check or model
        registration (``ray_jobs.registry.privacy``), hence 202: accepted, completed downstream.
        """
        try:
            tombstone = Tombstone.for_user(user_id, reason=reason or "user_request", source="admin_api")
        except ValidationError as exc:
            raise ApiError(422, "invalid_request", _validation_detail(exc)) from None
        topic = self._settings.kafka.topics.tombstones
        await self._publish([OutgoingRecord(topic, tombstone.key, tombstone.to_json())])
        forgotten = await _call(self._learner.forget_user.remote(user_id, tombstone.request_id), "learner")
        log.info("user deletion %s accepted (tombstone on %s)", tombstone.request_id, topic)
        return {
            "request_id": tombstone.request_id, "user_id": user_id, "status": "accepted",
            "tombstone_topic": topic, "requested_at": tombstone.requested_at.isoformat(), "learner_removed": forgotten,
        }

    @api.delete(
        "/v1/admin/users/{user_id}", summary="Delete a user everywhere (admin token; 202 + request id)", tags=["admin"],
        status_code=202, response_model=UserDeletionAccepted, response_description="Accepted: completed downstream.",
        responses=error_responses(401, 422, 429, 503, described={
            422: "invalid_request (user_id or reason outside the tombstone contract), repeated_parameter.",
            503: "broker_unavailable (the tombstone was not acknowledged) or learner_unavailable: retry.",
        }),
        openapi_extra={
            "parameters": [
                path_parameter("user_id", "The user to delete."),
                {"name": "reason", "in": "query", "required": False, "schema": {"type": "string", "minLength": 1, "maxLength": 256},
                 "description": "Why, for the audit trail (default user_request)."},
            ],
            "security": openapi_security(Role.ADMIN),
        },
    )
    async def delete_user_http(self, request: Request) -> JSONResponse:
        try:
            self._authorize(request, Role.ADMIN)
            reason = _query_dict(request).get("reason")
            return JSONResponse(await self.delete_user(request.path_params["user_id"], reason), status_code=202)
        except ApiError as exc:
            return self._fail(exc)

    @api.get("/healthz", summary="Liveness: the replica answers", tags=["health"], response_model=Health)
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok", "service": "recommender"}

    @api.get("/shop/config.json", include_in_schema=False)
    async def storefront_config(self) -> JSONResponse:
        """What the demo storefront's script needs: where to send events and the publishable key."""
        if self._storefront is None:
            return _storefront_off()
        return JSONResponse({
            "key": self._settings.collector.auth_token.get_secret_value(),
            "collector_url": "/v1/events", "experiment": self._default_experiment,
        }, headers={"cache-control": "no-store"})

    @api.get("/shop/{path:path}", include_in_schema=False)
    async def storefront(self, path: str, request: Request) -> Response:
        """The demo storefront's static files (Starlette's StaticFiles: no path escapes its folder)."""
        if self._storefront is None:
            return _storefront_off()
        return await self._storefront.get_response(path or "index.html", request.scope)

    def check_health(self) -> None:
        """Serve's periodic health check: the impression producer this replica owns (EventPublisher.check);
        and the buffered counters' pending sums are recorded."""
        for counter in (self._served, self._feedback, self._recommended):
            counter.flush()
        self._publisher.check()

    def __del__(self) -> None:
        decisions = getattr(self, "_decisions", None)
        if decisions is not None:
            decisions.close()
        publisher = getattr(self, "_publisher", None)
        if publisher is not None:
            publisher.close()


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder named by the Serve config's `import_path`."""
    parsed = RecommenderArgs.model_validate(args or {})
    learner = BanditLearner.bind(parsed)
    return RecommenderAPI.bind(parsed, learner)
