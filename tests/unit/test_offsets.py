"""Kafka commit bookkeeping: the committed offset never passes an unsettled record."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from eventflow.bus.offsets import PartitionLedger


def test_nothing_to_commit_before_any_record():
    """A partition that yielded nothing has no commit point."""
    ledger = PartitionLedger(("t", 0))
    assert ledger.commit_point() is None
    assert not ledger.dirty()


def test_commit_point_stops_at_the_oldest_unsettled_record():
    """Settling 5 and 7 of 5..7 commits up to 6 (the next to read), not past it."""
    ledger = PartitionLedger(("t", 0))
    for offset in (5, 6, 7):
        ledger.track(offset)
    ledger.settle(5)
    ledger.settle(7)
    assert ledger.commit_point() == 6
    ledger.settle(6)
    assert ledger.commit_point() == 8


def test_dirty_until_the_commit_point_is_recorded():
    """A moved commit point is dirty until `committed` records it."""
    ledger = PartitionLedger(("t", 0))
    ledger.track(0)
    ledger.settle(0)
    assert ledger.dirty()
    ledger.committed = ledger.commit_point()
    assert not ledger.dirty()


@given(st.lists(st.integers(min_value=0, max_value=50), min_size=1, unique=True), st.data())
def test_commit_point_never_passes_an_unsettled_offset(offsets, data):
    """Whatever is settled, every offset at or past the commit point that was unsettled stays."""
    ledger = PartitionLedger(("t", 0))
    for offset in sorted(offsets):
        ledger.track(offset)
    settled = data.draw(st.sets(st.sampled_from(offsets)))
    for offset in settled:
        ledger.settle(offset)
    point = ledger.commit_point()
    assert point is not None
    assert all(offset >= point for offset in set(offsets) - settled)
    if settled == set(offsets):
        assert point == max(offsets) + 1
