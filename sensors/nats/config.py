"""The `spec.nats` block of a Sensor document: which servers, which subjects or JetStream
consumer, how payloads are read, how a message becomes a CloudEvent, and how to log in.

Subjects, templates and the consumer settings are checked here, at load time, so a typo is a
`file:line` problem rather than a silent subscription to nothing. Secrets are named (an
environment variable or a file), never given inline. This module only validates: reading
secrets and connecting is `sensor.py`'s job, turning a message into an event
`normalizing.py`'s.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, Self

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from eventflow.expressions import Template, compile_template
from eventflow.resources.models import Strict
from eventflow.sensing.secrets import SecretSource
from eventflow.sensing.templating import TemplateOver
from sensors.objectstore.config import NotificationFilters, check_s3_format

# What `event.*` templates may refer to: `msg.subject` (the NATS subject), `msg.headers` (a map
# of header names to values) and `msg.data` (the payload as `payloadFormat` reads it).
NATS_VARIABLES = frozenset({"msg"})

DEFAULT_URL = "nats://127.0.0.1:4222"
DEFAULT_TYPE = "eventflow.nats.message"
DEFAULT_MAX_MESSAGE_BYTES = 1_048_576
DEFAULT_ACK_WAIT_SECONDS = 30.0
PayloadFormat = Literal["json", "text", "base64", "s3"]
DeliverPolicyName = Literal["all", "new", "last", "by_start_time"]
_URL_SCHEMES = ("nats://", "tls://", "ws://", "wss://")
_SUBJECT_HELP = (
    "a subject is tokens separated by '.', each non-empty and without spaces; '*' may stand"
    " for one whole token and '>' for the rest as the last token, e.g. 'orders.*.created'"
)


def check_subject(value: str, *, wildcards: bool) -> str:
    """Return `value` if it is a NATS subject (with wildcards when allowed); else ValueError."""
    if not value or any(character.isspace() for character in value):
        raise ValueError(f"{value!r} is not a NATS subject; {_SUBJECT_HELP}")
    tokens = value.split(".")
    for index, part in enumerate(tokens):
        if not part:
            raise ValueError(f"{value!r} has an empty token; {_SUBJECT_HELP}")
        is_wildcard = part in ("*", ">")
        if ("*" in part or ">" in part) and not is_wildcard:
            raise ValueError(
                f"{value!r}: token {part!r} mixes a wildcard with text; {_SUBJECT_HELP}"
            )
        if is_wildcard and not wildcards:
            raise ValueError(f"{value!r} has a wildcard; a subject to publish to names one subject")
        if part == ">" and index != len(tokens) - 1:
            raise ValueError(f"{value!r}: '>' must be the last token; {_SUBJECT_HELP}")
    return value


NatsTemplate = Annotated[Template, TemplateOver(NATS_VARIABLES, "com.example.{{ msg.subject }}")]


class EventTemplates(Strict):
    """How a message that is not a CloudEvent becomes one; each attribute is a `{{ }}` template."""

    type: NatsTemplate = Field(
        default=compile_template(DEFAULT_TYPE, NATS_VARIABLES),
        description=f"the event type (default {DEFAULT_TYPE!r})",
    )
    source: NatsTemplate | None = Field(
        default=None, description="the event source (default 'nats://<subject>')"
    )
    subject: NatsTemplate | None = Field(
        default=None, description="the event subject (default the NATS subject; empty is none)"
    )
    id: NatsTemplate | None = Field(
        default=None,
        description="the event id (default the Nats-Msg-Id header, else '<stream>/<sequence>'"
        " for JetStream, else a new UUID)",
    )


class JetStreamConfig(Strict):
    """A durable pull consumer on an existing stream; messages are acked once on the bus."""

    stream: str = Field(min_length=1, description="the stream to read")
    consumer: str = Field(
        min_length=1, description="the durable consumer name; replicas sharing it share work"
    )
    deliverPolicy: DeliverPolicyName = Field(
        default="all", description="where a new consumer starts: all, new, last, by_start_time"
    )
    startTime: datetime | None = Field(
        default=None, description="RFC 3339 time to start from, with deliverPolicy by_start_time"
    )
    filterSubject: str | None = Field(
        default=None, description="only messages on this subject (wildcards allowed)"
    )
    ackWaitSeconds: float = Field(
        default=DEFAULT_ACK_WAIT_SECONDS,
        gt=0,
        allow_inf_nan=False,
        description="seconds the server waits for an ack before it redelivers",
    )
    maxDeliver: int | None = Field(
        default=None,
        ge=1,
        description="deliveries after which the server gives up on a message (default no"
        " limit: a message the bus could not take is retried, not dropped)",
    )

    @field_validator("stream", "consumer")
    @classmethod
    def _name(cls, value: str) -> str:
        if any(character in value for character in " .*>\t\n"):
            raise ValueError(
                f"{value!r} is not a JetStream name; use letters, digits, - and _"
                " (no spaces, '.', '*' or '>')"
            )
        return value

    @field_validator("filterSubject")
    @classmethod
    def _filter(cls, value: str | None) -> str | None:
        return None if value is None else check_subject(value, wildcards=True)

    @model_validator(mode="after")
    def _start_time(self) -> Self:
        if (self.deliverPolicy == "by_start_time") != (self.startTime is not None):
            raise ValueError(
                "startTime goes with deliverPolicy by_start_time, and only with it;"
                " give both or neither"
            )
        if self.startTime is not None and self.startTime.tzinfo is None:
            raise ValueError("startTime has no UTC offset; add Z or +HH:MM")
        return self


class TlsConfig(Strict):
    """TLS to the server: a CA to trust, and a client certificate for mutual TLS."""

    caFile: str | None = Field(default=None, min_length=1, description="PEM CA bundle")
    certFile: str | None = Field(default=None, min_length=1, description="PEM client cert")
    keyFile: str | None = Field(default=None, min_length=1, description="PEM client key")

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.certFile is None) != (self.keyFile is None):
            raise ValueError("certFile and keyFile go together; give both or neither")
        return self


class Credentials(Strict):
    """How the sensor logs in: user and password, a token, a creds file or an nkey seed."""

    user: str | None = Field(default=None, min_length=1)
    password: SecretSource | None = None
    token: SecretSource | None = None
    credsFile: str | None = Field(default=None, min_length=1, description="a .creds file (JWT)")
    nkeySeedFile: str | None = Field(default=None, min_length=1, description="an nkey seed")
    tls: TlsConfig | None = None

    @model_validator(mode="after")
    def _one_way(self) -> Self:
        if (self.user is None) != (self.password is None):
            raise ValueError("user and password go together; give both or neither")
        ways = [
            name
            for name, given in (
                ("user", self.user),
                ("token", self.token),
                ("credsFile", self.credsFile),
                ("nkeySeedFile", self.nkeySeedFile),
            )
            if given is not None
        ]
        if len(ways) > 1:
            raise ValueError(
                f"give at most one way to log in (user, token, credsFile or nkeySeedFile);"
                f" got {', '.join(ways)}"
            )
        return self


class NatsConfig(Strict):
    """`spec.nats`: core NATS subjects (at most once) or a JetStream consumer (at least once)."""

    url: str | list[str] = Field(
        default=DEFAULT_URL, description="the server URL, or a list of cluster URLs"
    )
    subjects: list[str] = Field(
        default_factory=list, description="core NATS subjects to subscribe to (wildcards allowed)"
    )
    queueGroup: str | None = Field(
        default=None,
        min_length=1,
        description="core NATS queue group, replicas share the messages (default"
        " 'eventflow-<sensor>')",
    )
    jetstream: JetStreamConfig | None = None
    payloadFormat: PayloadFormat = Field(
        default="json",
        description="how the payload becomes data: json, text (UTF-8) or base64; s3: every"
        " payload is an S3/MinIO bucket notification, one event per object change (MinIO's"
        " NATS target)",
    )
    s3: NotificationFilters = Field(
        default_factory=NotificationFilters,
        description="with payloadFormat s3: which object changes count (bucket, prefix, suffix,"
        " events, minSize, maxSize), keyEncoding and the dedupe window, as in spec.objectstore",
    )
    maxMessageBytes: int = Field(
        default=DEFAULT_MAX_MESSAGE_BYTES,
        ge=1,
        description="bytes; a larger payload is a poison message (default 1 MiB)",
    )
    event: EventTemplates = Field(default_factory=EventTemplates)
    credentials: Credentials | None = None
    deadLetterSubject: str | None = Field(
        default=None,
        description="where poison messages go (default: an eventflow.nats.poison event)",
    )

    @field_validator("url")
    @classmethod
    def _urls(cls, value: str | list[str]) -> str | list[str]:
        urls = [value] if isinstance(value, str) else value
        if not urls:
            raise ValueError(f"give at least one server URL, e.g. {DEFAULT_URL!r}")
        for url in urls:
            if not url.startswith(_URL_SCHEMES):
                raise ValueError(
                    f"{url!r} is not a NATS server URL; start it with"
                    f" {', '.join(_URL_SCHEMES)}, e.g. {DEFAULT_URL!r}"
                )
        return value

    @field_validator("subjects")
    @classmethod
    def _subjects(cls, value: list[str]) -> list[str]:
        return [check_subject(subject, wildcards=True) for subject in value]

    @field_validator("deadLetterSubject")
    @classmethod
    def _dead_letter(cls, value: str | None) -> str | None:
        return None if value is None else check_subject(value, wildcards=False)

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if bool(self.subjects) == (self.jetstream is not None):
            raise ValueError(
                "give exactly one of subjects (core NATS) or jetstream (a durable consumer);"
                f" got {'both' if self.subjects else 'neither'}"
            )
        if self.queueGroup is not None and self.jetstream is not None:
            raise ValueError(
                "queueGroup applies to core NATS subjects; JetStream replicas share work"
                " through jetstream.consumer"
            )
        check_s3_format(self.payloadFormat == "s3", self.model_fields_set, "payloadFormat")
        return self

    @property
    def servers(self) -> list[str]:
        return [self.url] if isinstance(self.url, str) else list(self.url)
