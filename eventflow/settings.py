"""Settings: one pydantic-settings tree, read from the environment (EVENTFLOW_*, nested with
`__`, e.g. EVENTFLOW_API__PORT=8080) and passed explicitly to the parts that need them.

Every field has a default that gives the embedded mode: in-memory bus, SQLite under the
data dir, steps as local processes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from eventflow.resources.kubernetes import KubernetesOptions
from eventflow.sensing.secrets import SecretSource
from eventflow.store.records import DEFAULT_LEASE_SECONDS

_UNSAFE = re.compile(r"[\s*>]")
"""What a token of a NATS subject cannot hold: whitespace ends it, * and > are wildcards."""


class ApiToken(BaseModel):
    """One bearer token of the REST API: who holds it, what it may do, where its value is."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="who holds the token, as logs name it")
    scopes: list[Literal["read", "write"]] = Field(
        min_length=1, description="read: GET routes; write: every other method"
    )
    secret: SecretSource = Field(description="{env: NAME} or {file: /path}; never inline")


class ApiSettings(BaseModel):
    host: str = Field(default="127.0.0.1", description="address the HTTP listener binds")
    port: int = Field(default=8080, ge=0, le=65535, description="port of webhooks and REST API")
    tokens: list[ApiToken] = Field(
        default_factory=list,
        description="bearer tokens of /api/v1 (JSON in EVENTFLOW_API__TOKENS); none: the API"
        " is open",
    )
    tls_cert_file: Path | None = Field(
        default=None, description="PEM certificate chain; with tls_key_file, serve HTTPS"
    )
    tls_key_file: Path | None = Field(default=None, description="PEM private key of the cert")
    max_header_bytes: int = Field(
        default=16_384, ge=1024, description="bytes of request headers; more is answered 431"
    )
    request_timeout_seconds: float = Field(
        default=30.0, gt=0, description="seconds a webhook body may take to arrive; then 408"
    )
    max_concurrent_requests: int = Field(
        default=1000, ge=1, description="webhook requests in progress at once; more get 503"
    )
    intake_workers: int = Field(
        default=0,
        ge=0,
        le=64,
        description="processes that answer webhooks beside the one running the engine (the"
        " REST API is passed on to it); 0: one process does all. About one per spare core",
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "api.tls_cert_file and api.tls_key_file go together; give both to serve HTTPS,"
                " or neither for plain HTTP"
            )
        return self

    @field_validator("tokens")
    @classmethod
    def _unique_token_names(cls, tokens: list[ApiToken]) -> list[ApiToken]:
        names = [token.name for token in tokens]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"token names repeat: {', '.join(repeated)}; give each a new name")
        return tokens


class BusSettings(BaseModel):
    url: str = Field(
        default="memory://",
        description="memory:// (embedded), nats://HOST:PORT (JetStream) or kafka://HOST:PORT",
    )
    max_pending: int = Field(
        default=100_000, ge=1, description="events the memory bus holds before refusing (503)"
    )
    stream: str = Field(default="EVENTFLOW", description="NATS: the JetStream stream of events")
    subject_prefix: str = Field(
        default="eventflow.events", description="NATS: events go to <prefix>.<sensor>"
    )
    topic: str = Field(default="eventflow.events", description="Kafka: the topic of events")
    dead_letter_subject: str = Field(
        default="eventflow.dead-letters",
        description="NATS: subject of the dead letters, kept in stream <stream>_DLQ; outside"
        " subject_prefix",
    )
    idempotent: bool = Field(
        default=True,
        description="Kafka: idempotent producer; off only for brokers refusing InitProducerId",
    )
    max_age_seconds: float = Field(
        default=604_800.0, gt=0, description="NATS: seconds an event is kept in the stream"
    )
    ack_wait_seconds: float = Field(
        default=30.0, gt=0, description="seconds before an unacknowledged event is redelivered"
    )
    max_deliver: int = Field(
        default=5, ge=1, description="NATS, Kafka: deliveries before an event goes to dead letters"
    )

    @field_validator("dead_letter_subject")
    @classmethod
    def _nats_subject(cls, subject: str) -> str:
        tokens = subject.split(".")
        if any(not token or token in ("*", ">") or _UNSAFE.search(token) for token in tokens):
            raise ValueError(
                f"{subject!r} is not a NATS subject to publish on; use dot-separated tokens"
                " without spaces or wildcards (* >), e.g. eventflow.dead-letters"
            )
        return subject


