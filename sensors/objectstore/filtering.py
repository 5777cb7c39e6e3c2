"""Which object changes a sensor reports, and how a redelivered one is recognized: pure rules.

`admits` applies the `spec.objectstore` filters (bucket, prefix, suffix, event names, size) to
one change. `seen_key` and `is_older` are the two rules against duplicates and disorder that
the sensor keeps in its state: a record already reported, and a change of a key older than one
already reported. This module reads no state and does no I/O; the sensor does both.
"""

from __future__ import annotations

from collections.abc import Sequence

from sensors.objectstore.config import NotificationFilters
from sensors.objectstore.normalizing import ObjectChange, sequencer_order


def event_matches(patterns: Sequence[str], event_name: str) -> bool:
    """Whether `event_name` ('ObjectCreated:Put' or MinIO's 's3:ObjectCreated:Put') is one of
    `patterns` ('s3:ObjectCreated:*', 's3:ObjectRemoved:Delete'); no patterns admit all."""
    if not patterns:
        return True
    name = event_name.removeprefix("s3:")
    for pattern in patterns:
        wanted = pattern.removeprefix("s3:")
        if wanted.endswith(":*") and name.startswith(wanted[:-1]):
            return True
        if name == wanted:
            return True
    return False


def admits(config: NotificationFilters, change: ObjectChange) -> bool:
    """Whether the sensor reports `change`. A change without a size (a deletion) passes the
    size filters: the size it had is not known."""
    if config.bucket is not None and change.bucket != config.bucket:
        return False
    if not (change.key.startswith(config.prefix) and change.key.endswith(config.suffix)):
        return False
    if not event_matches(config.events, change.event_name):
        return False
    if change.size is not None:
        if config.minSize is not None and change.size < config.minSize:
            return False
        if config.maxSize is not None and change.size > config.maxSize:
            return False
    return True


def seen_key(change: ObjectChange, event_id: str) -> str:
    """The key a reported record is remembered by in the "seen" space.

    The event id already is the record's identity (request id, sequencer and key; or a digest
    of the whole record), so a redelivery, raw or SNS-wrapped, maps to the same key. The
    sequencer alone is not enough: some servers send the same sequencer ("0") for every change.
    """
    return f"{change.bucket}/{event_id}"


def newest_key(change: ObjectChange) -> str:
    """The key under which the newest reported sequencer of an object is kept."""
    return f"{change.bucket}/{change.key}"


def is_older(sequencer: str | None, newest: str | None) -> bool:
    """Whether a change with `sequencer` is older than the `newest` one already reported.

    Changes without a sequencer, or with one that is not hex, cannot be ordered: they count as
    not older, since dropping a change is worse than reporting it out of order.
    """
    if sequencer is None or newest is None:
        return False
    try:
        return sequencer_order(sequencer, newest) < 0
    except ValueError:
        return False
