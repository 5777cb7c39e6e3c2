"""The object-store sensor's filters and its rules against duplicates and disorder."""

from __future__ import annotations

from typing import Any

import pytest

from sensors.objectstore.config import ObjectStoreConfig
from sensors.objectstore.filtering import admits, event_matches, is_older, seen_key
from sensors.objectstore.normalizing import ObjectChange


def change(**fields: Any) -> ObjectChange:
    values: dict[str, Any] = {
        "bucket": "raw-data",
        "key": "in/a.csv",
        "event_name": "ObjectCreated:Put",
        "size": 10,
        "etag": "e",
        "version_id": None,
        "sequencer": "0A",
        "region": "eu-west-1",
        "time": None,
        "request_id": "R",
        "host_id": None,
        "raw": {},
    }
    values.update(fields)
    return ObjectChange(**values)


def config(**fields: Any) -> ObjectStoreConfig:
    return ObjectStoreConfig.model_validate({"mode": "poll", "bucket": "raw-data", **fields})


@pytest.mark.parametrize(
    ("patterns", "name", "expected"),
    [
        ([], "ObjectRemoved:Delete", True),
        (["s3:ObjectCreated:*"], "ObjectCreated:Put", True),
        (["s3:ObjectCreated:*"], "s3:ObjectCreated:Copy", True),
        (["s3:ObjectCreated:*"], "ObjectCreated:Listed", True),
        (["s3:ObjectCreated:*"], "ObjectRemoved:Delete", False),
        (["s3:ObjectCreated:Put"], "ObjectCreated:Post", False),
        (["s3:ObjectRemoved:Delete", "ObjectCreated:Put"], "ObjectCreated:Put", True),
        (["s3:ObjectCreated:*"], "ObjectCreatedX:Put", False),
    ],
)
def test_event_patterns_match_by_family_or_exact_name(
    patterns: list[str], name: str, expected: bool
) -> None:
    """'s3:Family:*' admits the family, a full name admits itself, MinIO's s3: is ignored."""
    assert event_matches(patterns, name) is expected


@pytest.mark.parametrize(
    ("fields", "kwargs", "expected"),
    [
        ({}, {}, True),
        ({}, {"bucket": "other-bucket"}, False),
        ({"prefix": "in/"}, {}, True),
        ({"prefix": "out/"}, {}, False),
        ({"suffix": ".csv"}, {}, True),
        ({"suffix": ".json"}, {}, False),
        ({"minSize": 11}, {}, False),
        ({"maxSize": 9}, {}, False),
        ({"minSize": 10, "maxSize": 10}, {}, True),
        ({"minSize": 11}, {"size": None, "event_name": "ObjectRemoved:Delete"}, True),
        ({"events": ["s3:ObjectRemoved:*"]}, {}, False),
    ],
)
def test_filters_admit_only_matching_changes(
    fields: dict[str, Any], kwargs: dict[str, Any], expected: bool
) -> None:
    """Bucket, prefix, suffix, event names and size each exclude; a deletion has no size."""
    assert admits(config(**fields), change(**kwargs)) is expected


def test_a_redelivered_record_has_the_same_seen_key_and_another_bucket_not() -> None:
    """The seen key is the bucket and the event id, nothing that varies per delivery."""
    assert seen_key(change(), "id-1") == seen_key(change(), "id-1") == "raw-data/id-1"
    assert seen_key(change(bucket="other-bkt"), "id-1") != seen_key(change(), "id-1")


@pytest.mark.parametrize(
    ("sequencer", "newest", "expected"),
    [
        ("0A", "0B", True),
        ("0B", "0A", False),
        ("0A", "0A", False),
        ("0055AED6DCD90281E5", "0055AED6DCD90281E500", False),
        ("0055AED6DCD90281E4", "0055AED6DCD90281E500", True),
        (None, "0A", False),
        ("0A", None, False),
        ("not-hex", "0A", False),
    ],
)
def test_only_a_smaller_comparable_sequencer_is_older(
    sequencer: str | None, newest: str | None, expected: bool
) -> None:
    """Unknown or unorderable sequencers never drop a change."""
    assert is_older(sequencer, newest) is expected
