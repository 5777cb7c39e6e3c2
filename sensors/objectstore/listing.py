"""The poll mode's diff: two key-ordered streams in, created/changed/removed changes out. Pure.

One stream is the bucket's listing (ListObjectsV2 pages, keys in UTF-8 byte order), the other
the checkpoint of the last listing (the sensor state's "listing" space, scanned in the same
order). `merge` walks both as far as the entries at hand decide, and says how many of each it
used, so the caller refills only what ran out: memory holds two pages, whatever the bucket's
size. Python compares `str` by code point, which is the UTF-8 byte order S3 lists in.

Time, I/O and the event shape are the caller's; `to_change` gives the `ObjectChange` that
`normalizing.to_event` maps onto a CloudEvent. In the sqs mode with a reconcile listing,
`noted` keeps the checkpoint up with what notifications reported, so the listing reports only
what they missed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sensors.objectstore.normalizing import ObjectChange

LISTING = "listing"  # the sensor state's space of the checkpoint: key -> Listed.to_json()


class Kind(StrEnum):
    """What happened to a key between two listings, and the S3-style event name it gets."""

    CREATED = "ObjectCreated:Listed"
    CHANGED = "ObjectCreated:Changed"
    REMOVED = "ObjectRemoved:Unlisted"


@dataclass(frozen=True, slots=True)
class Listed:
    """One object as a listing shows it; `etag` without quotes, `last_modified` RFC 3339."""

    key: str
    etag: str
    size: int
    last_modified: str

    def to_json(self) -> str:
        return json.dumps(
            {"etag": self.etag, "size": self.size, "lastModified": self.last_modified},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, key: str, text: str) -> Listed:
        value = json.loads(text)
        return cls(key, str(value["etag"]), int(value["size"]), str(value["lastModified"]))


@dataclass(frozen=True, slots=True)
class Difference:
    kind: Kind
    key: str
    now: Listed | None  # None when removed
    before: Listed | None  # None when created


@dataclass(frozen=True, slots=True)
class Merged:
    differences: list[Difference]
    listed_used: int
    known_used: int


def merge(
    listed: Sequence[Listed],
    known: Sequence[Listed],
    *,
    listed_done: bool,
    known_done: bool,
) -> Merged:
    """Diff the heads of both streams as far as they decide.

    A key can be decided while both streams have an entry at hand, or when the other stream is
    exhausted (`*_done`: no entries beyond those given). The caller drops the used entries,
    refills the stream that ran out and calls again, until both are done and used up.
    """
    differences: list[Difference] = []
    i = j = 0
    while True:
        if i < len(listed) and j < len(known):
            now, before = listed[i], known[j]
            if now.key == before.key:
                if (now.etag, now.size) != (before.etag, before.size):
                    differences.append(Difference(Kind.CHANGED, now.key, now, before))
                i, j = i + 1, j + 1
            elif now.key < before.key:
                differences.append(Difference(Kind.CREATED, now.key, now, None))
                i += 1
            else:
                differences.append(Difference(Kind.REMOVED, before.key, None, before))
                j += 1
        elif i < len(listed) and known_done:
            differences.append(Difference(Kind.CREATED, listed[i].key, listed[i], None))
            i += 1
        elif j < len(known) and listed_done:
            differences.append(Difference(Kind.REMOVED, known[j].key, None, known[j]))
            j += 1
        else:
            return Merged(differences, i, j)


def to_change(
    difference: Difference, bucket: str, region: str | None, now: datetime
) -> ObjectChange:
    """The change a poll reports. Its record holds what the listings showed, so the event id
    (a digest of the record) is the same if a crash makes the sensor report it again."""
    seen = difference.now or difference.before
    assert seen is not None  # a difference has at least one side
    record: dict[str, object] = {
        "eventName": difference.kind.value,
        "bucket": bucket,
        "key": difference.key,
        "etag": seen.etag,
        "size": seen.size,
        "lastModified": seen.last_modified,
    }
    if difference.before is not None and difference.now is not None:
        record["previousEtag"] = difference.before.etag
    return ObjectChange(
        bucket=bucket,
        key=difference.key,
        event_name=difference.kind.value,
        size=None if difference.now is None else difference.now.size,
        etag=seen.etag,
        version_id=None,
        sequencer=None,
        region=region,
        time=now if difference.now is None else datetime.fromisoformat(seen.last_modified),
        request_id=None,
        host_id=None,
        raw=record,
    )


def noted(changes: Iterable[ObjectChange]) -> tuple[dict[str, str], list[str]]:
    """What reported changes tell the checkpoint: the entries of the objects they created (the
    ETag and size a listing would show) and the keys they removed, the last change of a key
    winning. Other changes (tags, ACLs, restores) leave an object's entry as it was."""
    present: dict[str, str] = {}
    gone: dict[str, None] = {}
    for change in changes:
        family = change.event_name.removeprefix("s3:").partition(":")[0]
        if family == "ObjectCreated" and change.etag is not None and change.size is not None:
            stamp = "" if change.time is None else change.time.isoformat()
            present[change.key] = Listed(change.key, change.etag, change.size, stamp).to_json()
            gone.pop(change.key, None)
        elif family == "ObjectRemoved":
            present.pop(change.key, None)
            gone[change.key] = None
    return present, list(gone)
