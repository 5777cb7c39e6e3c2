"""The `spec.webhook` block of a Sensor document: where the webhook is served, which methods it
takes, how large a body may be, and how a plain JSON request becomes a CloudEvent.

The event templates are compiled here, at load time, so a typo in one is a `file:line` problem
rather than a 400 on the first request. This module only validates the configuration; turning
a request into events is `normalizing.py`'s job.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
    field_validator,
)

from eventflow.errors import ExpressionError
from eventflow.expressions import Template, compile_template
from eventflow.resources.models import Strict

# What `event.*` templates may refer to, per request:
#   headers: map of lower-cased header names to values; query: map of query parameters;
#   body: the parsed JSON body; path: the part after /webhooks/; method: POST, PUT or PATCH.
WEBHOOK_VARIABLES = frozenset({"headers", "query", "body", "path", "method"})

DEFAULT_TYPE = "eventflow.webhook"
DEFAULT_MAX_BODY_BYTES = 1_048_576
Method = Literal["POST", "PUT", "PATCH"]
_PATH_CHARACTERS = re.compile(r"^[A-Za-z0-9._~/-]+$")


def _compile(value: Any) -> Template:
    if isinstance(value, Template):
        return value
    if not isinstance(value, str):
        # ValueError, not TypeError: pydantic reports only ValueError as a validation problem.
        raise ValueError(
            f'a template is a string like "com.example.{{{{ body.kind }}}}", got {value!r}'
        )
    try:
        return compile_template(value, WEBHOOK_VARIABLES)
    except ExpressionError as error:
        raise ValueError(str(error)) from error


WebhookTemplate = Annotated[
    Template,
    PlainValidator(_compile),
    PlainSerializer(lambda template: template.source, return_type=str),
    WithJsonSchema({"type": "string", "description": "text with {{ CEL }} parts"}),
]


class EventTemplates(Strict):
    """How a plain JSON request becomes a CloudEvent; each attribute is a `{{ }}` template."""

    type: WebhookTemplate = Field(
        default=compile_template(DEFAULT_TYPE, WEBHOOK_VARIABLES),
        description=f"the event type (default {DEFAULT_TYPE!r})",
    )
    source: WebhookTemplate | None = Field(
        default=None, description="the event source (default '/webhooks/<path>')"
    )
    subject: WebhookTemplate | None = Field(
        default=None, description="the event subject (default none; empty renders as none)"
    )
    id: WebhookTemplate | None = Field(
        default=None,
        description="the event id, e.g. a delivery header so a redelivery keeps its id"
        " (default a new UUID per request)",
    )


class WebhookConfig(Strict):
    """`spec.webhook`: one HTTP endpoint under /webhooks/."""

    path: str = Field(description="served at /webhooks/<path>")
    methods: list[Method] = Field(
        default_factory=lambda: list[Method](["POST"]),
        min_length=1,
        description="the HTTP methods accepted",
    )
    maxBodyBytes: int = Field(
        default=DEFAULT_MAX_BODY_BYTES,
        ge=1,
        description="bytes; a larger body is answered with 413 (default 1 MiB)",
    )
    event: EventTemplates = Field(default_factory=EventTemplates)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        accepted = (
            "use letters, digits and . _ ~ - in segments separated by single /,"
            " without a leading or trailing /, e.g. 'github' or 'acme/orders'"
        )
        if not _PATH_CHARACTERS.match(value):
            raise ValueError(f"{value!r} is not a webhook path; {accepted}")
        if value.startswith("/"):
            raise ValueError(
                f"{value!r} starts with /; write it without, e.g. {value.lstrip('/')!r}"
            )
        if any(segment in ("", ".", "..") for segment in value.split("/")):
            raise ValueError(f"{value!r} has an empty, '.' or '..' segment; {accepted}")
        return value

    @field_validator("methods", mode="before")
    @classmethod
    def _upper_methods(cls, value: Any) -> Any:
        # `post` is what many users type; the HTTP method itself is case-sensitive upper case.
        if isinstance(value, list):
            return [item.upper() if isinstance(item, str) else item for item in value]
        return value
