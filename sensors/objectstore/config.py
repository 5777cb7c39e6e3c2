"""The `spec.objectstore` block of a Sensor document: which store, which way it reports changes
(`mode`: poll, sqs or push), which changes count (filters), and how duplicates are dropped.

Everything is checked here, at load time, so a typo is a `file:line` problem rather than a
sensor that waits for nothing. Credentials are never in YAML: the sensor uses the standard AWS
chain (environment, shared config `profile`, web identity for IRSA). This module only
validates; `filtering.py` applies the filters, `clients.py` connects, the mode modules work.
"""

from __future__ import annotations

import re
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from eventflow.resources.models import Strict
from sensors.objectstore.normalizing import KeyEncoding
from sensors.webhook.config import AuthConfig

Mode = Literal["poll", "sqs", "push"]
DEFAULT_POLL_SECONDS = 60.0
DEFAULT_DEDUPE_SECONDS = 86_400.0
DEFAULT_MAX_BODY_BYTES = 1_048_576
# Where an SNS subscription's SubscribeURL may point: AWS's own SNS endpoints.
DEFAULT_SNS_HOSTS = ("sns.*.amazonaws.com", "sns.*.amazonaws.com.cn")
EVENT_FAMILIES = (
    "ObjectCreated",
    "ObjectRemoved",
    "ObjectRestore",
    "ObjectTagging",
    "ObjectAcl",
    "ObjectAccessed",
    "Replication",
    "LifecycleExpiration",
    "LifecycleTransition",
    "IntelligentTiering",
    "ReducedRedundancyLostObject",
)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PATH = re.compile(r"^[A-Za-z0-9._~/-]+$")
_HOST = re.compile(r"^(\*\.)?[A-Za-z0-9*.-]+(:[0-9]{1,5})?$")
_EVENT_HELP = (
    "write an S3 event name such as 's3:ObjectCreated:*', 's3:ObjectCreated:Put' or"
    f" 's3:ObjectRemoved:Delete'; the families are {', '.join(EVENT_FAMILIES)}"
)


def check_event_pattern(value: str) -> str:
    """Return `value` if it is an S3 event name pattern; else ValueError saying what is."""
    name = value.removeprefix("s3:")
    family, _, rest = name.partition(":")
    if family not in EVENT_FAMILIES:
        raise ValueError(f"{value!r} is not an S3 event name; {_EVENT_HELP}")
    if "*" in rest and rest != "*":
        raise ValueError(f"{value!r}: '*' stands alone after the family, e.g. 's3:{family}:*'")
    return value


def check_s3_format(s3: bool, given: set[str], format_field: str) -> None:
    """For a stream sensor (Kafka, NATS) that may carry notifications: its `s3` block applies
    only to the s3 format, its `event` templates never do (the S3 mapping names the events).
    `given` is the fields the user set; `format_field` the sensor's name for its format."""
    if not s3 and "s3" in given:
        raise ValueError(
            f"s3 applies only to {format_field} s3; set {format_field}: s3 or remove s3"
        )
    if s3 and "event" in given:
        raise ValueError(
            f"event templates do not apply to {format_field} s3: each object change becomes the"
            " event the S3 mapping gives it; remove event"
        )


class PollConfig(Strict):
    """List the bucket every interval and report what changed since the last listing."""

    intervalSeconds: float = Field(
        default=DEFAULT_POLL_SECONDS,
        gt=0,
        allow_inf_nan=False,
        description="seconds between the start of two listings (default 60)",
    )
    firstRun: Literal["none", "all"] = Field(
        default="none",
        description="on the first listing: 'none' records what is there without events,"
        " 'all' emits a created event for every object",
    )
    pageSize: int = Field(
        default=1000, ge=1, le=1000, description="objects per ListObjectsV2 page (at most 1000)"
    )


class SqsConfig(Strict):
    """Long-poll an SQS queue that receives the bucket's notifications."""

    queueUrl: str | None = Field(default=None, min_length=1, description="the queue's URL")
    queueName: str | None = Field(
        default=None, min_length=1, description="the queue's name, looked up with GetQueueUrl"
    )
    waitSeconds: int = Field(
        default=20, ge=0, le=20, description="long-poll wait per ReceiveMessage (0-20 s)"
    )
    visibilityTimeout: int | None = Field(
        default=None,
        ge=0,
        le=43_200,
        description="seconds a received message stays hidden (default: the queue's)",
    )
    maxMessages: int = Field(default=10, ge=1, le=10, description="messages per receive (1-10)")
    deadLetterQueueUrl: str | None = Field(
        default=None,
        min_length=1,
        description="where undecodable messages are sent (default: an"
        " eventflow.objectstore.poison event on the bus)",
    )
    reconcileSeconds: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="seconds between listings of `bucket` that report created, changed and"
        " removed objects no notification told of, as the poll mode would (default: off;"
        " the first listing, at start, records the bucket without events, per poll.firstRun)",
    )
    reconcileGraceSeconds: float = Field(
        default=300.0,
        ge=0,
        allow_inf_nan=False,
        description="seconds a change is left to its notification before a reconcile listing"
        " reports it (default 300)",
    )

    @model_validator(mode="after")
    def _one_queue(self) -> Self:
        if (self.queueUrl is None) == (self.queueName is None):
            raise ValueError(
                "give exactly one of queueUrl or queueName;"
                f" got {'both' if self.queueUrl else 'neither'}"
            )
        for name, url in (
            ("queueUrl", self.queueUrl),
            ("deadLetterQueueUrl", self.deadLetterQueueUrl),
        ):
            if url is not None and not url.startswith(("https://", "http://")):
                raise ValueError(f"{name}: {url!r} is not an http(s) URL")
        return self


