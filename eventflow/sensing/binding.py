"""CloudEvents binary content mode, shared by the HTTP, Kafka and NATS bindings.

In binary mode a transport carries the attributes as headers (`ce-id`, `ce_type`, ...) and the
data as the body. Each binding names and encodes its headers its own way (HTTP percent-encodes,
Kafka carries bytes) and finds the data by content type; once a sensor has the attributes as
text and the data decoded, building the event is the same everywhere, and lives here. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from eventflow.events import Event, ExtensionValue, parse_time

# Headers that carry a core attribute; any other header with the binding's prefix is an extension.
CORE_ATTRIBUTES = frozenset(
    {"specversion", "id", "source", "type", "subject", "time", "dataschema"}
)


def binary_event(
    attributes: Iterable[tuple[str, str]], *, content_type: str | None, data: Any
) -> Event:
    """The event of binary-mode `attributes` (names without the binding's prefix) and data.

    Missing attributes are left empty for `Event` to reject with the CloudEvents rule they
    break, so the user reads which one is missing.
    """
    core: dict[str, str] = {}
    extensions: dict[str, ExtensionValue] = {}
    for name, value in attributes:
        if name in CORE_ATTRIBUTES:
            core[name] = value
        else:
            extensions[name] = value
    time = core.get("time")
    return Event(
        specversion=core.get("specversion", ""),
        id=core.get("id", ""),
        source=core.get("source", ""),
        type=core.get("type", ""),
        subject=core.get("subject"),
        time=parse_time(time) if time is not None else None,
        dataschema=core.get("dataschema"),
        datacontenttype=content_type,
        data=data,
        extensions=extensions,
    )
