"""Which request headers a webhook event keeps, and under which name: the pure header rules.

Templates (`event.*`, `dedupe.deliveryId`) see every header but the credential ones; the
stored event keeps only an allow-list, each kept header as a CloudEvents extension attribute
whose name is the header's name lower-cased without its non-alphanumerics
(`X-GitHub-Event` -> `xgithubevent`), so a trigger filter reads `extensions.xgithubevent`.
Extensions rather than a data field, so that `data` stays exactly the body the provider sent.
A header whose value is a credential (Authorization, Cookie, a signature) never reaches an
event, whatever the allow-list says. This module does no I/O; it does not read requests.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from eventflow.events import CORE_ATTRIBUTES, RECEIVED_EXTENSION, SENSOR_EXTENSION

# Headers that carry a credential in any scheme, or a value derived from one.
ALWAYS_SECRET = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
# The signature headers of each preset; GitHub also sends the legacy SHA-1 one.
PRESET_SECRET: Mapping[str, tuple[str, ...]] = {
    "github": ("x-hub-signature-256", "x-hub-signature"),
    "gitlab": ("x-gitlab-token",),
    "bitbucket": ("x-hub-signature",),
    "stripe": ("stripe-signature",),
    "slack": ("x-slack-signature",),
}
# What a trigger usually needs from each provider: the event kind and the delivery id.
PRESET_KEPT: Mapping[str, tuple[str, ...]] = {
    "github": ("x-github-event", "x-github-delivery", "x-github-hook-id"),
    "gitlab": ("x-gitlab-event", "x-gitlab-event-uuid", "x-gitlab-instance"),
    "bitbucket": ("x-event-key", "x-request-uuid", "x-hook-uuid"),
    "stripe": (),
    "slack": (),
}
_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
_NOT_ALPHANUMERIC = re.compile(r"[^a-z0-9]")
_MAX_EXTENSION = 20
_RESERVED = frozenset({"data", "datacontenttype", SENSOR_EXTENSION, RECEIVED_EXTENSION})


def extension_name(header: str) -> str:
    """`X-GitHub-Event` -> `xgithubevent`: the CloudEvents extension a kept header becomes."""
    return _NOT_ALPHANUMERIC.sub("", header.lower())


def kept_extensions(headers: Sequence[str], secret: frozenset[str]) -> dict[str, str]:
    """Header name -> extension name for an allow-list; ValueError naming the bad entry.

    `secret` holds the lower-cased credential headers of the endpoint: they are refused.
    """
    kept: dict[str, str] = {}
    taken: dict[str, str] = {}
    for index, raw in enumerate(headers):
        where = f"headers[{index}]"
        header = raw.strip().lower()
        if not _HEADER_NAME.match(header):
            raise ValueError(f"{where}: {raw!r} is not an HTTP header name, e.g. x-github-event")
        if header in secret or header in ALWAYS_SECRET:
            raise ValueError(
                f"{where}: {raw!r} carries a credential and never reaches an event;"
                " remove it from headers"
            )
        name = extension_name(header)
        if not name or len(name) > _MAX_EXTENSION:
            raise ValueError(
                f"{where}: {raw!r} would become the extension {name!r}; CloudEvents extension"
                f" names are 1-{_MAX_EXTENSION} letters or digits, so this header cannot be kept;"
                " read it in an event template instead"
            )
        if name in CORE_ATTRIBUTES or name in _RESERVED or name.startswith("eventflow"):
            raise ValueError(
                f"{where}: {raw!r} would become the extension {name!r}, a name CloudEvents or"
                " eventflow reserve; read it in an event template instead"
            )
        if name in taken and taken[name] != header:
            raise ValueError(
                f"{where}: {raw!r} and {taken[name]!r} would both become the extension"
                f" {name!r}; keep one of them"
            )
        taken[name] = header
        kept[header] = name
    return kept


def header_extensions(headers: Mapping[str, str], kept: Mapping[str, str]) -> dict[str, str]:
    """The extensions the kept headers present in a request (lower-cased names) become."""
    return {extension: headers[header] for header, extension in kept.items() if header in headers}


def without_secrets(headers: Mapping[str, str], secret: frozenset[str]) -> dict[str, str]:
    """The headers minus every credential one: what templates may read. Names lower-cased."""
    return {
        lowered: value
        for name, value in headers.items()
        if (lowered := name.lower()) not in secret and lowered not in ALWAYS_SECRET
    }