class StoreSettings(BaseModel):
    url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default: SQLite file eventflow.db under the data dir",
    )


class ReplicaSettings(BaseModel):
    """Run ownership among replicas sharing one store: each run is leased to the replica that
    drives it; a lease not renewed in time lets another replica take the run over."""

    id: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="this replica's unique name in run leases (e.g. a StatefulSet pod name: a"
        " restart takes its runs back at once); default: host-pid-random on PostgreSQL,"
        " 'embedded' on SQLite",
    )
    lease_seconds: float = Field(
        default=DEFAULT_LEASE_SECONDS,
        ge=0.3,
        description="seconds a replica keeps a run without renewing (renewed every third of"
        " it); a dead replica's runs are taken over within 1.5 times this",
    )


class KubernetesSettings(BaseModel):
    namespace: str = Field(default="default", description="namespace of the steps' Jobs")
    kubeconfig: str | None = Field(
        default=None, description="kubeconfig file; default: in-cluster, then ~/.kube/config"
    )
    context: str | None = Field(default=None, description="kubeconfig context")
    qps: float = Field(default=50.0, gt=0, description="API requests per second, sustained")
    burst: int = Field(default=100, ge=1, description="API requests allowed in a burst")
    ttl_seconds_after_finished: int | None = Field(
        default=3600, ge=0, description="seconds a finished Job is kept, after its result is stored"
    )
    service_account: str | None = Field(default=None, description="the Pods' service account")
    default_image: str | None = Field(default=None, description="image of steps that name none")
    defaults: KubernetesOptions = Field(
        default_factory=KubernetesOptions,
        description="the installation's `kubernetes:` block, under every workflow's and step's"
        ' (JSON in EVENTFLOW_EXECUTOR__KUBERNETES__DEFAULTS: {"serviceAccountName": "steps"})',
    )


class ExecutorSettings(BaseModel):
    kind: Literal["local", "kubernetes"] = Field(default="local", description="where steps run")
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)
    kill_grace_seconds: float = Field(
        default=5.0, ge=0, description="seconds between SIGTERM and SIGKILL of a step"
    )
    log_tail_lines: int = Field(default=20, ge=0, description="log lines kept with each step")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EVENTFLOW_", env_nested_delimiter="__", extra="forbid"
    )

    data_dir: Path = Field(
        default=Path(".eventflow"), description="directory of the SQLite store and step logs"
    )
    log_format: Literal["console", "json"] = Field(default="console", description="log style")
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info")
    shutdown_grace_seconds: float = Field(
        default=30.0,
        ge=0,
        description="on SIGTERM, seconds running steps get to finish before they are stopped",
    )
    watch_resources: bool = Field(
        default=False,
        description="reload the resource files when they change (`serve --watch`), as SIGHUP does",
    )
    watch_interval_seconds: float = Field(
        default=1.0,
        gt=0,
        description="seconds between two looks at the watched files; a change is applied once"
        " the files stayed the same for this long",
    )
    api: ApiSettings = Field(default_factory=ApiSettings)
    bus: BusSettings = Field(default_factory=BusSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    replica: ReplicaSettings = Field(default_factory=ReplicaSettings)
    executor: ExecutorSettings = Field(default_factory=ExecutorSettings)

    @property
    def store_url(self) -> str:
        if self.store.url:
            return self.store.url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'eventflow.db').resolve()}"
