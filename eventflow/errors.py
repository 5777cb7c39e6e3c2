"""The exception tree of eventflow.

    EventflowError
    ├── ConfigError              settings or resources a user must fix before eventflow starts
    │   └── ResourceError        one or more `file:line: kind/name: field.path: message` problems
    ├── InvalidEventError        an event that breaks CloudEvents 1.0 (answered with HTTP 400)
    ├── ExpressionError          a CEL expression that does not compile, or fails on an event
    ├── TemporaryError           worth retrying: the bus or store is unreachable for now
    │   └── BusUnavailableError  the bus did not take an event (answered with HTTP 503)
    └── PermanentError           retrying will not help (a step command that does not exist)

Library errors are chained with `raise ... from error` so the cause stays in the traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

STOPPING = "eventflow is stopping; send the event again"
"""What a sender is told when eventflow stops taking events, whichever process answers."""


class EventflowError(Exception):
    """Base of every error eventflow raises on purpose."""


class ConfigError(EventflowError):
    """Settings or resources that a user must fix before eventflow can start."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem in a resource file, located for the user."""

    file: str
    line: int
    resource: str  # "Kind/name", or "-" when the document has no usable kind/name
    path: str  # dotted field path, "" for the document itself
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}: {self.resource}: {where}{self.message}"


class ResourceError(ConfigError):
    """Resource files with problems; `problems` holds every one found, not only the first."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


class InvalidEventError(EventflowError):
    """An event that is not a valid CloudEvent; the message names the attribute."""


class ExpressionError(EventflowError):
    """A CEL expression or `{{ }}` template that does not compile or cannot be evaluated."""


class TemporaryError(EventflowError):
    """A failure worth retrying after `delay` seconds."""

    def __init__(self, message: str, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


class BusUnavailableError(TemporaryError):
    """The bus could not durably take an event."""


class PermanentError(EventflowError):
    """A failure that retrying will not mend."""
