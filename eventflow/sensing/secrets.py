"""Secrets sensors read at run time (webhook keys, broker passwords): where, and how.

A Sensor document names where a secret lives (`SecretSource`: an environment variable or a
file), never the secret itself; only `eventflow serve --dev` (`INLINE_ALLOWED`) accepts
`{value: ...}`, for trying things out on a laptop.

A secret that cannot be read (variable unset, file missing, either empty) is a run-time
condition, not a configuration error: a Kubernetes Secret may be mounted after the pod starts,
or rotated while it runs. So reading never raises; it reports what is missing, and
`SecretCache` reads again, at most every `REFRESH_SECONDS`, when its owner asks after a failed
check. This module reads; it does not verify deliveries, log, or answer requests. Time is an
argument, so the refresh rule is tested without waiting.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from eventflow.resources.models import Strict

REFRESH_SECONDS = 30.0
INLINE_ALLOWED: ContextVar[bool] = ContextVar("eventflow_inline_secrets", default=False)
"""Set by `eventflow serve --dev` alone: `{value: ...}` secrets validate while it is true."""
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SecretSource(Strict):
    """Where one secret is read at run time: an environment variable or a file, exactly one."""

    env: str | None = Field(default=None, description="the environment variable holding it")
    file: str | None = Field(
        default=None,
        min_length=1,
        description="the file holding it, e.g. a Kubernetes Secret mount; a trailing newline"
        " is dropped",
    )

    value: SecretStr | None = Field(
        default=None, description="the secret itself; accepted only by `eventflow serve --dev`"
    )

    @model_validator(mode="before")
    @classmethod
    def _not_inline(cls, value: Any) -> Any:
        # The value itself is never echoed: the message may end up in CI logs.
        if isinstance(value, str | bytes | int | float) or (
            isinstance(value, dict) and "value" in value and not INLINE_ALLOWED.get()
        ):
            raise ValueError(
                "an inline secret is not accepted: YAML ends up in git; use {env: NAME} for an"
                " environment variable or {file: /path} for a file such as a Secret mount"
            )
        return value

    @field_validator("env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            raise ValueError(
                f"{value!r} is not an environment variable name; use letters, digits and _,"
                " not starting with a digit, e.g. GITHUB_WEBHOOK_SECRET"
            )
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if [self.env, self.file, self.value].count(None) != 2:
            raise ValueError(
                "a secret is read from exactly one place; give env: NAME or file: /path"
            )
        return self

    def describe(self) -> str:
        """How logs name the secret: its variable or its file, never its value."""
        if self.value is not None:
            return "the inline value (serve --dev)"
        return f"environment variable {self.env}" if self.env is not None else f"file {self.file}"


@dataclass(frozen=True, slots=True)
class SecretRead:
    """One reading of an endpoint's secrets: a value per source, None where it was missing."""

    values: tuple[bytes | None, ...]
    missing: tuple[str, ...]  # why each missing one is missing, naming its variable or file
    at: datetime

    @property
    def available(self) -> list[bytes]:
        """The values that were read, in source order."""
        return [value for value in self.values if value is not None]


def read_secret(source: SecretSource, environ: Mapping[str, str]) -> bytes | str:
    """The secret's bytes, or a sentence saying why it cannot be read (never the value)."""
    where = source.describe()
    if source.value is not None:
        value = source.value.get_secret_value().encode("utf-8", "surrogatepass")
    elif source.env is not None:
        text = environ.get(source.env)
        if text is None:
            return f"{where} is not set"
        # surrogateescape gives back the bytes the environment held, whatever their encoding.
        value = text.encode("utf-8", "surrogateescape")
    else:
        try:
            value = Path(str(source.file)).read_bytes()
        except OSError as error:
            return f"{where} cannot be read: {error.strerror or error}"
        # `echo secret > file` and `kubectl create secret --from-file` often add a newline.
        value = value[:-2] if value.endswith(b"\r\n") else value.removesuffix(b"\n")
    # An empty secret would let anyone sign; treat it as absent rather than as a key.
    if not value:
        return f"{where} is empty"
    return value


def read_secrets(
    sources: Sequence[SecretSource], now: datetime, environ: Mapping[str, str] | None = None
) -> SecretRead:
    """Read every source now; `environ` defaults to the process environment."""
    results = [
        read_secret(source, os.environ if environ is None else environ) for source in sources
    ]
    return SecretRead(
        values=tuple(result if isinstance(result, bytes) else None for result in results),
        missing=tuple(result for result in results if isinstance(result, str)),
        at=now,
    )


class SecretCache:
    """An endpoint's secrets, read on creation and read again on request, at most so often."""

    def __init__(
        self,
        sources: Sequence[SecretSource],
        now: datetime,
        *,
        environ: Mapping[str, str] | None = None,
        refresh_seconds: float = REFRESH_SECONDS,
    ) -> None:
        self._sources = tuple(sources)
        self._environ = environ
        self._refresh_seconds = refresh_seconds
        self._read = read_secrets(self._sources, now, environ)

    @property
    def current(self) -> SecretRead:
        return self._read

    def refresh(self, now: datetime) -> bool:
        """Read again if the last reading is `refresh_seconds` old; return whether it did.

        A clock that went backwards also reads again, so a reading is never stuck.
        """
        age = (now - self._read.at).total_seconds()
        if 0 <= age < self._refresh_seconds:
            return False
        self._read = read_secrets(self._sources, now, self._environ)
        return True
