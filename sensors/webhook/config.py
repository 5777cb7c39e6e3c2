"""The `spec.webhook` block of a Sensor document: where the webhook is served, which methods it
takes, how large a body may be, how a delivery proves who sent it, and how a plain JSON request
becomes a CloudEvent.

The event templates are compiled and the signature scheme is built here, at load time, so a typo
in either is a `file:line` problem rather than a 400 on the first request. Secrets are named
here (an environment variable or a file), never given inline. This module only validates the
configuration: reading secrets is `secrets.py`'s job, checking a delivery `auth.py`'s, turning
a request into events `normalizing.py`'s.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, Self

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from eventflow.expressions import Template, compile_template
from eventflow.resources.models import Strict, parse_duration
from eventflow.sensing.secrets import SecretSource
from eventflow.sensing.templating import TemplateOver
from sensors.webhook.auth import Algorithm, Encoding, HmacScheme
from sensors.webhook.headers import ALWAYS_SECRET, PRESET_KEPT, PRESET_SECRET, kept_extensions

# What `event.*` and `dedupe.deliveryId` templates may refer to, per request:
#   headers: map of lower-cased header names to values, credential headers left out;
#   query: map of query parameters; body: the parsed JSON or form body;
#   path: the part after /webhooks/; method: POST, PUT or PATCH.
WEBHOOK_VARIABLES = frozenset({"headers", "query", "body", "path", "method"})

DEFAULT_TYPE = "eventflow.webhook"
DEFAULT_MAX_BODY_BYTES = 1_048_576
DEFAULT_DEDUPE_WINDOW_SECONDS = 86_400.0
Method = Literal["POST", "PUT", "PATCH"]
_PATH_CHARACTERS = re.compile(r"^[A-Za-z0-9._~/-]+$")
Preset = Literal["github", "gitlab", "bitbucket", "stripe", "slack"]
_TIMED_PRESETS = ("stripe", "slack")
_KINDS = ("preset", "hmac", "bearer", "basic")


WebhookTemplate = Annotated[
    Template, TemplateOver(WEBHOOK_VARIABLES, "com.example.{{ body.kind }}")
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


class HmacConfig(Strict):
    """A generic HMAC signature: prefix + encoded HMAC(secret, signedPayload) in `header`."""

    header: str = Field(description="the request header carrying the signature")
    algorithm: Algorithm = Field(default="sha256", description="sha1, sha256 or sha512")
    encoding: Encoding = Field(default="hex", description="hex or base64")
    prefix: str = Field(default="", description="text before the digest, e.g. 'sha256='")
    timestampHeader: str | None = Field(
        default=None, description="the header carrying the signed Unix time (replay protection)"
    )
    toleranceSeconds: float | None = Field(
        default=None, description="seconds a signed timestamp may differ from the server clock"
    )
    signedPayload: str = Field(
        default="{body}", description="what is signed: {body} and {timestamp} placeholders"
    )

    @model_validator(mode="after")
    def _buildable(self) -> Self:
        self.to_scheme()  # HmacScheme checks itself, raising ValueError
        return self

    def to_scheme(self) -> HmacScheme:
        # Built on use rather than stored, so a model_copy can never carry a stale scheme.
        return HmacScheme(
            header=self.header,
            algorithm=self.algorithm,
            encoding=self.encoding,
            prefix=self.prefix,
            timestamp_header=self.timestampHeader,
            tolerance_seconds=self.toleranceSeconds,
            signed_payload=self.signedPayload,
        )


class BearerConfig(Strict):
    """`Authorization: Bearer <token>`, the token being one of `auth.secrets`."""


class BasicUser(Strict):
    username: str = Field(min_length=1)
    password: SecretSource

    @field_validator("username")
    @classmethod
    def _no_colon(cls, value: str) -> str:
        if ":" in value:
            raise ValueError(
                f"username {value!r} contains ':'; Basic auth splits user:password at the first"
                " colon, so a username cannot hold one"
            )
        return value


class BasicConfig(Strict):
    """`Authorization: Basic base64(user:password)` for one of `users`."""

    users: list[BasicUser] = Field(min_length=1)


class AuthConfig(Strict):
    """`spec.webhook.auth`: exactly one way a delivery proves its sender; several secrets rotate."""

    preset: Preset | None = Field(default=None, description="a provider's own signature scheme")
    hmac: HmacConfig | None = None
    bearer: BearerConfig | None = None
    basic: BasicConfig | None = None
    secrets: list[SecretSource] = Field(
        default_factory=list,
        description="the active secrets; any of them is accepted, so a secret rotates by"
        " listing new and old together for a while",
    )
    toleranceSeconds: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="seconds a signed timestamp may be off, stripe and slack presets (default 300)",
    )

    @model_validator(mode="before")
    @classmethod
    def _bare_bearer(cls, value: Any) -> Any:
        # `bearer:` with nothing after it is YAML null, and means bearer with no options.
        if isinstance(value, dict) and "bearer" in value and value["bearer"] is None:
            return {**value, "bearer": {}}
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        given = [kind for kind in _KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of {', '.join(_KINDS)}; got {', '.join(given) or 'none'}"
            )
        what = f"preset {self.preset}" if self.preset is not None else given[0]
        if self.basic is not None and self.secrets:
            raise ValueError("basic takes its passwords from users[].password; remove secrets")
        if self.basic is None and not self.secrets:
            raise ValueError(
                f"{what} needs at least one secret; add secrets: [{{env: NAME}}] or"
                " [{file: /path}]"
            )
        if self.toleranceSeconds is not None and self.preset not in _TIMED_PRESETS:
            raise ValueError(
                f"toleranceSeconds applies only to the stripe and slack presets, not to {what};"
                " for a generic scheme set hmac.toleranceSeconds"
            )
        return self

    @property
    def sources(self) -> list[SecretSource]:
        """Every secret to read: basic users' passwords in user order, or `secrets`."""
        if self.basic is not None:
            return [user.password for user in self.basic.users]
        return list(self.secrets)


