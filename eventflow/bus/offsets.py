"""Which offset of a Kafka partition may be committed: the pure bookkeeping of the Kafka bus.

A consumer hands out records of a partition in offset order, but the engine settles them in
any order. The committed offset may only move past records that are all settled, so that a
crash redelivers every unsettled one. This module does no I/O and knows no Kafka client.
"""

from __future__ import annotations

from typing import Any


class PartitionLedger:
    """The offsets of one assigned partition yielded and not yet settled, and what to commit."""

    __slots__ = ("committed", "highest", "tp", "unsettled")

    def __init__(self, tp: Any) -> None:
        self.tp = tp
        self.unsettled: set[int] = set()
        self.highest = -1
        self.committed: int | None = None

    def track(self, offset: int) -> None:
        self.unsettled.add(offset)
        self.highest = max(self.highest, offset)

    def settle(self, offset: int) -> None:
        self.unsettled.discard(offset)

    def commit_point(self) -> int | None:
        """The offset to commit: the oldest unsettled one, or past the newest if all are."""
        if self.highest < 0:
            return None
        return min(self.unsettled) if self.unsettled else self.highest + 1

    def dirty(self) -> bool:
        point = self.commit_point()
        return point is not None and point != self.committed