class PushConfig(Strict):
    """Notifications POSTed to /webhooks/<path>: MinIO's webhook target, SNS HTTP(S)."""

    path: str = Field(description="served at /webhooks/<path>")
    maxBodyBytes: int = Field(
        default=DEFAULT_MAX_BODY_BYTES, ge=1, description="bytes; larger is 413 (default 1 MiB)"
    )
    auth: AuthConfig | None = Field(
        default=None,
        description="how deliveries are authenticated, as for the webhook sensor; MinIO's"
        " auth_token is `bearer`",
    )
    snsHosts: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SNS_HOSTS),
        description="hosts a SubscribeURL may name ('*' stands for one label)",
    )
    snsAllowHttp: bool = Field(
        default=False, description="confirm over plain http too (for local test servers)"
    )

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        segments = value.split("/")
        if not _PATH.match(value) or any(part in ("", ".", "..") for part in segments):
            raise ValueError(
                f"{value!r} is not a webhook path; use letters, digits and . _ ~ - in segments"
                " separated by single /, without a leading or trailing /, e.g. 'minio/uploads'"
            )
        return value

    @field_validator("snsHosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for host in value:
            if not _HOST.match(host):
                raise ValueError(
                    f"{host!r} is not a host name; write e.g. 'sns.eu-west-1.amazonaws.com',"
                    " 'sns.*.amazonaws.com' or '127.0.0.1:8080'"
                )
        return value


class DedupeConfig(Strict):
    """How long a reported change is remembered, to drop its redeliveries."""

    windowSeconds: float = Field(
        default=DEFAULT_DEDUPE_SECONDS,
        gt=0,
        allow_inf_nan=False,
        description="seconds a record is remembered (default 86400, one day)",
    )


class NotificationFilters(Strict):
    """Which changes a sensor reports and how their notifications write keys: the part of
    `spec.objectstore` a stream sensor's `s3` block shares (MinIO's Kafka and NATS targets)."""

    bucket: str | None = Field(
        default=None,
        description="the bucket; required for poll, a filter for sqs, push and streams",
    )
    prefix: str = Field(default="", description="only keys starting with this")
    suffix: str = Field(default="", description="only keys ending with this")
    events: list[str] = Field(
        default_factory=list,
        description="S3 event name patterns, e.g. ['s3:ObjectCreated:*'] (default: all)",
    )
    minSize: int | None = Field(default=None, ge=0, description="bytes; smaller is ignored")
    maxSize: int | None = Field(default=None, ge=0, description="bytes; larger is ignored")
    keyEncoding: KeyEncoding | None = Field(
        default=None,
        description="how notifications write keys: url-plus, url or raw (default: per format)",
    )
    dedupe: DedupeConfig = Field(default_factory=DedupeConfig)

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str | None) -> str | None:
        if value is not None and not _BUCKET.match(value):
            raise ValueError(
                f"{value!r} is not an S3 bucket name; use 3-63 lower-case letters, digits,"
                " '.' and '-', starting and ending with a letter or digit"
            )
        return value

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        return [check_event_pattern(pattern) for pattern in value]

    @model_validator(mode="after")
    def _sizes(self) -> Self:
        if self.minSize is not None and self.maxSize is not None and self.minSize > self.maxSize:
            raise ValueError(
                f"minSize {self.minSize} is larger than maxSize {self.maxSize}; no object fits"
            )
        return self


class ObjectStoreConfig(NotificationFilters):
    """`spec.objectstore`: one bucket (or the buckets one queue reports) and the way to hear it."""

    mode: Mode = Field(description="poll (list the bucket), sqs (a queue) or push (a webhook)")
    region: str | None = Field(
        default=None, min_length=1, description="AWS region (default: from the AWS chain)"
    )
    endpointUrl: str | None = Field(
        default=None, description="the S3/SQS endpoint of MinIO, Ceph or a test server"
    )
    pathStyle: bool = Field(
        default=False, description="address buckets as <endpoint>/<bucket> (MinIO, Ceph)"
    )
    profile: str | None = Field(
        default=None, min_length=1, description="a profile of the shared AWS config files"
    )
    poll: PollConfig = Field(default_factory=PollConfig)
    sqs: SqsConfig | None = None
    push: PushConfig | None = None

    @field_validator("endpointUrl")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError(f"{value!r} is not an http(s) URL, e.g. 'http://127.0.0.1:9000'")
        return value

    @model_validator(mode="after")
    def _mode_parts(self) -> Self:
        if self.mode == "poll" and self.bucket is None:
            raise ValueError("mode poll lists one bucket; give bucket")
        if self.mode == "sqs" and self.sqs is None:
            raise ValueError("mode sqs reads a queue; give sqs.queueUrl or sqs.queueName")
        if self.mode == "push" and self.push is None:
            raise ValueError("mode push listens on a path; give push.path")
        for block in ("sqs", "push"):
            if block != self.mode and getattr(self, block) is not None:
                raise ValueError(f"{block} applies to mode {block}, not to mode {self.mode}")
        if self.sqs is not None and self.sqs.reconcileSeconds is not None and self.bucket is None:
            raise ValueError("sqs.reconcileSeconds lists one bucket; give bucket")
        return self
