"""`spec.objectstore` validation: each mistake is named with its field and what is accepted."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from sensors.objectstore.config import ObjectStoreConfig
from sensors.objectstore.normalizing import KeyEncoding


def problem(spec: dict[str, Any]) -> tuple[str, str]:
    with pytest.raises(ValidationError) as caught:
        ObjectStoreConfig.model_validate(spec)
    error = caught.value.errors()[0]
    return ".".join(str(part) for part in error["loc"]), error["msg"]


def test_a_full_sqs_spec_is_accepted_with_its_defaults() -> None:
    """The usual AWS spec loads; unspecified parts take their documented defaults."""
    config = ObjectStoreConfig.model_validate(
        {
            "mode": "sqs",
            "bucket": "raw-data",
            "events": ["s3:ObjectCreated:*"],
            "keyEncoding": "raw",
            "sqs": {"queueName": "uploads"},
        }
    )
    assert config.sqs is not None
    assert (config.sqs.waitSeconds, config.sqs.maxMessages) == (20, 10)
    assert config.keyEncoding is KeyEncoding.RAW
    assert config.dedupe.windowSeconds == 86_400.0


@pytest.mark.parametrize(
    ("spec", "where", "message"),
    [
        ({"mode": "poll"}, "", "Value error, mode poll lists one bucket; give bucket"),
        (
            {"mode": "sqs"},
            "",
            "Value error, mode sqs reads a queue; give sqs.queueUrl or sqs.queueName",
        ),
        ({"mode": "push"}, "", "Value error, mode push listens on a path; give push.path"),
        (
            {"mode": "poll", "bucket": "Raw_Data"},
            "bucket",
            "Value error, 'Raw_Data' is not an S3 bucket name; use 3-63 lower-case letters,"
            " digits, '.' and '-', starting and ending with a letter or digit",
        ),
        (
            {"mode": "poll", "bucket": "raw", "events": ["s3:ObjectMade:*"]},
            "events",
            "Value error, 's3:ObjectMade:*' is not an S3 event name; write an S3 event name"
            " such as 's3:ObjectCreated:*', 's3:ObjectCreated:Put' or 's3:ObjectRemoved:Delete';"
            " the families are ObjectCreated, ObjectRemoved, ObjectRestore, ObjectTagging,"
            " ObjectAcl, ObjectAccessed, Replication, LifecycleExpiration, LifecycleTransition,"
            " IntelligentTiering, ReducedRedundancyLostObject",
        ),
        (
            {"mode": "poll", "bucket": "raw", "events": ["s3:ObjectCreated:P*"]},
            "events",
            "Value error, 's3:ObjectCreated:P*': '*' stands alone after the family,"
            " e.g. 's3:ObjectCreated:*'",
        ),
        (
            {"mode": "sqs", "sqs": {"queueName": "q", "queueUrl": "http://x/q"}},
            "sqs",
            "Value error, give exactly one of queueUrl or queueName; got both",
        ),
        (
            {"mode": "sqs", "sqs": {"queueUrl": "sqs.eu-west-1/q"}},
            "sqs",
            "Value error, queueUrl: 'sqs.eu-west-1/q' is not an http(s) URL",
        ),
        (
            {"mode": "poll", "bucket": "raw", "push": {"path": "p"}},
            "",
            "Value error, push applies to mode push, not to mode poll",
        ),
        (
            {"mode": "poll", "bucket": "raw", "minSize": 5, "maxSize": 4},
            "",
            "Value error, minSize 5 is larger than maxSize 4; no object fits",
        ),
        (
            {"mode": "poll", "bucket": "raw", "endpointUrl": "127.0.0.1:9000"},
            "endpointUrl",
            "Value error, '127.0.0.1:9000' is not an http(s) URL, e.g. 'http://127.0.0.1:9000'",
        ),
        (
            {"mode": "push", "push": {"path": "/minio"}},
            "push.path",
            "Value error, '/minio' is not a webhook path; use letters, digits and . _ ~ - in"
            " segments separated by single /, without a leading or trailing /,"
            " e.g. 'minio/uploads'",
        ),
        (
            {"mode": "push", "push": {"path": "minio", "snsHosts": ["http://sns"]}},
            "push.snsHosts",
            "Value error, 'http://sns' is not a host name; write e.g."
            " 'sns.eu-west-1.amazonaws.com', 'sns.*.amazonaws.com' or '127.0.0.1:8080'",
        ),
        (
            {"mode": "sqs", "sqs": {"queueName": "q", "reconcileSeconds": 600}},
            "",
            "Value error, sqs.reconcileSeconds lists one bucket; give bucket",
        ),
        (
            {"mode": "sqs", "bucket": "raw", "sqs": {"queueName": "q", "reconcileSeconds": 0}},
            "sqs.reconcileSeconds",
            "Input should be greater than 0",
        ),
        (
            {"mode": "poll", "bucket": "raw", "secretAccessKey": "x"},
            "secretAccessKey",
            "Extra inputs are not permitted",
        ),
    ],
)
def test_a_bad_spec_is_refused_with_the_field_and_what_is_accepted(
    spec: dict[str, Any], where: str, message: str
) -> None:
    """Each mistake gives its field path and a message saying what to write instead."""
    assert problem(spec) == (where, message)
