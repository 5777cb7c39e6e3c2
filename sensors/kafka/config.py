"""The `spec.kafka` block of a Sensor document: which brokers and topics to consume as which
consumer group, how record values become event data, how large a record may be, how a plain
record becomes a CloudEvent, how to authenticate to the brokers, and where poison records go.

The event templates and the topic pattern are compiled here, at load time, so a typo is a
`file:line` problem rather than a failure on the first record. The SASL password is named (an
environment variable or a file), never given inline. This module only validates: reading the
password and connecting are `sensor.py`'s job, turning records into events `normalizing.py`'s.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Self

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

# What `event.*` templates may refer to: `record`, a map with topic, partition, offset, key
# (text), headers (map of name to text), value (as valueFormat makes it) and timestamp.
KAFKA_VARIABLES = frozenset({"record"})

DEFAULT_TYPE = "eventflow.kafka.record"
POISON_TYPE = "eventflow.kafka.poison"
DEFAULT_MAX_RECORD_BYTES = 1_048_576
StartFrom = Literal["latest", "earliest"]
ValueFormat = Literal["json", "text", "base64", "s3"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
# Kafka's own rule for topic names (kafka.common.internals.Topic).
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_SERVER = re.compile(r"^[^\s:/]+:\d{1,5}$")


KafkaTemplate = Annotated[Template, TemplateOver(KAFKA_VARIABLES, "com.example.{{ record.topic }}")]


class EventTemplates(Strict):
    """How a record that is not a CloudEvent becomes one; each attribute is a `{{ }}` template."""

    type: KafkaTemplate = Field(
        default=compile_template(DEFAULT_TYPE, KAFKA_VARIABLES),
        description=f"the event type (default {DEFAULT_TYPE!r})",
    )
    source: KafkaTemplate | None = Field(
        default=None, description="the event source (default 'kafka://<topic>')"
    )
    subject: KafkaTemplate | None = Field(
        default=None,
        description="the event subject (default the record key; empty renders as none)",
    )
    id: KafkaTemplate | None = Field(
        default=None,
        description="the event id (default '<topic>/<partition>/<offset>', so a redelivered"
        " record keeps its id)",
    )


class SecurityConfig(Strict):
    """`spec.kafka.security`: TLS and SASL towards the brokers."""

    protocol: SecurityProtocol = Field(
        default="PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
    )
    saslMechanism: SaslMechanism | None = Field(
        default=None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_* only)"
    )
    username: str | None = Field(default=None, min_length=1, description="the SASL user")
    password: SecretSource | None = Field(
        default=None, description="where the SASL password is read: {env: NAME} or {file: path}"
    )
    caFile: str | None = Field(
        default=None,
        min_length=1,
        description="PEM file of the CA that signed the brokers' certificates (SSL, SASL_SSL;"
        " default the system's CAs)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        sasl = self.protocol.startswith("SASL_")
        given = [name for name in ("saslMechanism", "username", "password") if getattr(self, name)]
        if sasl and len(given) != 3:
            missing = [
                name for name in ("saslMechanism", "username", "password") if name not in given
            ]
            raise ValueError(
                f"protocol {self.protocol} needs saslMechanism, username and password;"
                f" missing {', '.join(missing)}"
            )
        if not sasl and given:
            raise ValueError(
                f"{', '.join(given)} apply only to SASL_PLAINTEXT and SASL_SSL, not to"
                f" {self.protocol}; set protocol: SASL_SSL or remove them"
            )
        if self.caFile is not None and not self.protocol.endswith("SSL"):
            raise ValueError(
                f"caFile applies only to SSL and SASL_SSL, not to {self.protocol};"
                " set protocol: SSL (or SASL_SSL) or remove caFile"
            )
        return self


def _topic_name(value: str) -> str:
    if not _TOPIC_NAME.match(value) or value in (".", ".."):
        raise ValueError(
            f"{value!r} is not a Kafka topic name; use 1-249 letters, digits, '.', '_' or '-'"
        )
    return value


class KafkaConfig(Strict):
    """`spec.kafka`: one consumer group reading topics (or a pattern) into events."""

    bootstrapServers: list[str] = Field(
        min_length=1, description="host:port of brokers, a list or a comma-separated string"
    )
    topics: list[str] | None = Field(default=None, min_length=1, description="topics to read")
    topicPattern: str | None = Field(
        default=None, description="a regular expression; every matching topic is read"
    )
    groupId: str | None = Field(
        default=None, min_length=1, description="the consumer group (default eventflow-<sensor>)"
    )
    startFrom: StartFrom = Field(
        default="latest",
        description="where a new group starts: latest (only new records) or earliest",
    )
    valueFormat: ValueFormat = Field(
        default="json",
        description="how a value that is no CloudEvent becomes data: json (a value that is not"
        " JSON is a poison record), text (UTF-8) or base64 (bytes); s3: every value is an"
        " S3/MinIO bucket notification, one event per object change (MinIO's Kafka target)",
    )
    s3: NotificationFilters = Field(
        default_factory=NotificationFilters,
        description="with valueFormat s3: which object changes count (bucket, prefix, suffix,"
        " events, minSize, maxSize), keyEncoding and the dedupe window, as in spec.objectstore",
    )
    maxRecordBytes: int = Field(
        default=DEFAULT_MAX_RECORD_BYTES,
        ge=1,
        description="bytes; a record value larger than this is a poison record (default 1 MiB)",
    )
    event: EventTemplates = Field(default_factory=EventTemplates)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    deadLetterTopic: str | None = Field(
        default=None,
        description=f"where poison records are copied (default: published as {POISON_TYPE!r}"
        " events)",
    )

    @field_validator("bootstrapServers", mode="before")
    @classmethod
    def _split_servers(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("bootstrapServers")
    @classmethod
    def _servers(cls, value: list[str]) -> list[str]:
        for server in value:
            if not _SERVER.match(server):
                raise ValueError(
                    f"{server!r} is not host:port; write e.g. kafka-0.kafka:9092 or"
                    " 127.0.0.1:9092, several as a list or separated by commas"
                )
        return value

    @field_validator("topics")
    @classmethod
    def _topics(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [_topic_name(topic) for topic in value]

    @field_validator("deadLetterTopic")
    @classmethod
    def _dead_letter(cls, value: str | None) -> str | None:
        return None if value is None else _topic_name(value)

    @field_validator("topicPattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"{value!r} is not a regular expression: {error}") from error
        return value

    @model_validator(mode="after")
    def _one_selection(self) -> Self:
        if (self.topics is None) == (self.topicPattern is None):
            raise ValueError("give exactly one of topics (a list) or topicPattern (a regex)")
        check_s3_format(self.valueFormat == "s3", self.model_fields_set, "valueFormat")
        if self.deadLetterTopic is not None and self._reads(self.deadLetterTopic):
            raise ValueError(
                f"deadLetterTopic {self.deadLetterTopic!r} is one of the topics this sensor"
                " reads; a poison record would come back forever: choose another topic"
            )
        return self

    def _reads(self, topic: str) -> bool:
        if self.topics is not None:
            return topic in self.topics
        return re.fullmatch(str(self.topicPattern), topic) is not None

    def group_id(self, sensor_name: str) -> str:
        """The consumer group: `groupId`, or eventflow-<sensor name>."""
        return self.groupId or f"eventflow-{sensor_name}"
