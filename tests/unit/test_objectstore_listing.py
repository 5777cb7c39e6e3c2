"""The poll diff: merging a listing with its checkpoint, page by page."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from sensors.objectstore.listing import Difference, Kind, Listed, merge, noted, to_change
from sensors.objectstore.normalizing import ObjectChange, to_event

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def entry(key: str, etag: str = "e1", size: int = 1) -> Listed:
    return Listed(key, etag, size, "2024-05-01T11:00:00+00:00")


def merge_in_chunks(
    listed: list[Listed], known: list[Listed], listed_chunk: int, known_chunk: int
) -> list[Difference]:
    """Drive `merge` the way the sensor does: refill whichever stream ran out."""
    out: list[Difference] = []
    listed_buffer: list[Listed] = []
    known_buffer: list[Listed] = []
    listed_at = known_at = 0
    while True:
        if not listed_buffer and listed_at < len(listed):
            listed_buffer = listed[listed_at : listed_at + listed_chunk]
            listed_at += listed_chunk
        if not known_buffer and known_at < len(known):
            known_buffer = known[known_at : known_at + known_chunk]
            known_at += known_chunk
        listed_done = listed_at >= len(listed)
        known_done = known_at >= len(known)
        merged = merge(listed_buffer, known_buffer, listed_done=listed_done, known_done=known_done)
        out.extend(merged.differences)
        listed_buffer = listed_buffer[merged.listed_used :]
        known_buffer = known_buffer[merged.known_used :]
        if listed_done and known_done and not listed_buffer and not known_buffer:
            return out


def test_merge_reports_created_changed_and_removed_in_key_order() -> None:
    """New keys are created, keys whose ETag or size differ changed, missing keys removed."""
    listed = [entry("a"), entry("b", "e2"), entry("d"), entry("e", size=5)]
    known = [entry("b"), entry("c"), entry("d"), entry("e")]
    merged = merge(listed, known, listed_done=True, known_done=True)
    assert [(d.kind, d.key) for d in merged.differences] == [
        (Kind.CREATED, "a"),
        (Kind.CHANGED, "b"),
        (Kind.REMOVED, "c"),
        (Kind.CHANGED, "e"),
    ]
    assert (merged.listed_used, merged.known_used) == (4, 4)


def test_merge_stops_where_an_unfinished_stream_runs_out() -> None:
    """Keys past the end of an unfinished stream's buffer are left for the next call."""
    merged = merge([entry("a"), entry("z")], [entry("b")], listed_done=False, known_done=False)
    assert [(d.kind, d.key) for d in merged.differences] == [
        (Kind.CREATED, "a"),
        (Kind.REMOVED, "b"),
    ]
    assert (merged.listed_used, merged.known_used) == (1, 1)
    waiting = merge([entry("z")], [], listed_done=False, known_done=False)
    assert (waiting.differences, waiting.listed_used, waiting.known_used) == ([], 0, 0)


def test_merge_orders_keys_as_utf8_bytes() -> None:
    """'é' (U+00E9) sorts after 'z' as S3 lists it, so an unchanged 'é' is no difference."""
    keys = sorted(["z", "é", "Z", "a b", "a+b", "a%2Fb", "a/b", "😀", "\uff5a"], key=str.encode)
    listed = [entry(key) for key in keys]
    merged = merge(listed, listed, listed_done=True, known_done=True)
    assert merged.differences == []


keys = st.lists(st.text(min_size=1, max_size=3), unique=True).map(sorted)


@given(
    keys,
    keys,
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=1, max_value=4),
    st.data(),
)
def test_merge_in_any_chunks_equals_the_set_difference(
    listed_keys: list[str],
    known_keys: list[str],
    listed_chunk: int,
    known_chunk: int,
    data: st.DataObject,
) -> None:
    """However the pages fall, the differences are exactly those of the two key sets."""
    etags = {key: data.draw(st.sampled_from(["e1", "e2"])) for key in listed_keys}
    listed = [entry(key, etags[key]) for key in listed_keys]
    known = [entry(key) for key in known_keys]
    got = merge_in_chunks(listed, known, listed_chunk, known_chunk)
    expected = sorted(
        [(Kind.CREATED, key) for key in set(listed_keys) - set(known_keys)]
        + [(Kind.REMOVED, key) for key in set(known_keys) - set(listed_keys)]
        + [(Kind.CHANGED, key) for key in set(listed_keys) & set(known_keys) if etags[key] != "e1"],
        key=lambda pair: pair[1],
    )
    assert [(d.kind, d.key) for d in got] == expected


def test_listed_round_trips_through_its_json() -> None:
    """A checkpoint entry reads back as the listing entry it was written from."""
    item = entry("k", "abc", 7)
    assert Listed.from_json("k", item.to_json()) == item


def test_a_polled_change_gives_the_same_event_id_when_reported_again() -> None:
    """The id is a digest of what the listings showed, not of the time it was reported."""
    created = Difference(Kind.CREATED, "in/a b.csv", entry("in/a b.csv"), None)
    first = to_event(to_change(created, "raw-data", "eu-west-1", NOW))
    again = to_event(to_change(created, "raw-data", "eu-west-1", datetime(2030, 1, 1, tzinfo=UTC)))
    assert first.id == again.id
    assert first.type == "com.amazonaws.s3.ObjectCreated:Listed"
    assert first.subject == "in/a b.csv"
    assert first.data["size"] == 1  # type: ignore[index]


def test_a_removed_object_is_reported_at_now_without_a_size() -> None:
    """A removal carries the ETag it had, no size, and the time it was noticed."""
    removed = Difference(Kind.REMOVED, "k", None, entry("k", "old", 9))
    change = to_change(removed, "raw-data", None, NOW)
    assert (change.event_name, change.size, change.etag, change.time) == (
        "ObjectRemoved:Unlisted",
        None,
        "old",
        NOW,
    )


def notified(
    key: str, event_name: str, etag: str | None = "e1", size: int | None = 3
) -> ObjectChange:
    return ObjectChange(
        bucket="raw",
        key=key,
        event_name=event_name,
        size=size,
        etag=etag,
        version_id=None,
        sequencer=None,
        region=None,
        time=NOW,
        request_id=None,
        host_id=None,
        raw={},
    )


def test_notified_changes_keep_the_checkpoint_as_a_listing_would_show_it() -> None:
    """Creations put the listing's entry (last one of a key wins), removals delete it, other
    changes and creations without an ETag or size leave the checkpoint alone."""
    present, gone = noted(
        [
            notified("a", "ObjectCreated:Put", etag="old"),
            notified("a", "s3:ObjectCreated:Copy", etag="new"),
            notified("b", "ObjectCreated:Put"),
            notified("b", "ObjectRemoved:Delete", etag=None, size=None),
            notified("c", "ObjectRemoved:DeleteMarkerCreated", etag=None, size=None),
            notified("c", "ObjectCreated:Put", etag="c1"),
            notified("d", "ObjectTagging:Put"),
            notified("e", "ObjectCreated:Put", etag=None),
        ]
    )
    assert {key: Listed.from_json(key, value) for key, value in present.items()} == {
        "a": Listed("a", "new", 3, NOW.isoformat()),
        "c": Listed("c", "c1", 3, NOW.isoformat()),
    }
    assert gone == ["b"]