class DedupeConfig(Strict):
    """`spec.webhook.dedupe`: a redelivery of a delivery id seen within `window` is not
    published again; it is answered 200 with the first delivery's event id."""

    enabled: bool = Field(default=True, description="false turns deduplication off")
    deliveryId: WebhookTemplate | None = Field(
        default=None,
        description="the delivery id of a JSON or form request; default per preset: GitHub"
        " X-GitHub-Delivery, GitLab X-Gitlab-Event-UUID, Stripe the event id in the body;"
        " CloudEvents requests are always keyed by source and id",
    )
    window: float = Field(
        default=DEFAULT_DEDUPE_WINDOW_SECONDS,
        gt=0,
        description="seconds a delivery id is remembered, e.g. 24h (the default) or 30m",
    )

    @field_validator("window", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)


class RateLimitConfig(Strict):
    """`spec.webhook.rateLimit`: a token bucket; a delivery over it is answered 429."""

    perSecond: float = Field(gt=0, allow_inf_nan=False, description="deliveries per second")
    burst: int | None = Field(
        default=None, ge=1, description="deliveries at once (default perSecond, rounded up)"
    )

    @property
    def bucket_size(self) -> int:
        return self.burst if self.burst is not None else max(1, math.ceil(self.perSecond))


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
    auth: AuthConfig | None = Field(
        default=None, description="how deliveries are authenticated (default: not at all)"
    )
    dedupe: DedupeConfig = Field(default_factory=DedupeConfig)
    rateLimit: RateLimitConfig | None = Field(
        default=None, description="deliveries per second this endpoint takes (default no limit)"
    )
    headers: list[str] | None = Field(
        default=None,
        description="request headers the event keeps, as extensions named without the dashes"
        " (x-github-event -> xgithubevent); default per preset, none without one",
    )

    @model_validator(mode="after")
    def _kept_headers(self) -> Self:
        kept_extensions(self.kept_header_names, self.credential_headers)
        return self

    @property
    def preset(self) -> str | None:
        return None if self.auth is None else self.auth.preset

    @property
    def kept_header_names(self) -> list[str]:
        """The allow-list as given, or the preset's default."""
        if self.headers is not None:
            return list(self.headers)
        return list(PRESET_KEPT.get(self.preset or "", ()))

    @property
    def kept_headers(self) -> dict[str, str]:
        """Lower-cased header name -> the extension it becomes on the event."""
        return kept_extensions(self.kept_header_names, self.credential_headers)

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

    @property
    def credential_headers(self) -> frozenset[str]:
        """Lower-cased names of the headers that carry a credential; they never reach an event."""
        names = set(ALWAYS_SECRET)
        if self.auth is not None and self.auth.preset is not None:
            names.update(PRESET_SECRET[self.auth.preset])
        if self.auth is not None and self.auth.hmac is not None:
            names.add(self.auth.hmac.header.lower())
        return frozenset(names)
