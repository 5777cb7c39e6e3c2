"""The object-store sensor's pure core: notifications -> object changes -> CloudEvents."""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventflow.events import Event
from sensors.objectstore.normalizing import (
    ACCEPTED_FORMATS,
    DecodeError,
    KeyEncoding,
    ObjectChange,
    decode_message,
    sequencer_order,
    to_event,
)

# As AWS S3 sends it to SQS (docs: "Event message structure"), for a versioned bucket.
S3_PUT: dict[str, Any] = {
    "Records": [
        {
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "awsRegion": "eu-west-1",
            "eventTime": "2024-05-01T12:00:00.123Z",
            "eventName": "ObjectCreated:Put",
            "userIdentity": {"principalId": "AWS:AIDAJDPLRKLG7UEXAMPLE"},
            "requestParameters": {"sourceIPAddress": "203.0.113.7"},
            "responseElements": {
                "x-amz-request-id": "C3D13FE58DE4C810",
                "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD",
            },
            "s3": {
                "s3SchemaVersion": "1.0",
                "configurationId": "uploads",
                "bucket": {
                    "name": "raw-data",
                    "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                    "arn": "arn:aws:s3:::raw-data",
                },
                "object": {
                    "key": "incoming/2024/report+may.csv",
                    "size": 1024,
                    "eTag": "d41d8cd98f00b204e9800998ecf8427e",
                    "versionId": "096fKKXTRTtl3on89fVO.nfljtsv6qko",
                    "sequencer": "0055AED6DCD90281E5",
                },
            },
        }
    ]
}

# MinIO's webhook target (the Kafka and NATS targets send the same document).
MINIO_PUT: dict[str, Any] = {
    "EventName": "s3:ObjectCreated:Put",
    "Key": "images/my photo.jpg",
    "Records": [
        {
            "eventVersion": "2.0",
            "eventSource": "minio:s3",
            "awsRegion": "",
            "eventTime": "2024-05-01T12:00:00.456Z",
            "eventName": "s3:ObjectCreated:Put",
            "userIdentity": {"principalId": "minioadmin"},
            "requestParameters": {
                "principalId": "minioadmin",
                "region": "",
                "sourceIPAddress": "172.17.0.1",
            },
            "responseElements": {
                "x-amz-id-2": "dd9025bab4ad464b049177c95eb6ebf374d3b3fd1af9251148b658df7ac2e3e8",
                "x-amz-request-id": "17CB3A0A0C9B8E6F",
                "x-minio-deployment-id": "6d7a6e0b-6f5c-4b0e-9a43-2b1f0e6c8d11",
                "x-minio-origin-endpoint": "http://172.17.0.2:9000",
            },
            "s3": {
                "s3SchemaVersion": "1.0",
                "configurationId": "Config",
                "bucket": {
                    "name": "images",
                    "ownerIdentity": {"principalId": "minioadmin"},
                    "arn": "arn:aws:s3:::images",
                },
                "object": {
                    "key": "my+photo.jpg",
                    "size": 2048,
                    "eTag": "0b8bd9b4b8a4a4b8c5a7d5e0f1d2c3b4",
                    "contentType": "image/jpeg",
                    "userMetadata": {"content-type": "image/jpeg"},
                    "versionId": "",
                    "sequencer": "17CB3A0A0D4C1B2A",
                },
            },
            "source": {
                "host": "172.17.0.1",
                "port": "",
                "userAgent": "MinIO (linux; amd64) minio-go/v7.0.70",
            },
        }
    ],
}

# What S3 sends once when a notification configuration is saved.
TEST_EVENT: dict[str, Any] = {
    "Service": "Amazon S3",
    "Event": "s3:TestEvent",
    "Time": "2024-05-01T11:59:00.000Z",
    "Bucket": "raw-data",
    "RequestId": "5582815E1AEA5ADF",
    "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE",
}

# EventBridge "Object Created" (docs: "EventBridge event message structure").
EB_CREATED: dict[str, Any] = {
    "version": "0",
    "id": "17793124-05d4-b198-2fde-7ededc63b103",
    "detail-type": "Object Created",
    "source": "aws.s3",
    "account": "111122223333",
    "time": "2024-05-01T12:00:01Z",
    "region": "ca-central-1",
    "resources": ["arn:aws:s3:::raw-data"],
    "detail": {
        "version": "0",
        "bucket": {"name": "raw-data"},
        "object": {
            "key": "incoming/report may.csv",
            "size": 5,
            "etag": "b1946ac92492d2347c6235b4d2611184",
            "version-id": "IYV3p45BT0ac8hjHg1houSdS1a.Mce4r",
            "sequencer": "00617F08299329D189",
        },
        "request-id": "N4N7GDK58NMKJ12R",
        "requester": "123456789012",
        "source-ip-address": "1.2.3.4",
        "reason": "PutObject",
    },
}

EB_DELETED: dict[str, Any] = {
    "version": "0",
    "id": "2ee9cc15-d022-99ea-1fb8-1b1bac4850f9",
    "detail-type": "Object Deleted",
    "source": "aws.s3",
    "account": "111122223333",
    "time": "2024-05-01T12:05:00Z",
    "region": "ca-central-1",
    "resources": ["arn:aws:s3:::raw-data"],
    "detail": {
        "version": "0",
        "bucket": {"name": "raw-data"},
        "object": {
            "key": "incoming/report may.csv",
            "version-id": "1QW9g1Z99LUNbvaaYVpW9xDlOLU.qxgF",
            "sequencer": "00617F0A1B2C3D4E5F",
        },
        "request-id": "0BH729840619AG5K",
        "requester": "123456789012",
        "source-ip-address": "1.2.3.4",
        "reason": "DeleteObject",
        "deletion-type": "Delete Marker Created",
    },
}


def s3_message(*records: dict[str, Any]) -> dict[str, Any]:
    return {"Records": list(records)}


def put_record(**object_fields: Any) -> dict[str, Any]:
    """The S3_PUT record with some of s3.object replaced (a None value removes the field)."""
    record: dict[str, Any] = copy.deepcopy(S3_PUT["Records"][0])
    for name, value in object_fields.items():
        if value is None:
            record["s3"]["object"].pop(name, None)
        else:
            record["s3"]["object"][name] = value
    return record


def record_with(event_name: str, request_id: str, **object_fields: Any) -> dict[str, Any]:
    record = put_record(**object_fields)
    record["eventName"] = event_name
    record["responseElements"]["x-amz-request-id"] = request_id
    return record


def sns(message: dict[str, Any] | str, kind: str = "Notification") -> dict[str, Any]:
    """An SNS envelope as SQS receives it without raw message delivery."""
    return {
        "Type": kind,
        "MessageId": "a1b2c3d4-5678-90ab-cdef-EXAMPLE11111",
        "TopicArn": "arn:aws:sns:eu-west-1:111122223333:raw-data-events",
        "Subject": "Amazon S3 Notification",
        "Message": message if isinstance(message, str) else json.dumps(message),
        "Timestamp": "2024-05-01T12:00:00.200Z",
        "SignatureVersion": "1",
        "Signature": "EXAMPLEpH+DcEwjAPg8O9mY8dReBSwksfg2S7WKQcikcNKWLQjwu6A4VbeS0QHVCkhRS7fUQvi2egU3N858fiTDN6bkkOxYDVrY0Ad8L10Hs3zH81mtnPk5uvvolIC1CXGu43obcgFxeL3khZl8IKvO61GWB6jI9b5+gLPoBc1Q=",
        "SigningCertURL": "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0000000000000000000000.pem",
        "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=arn:aws:sns:eu-west-1:111122223333:raw-data-events:EXAMPLE",
    }


def eventbridge(document: dict[str, Any], **detail: Any) -> dict[str, Any]:
    """An EventBridge event with some detail fields replaced (None removes the field)."""
    event = copy.deepcopy(document)
    for name, value in detail.items():
        if value is None:
            event["detail"].pop(name, None)
        else:
            event["detail"][name] = value
    return event


def decode(document: Any, encoding: KeyEncoding | None = None) -> list[ObjectChange]:
    return decode_message(json.dumps(document), key_encoding=encoding)


def only(document: Any, encoding: KeyEncoding | None = None) -> ObjectChange:
    changes = decode(document, encoding)
    assert len(changes) == 1
    return changes[0]


def rejected(body: str | bytes, encoding: KeyEncoding | None = None) -> str:
    with pytest.raises(DecodeError) as caught:
        decode_message(body, key_encoding=encoding)
    return str(caught.value)


def key_document(key: str) -> dict[str, Any]:
    return s3_message(put_record(key=key))


# --- S3 notifications --------------------------------------------------------------------


def test_s3_put_record_becomes_one_change_with_every_field() -> None:
    """An AWS S3 Put record gives bucket, decoded key, size, ETag, version, sequencer and ids."""
    assert only(S3_PUT) == ObjectChange(
        bucket="raw-data",
        key="incoming/2024/report may.csv",
        event_name="ObjectCreated:Put",
        size=1024,
        etag="d41d8cd98f00b204e9800998ecf8427e",
        version_id="096fKKXTRTtl3on89fVO.nfljtsv6qko",
        sequencer="0055AED6DCD90281E5",
        region="eu-west-1",
        time=datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC),
        request_id="C3D13FE58DE4C810",
        host_id="FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD",
        raw=S3_PUT["Records"][0],
    )


def test_bytes_body_decodes_like_text() -> None:
    """An SQS body given as UTF-8 bytes gives the same changes as the same text."""
    text = json.dumps(S3_PUT)
    assert decode_message(text.encode()) == decode_message(text)


def test_s3_copy_record_keeps_its_event_name() -> None:
    """A Copy record is reported as ObjectCreated:Copy."""
    change = only(s3_message(record_with("ObjectCreated:Copy", "8E4DFA7B34F6A1C2")))
    assert (change.event_name, change.request_id) == ("ObjectCreated:Copy", "8E4DFA7B34F6A1C2")


def test_s3_delete_record_has_no_size_etag_or_version() -> None:
    """A Delete record of an unversioned bucket carries only key and sequencer."""
    record = record_with(
        "ObjectRemoved:Delete", "0A1B2C3D4E5F6071", size=None, eTag=None, versionId=None
    )
    change = only(s3_message(record))
    assert (change.event_name, change.size, change.etag, change.version_id) == (
        "ObjectRemoved:Delete",
        None,
        None,
        None,
    )
    assert change.sequencer == "0055AED6DCD90281E5"


def test_s3_delete_marker_record_carries_the_marker_version() -> None:
    """A DeleteMarkerCreated record reports the delete marker's version id."""
    record = record_with(
        "ObjectRemoved:DeleteMarkerCreated",
        "1B2C3D4E5F607182",
        size=None,
        eTag=None,
        versionId="rb5Kq8fXbQ0.OqAVHq_WnVd2yV2uVmAa",
        sequencer="0055AED6DCD90281F0",
    )
    change = only(s3_message(record))
    assert (change.event_name, change.version_id, change.sequencer) == (
        "ObjectRemoved:DeleteMarkerCreated",
        "rb5Kq8fXbQ0.OqAVHq_WnVd2yV2uVmAa",
        "0055AED6DCD90281F0",
    )


def test_several_records_become_several_changes_in_order() -> None:
    """A message with three records gives three changes, in the message's order."""
    records = [put_record(key=f"part-{index}.csv") for index in range(3)]
    assert [change.key for change in decode(s3_message(*records))] == [
        "part-0.csv",
        "part-1.csv",
        "part-2.csv",
    ]


def test_empty_records_give_no_change() -> None:
    """A notification with an empty Records array reports nothing."""
    assert decode({"Records": []}) == []


def test_quoted_etag_loses_its_quotes() -> None:
    """A store that quotes the ETag gives it unquoted, as a listing-free form to dedupe on."""
    change = only(s3_message(put_record(eTag='"d41d8cd98f00b204e9800998ecf8427e"')))
    assert change.etag == "d41d8cd98f00b204e9800998ecf8427e"


def test_minio_webhook_payload_is_read_from_its_records() -> None:
    """MinIO's EventName/Key on top are ignored; the record gives the change, '' means none."""
    assert only(MINIO_PUT) == ObjectChange(
        bucket="images",
        key="my photo.jpg",
        event_name="s3:ObjectCreated:Put",
        size=2048,
        etag="0b8bd9b4b8a4a4b8c5a7d5e0f1d2c3b4",
        version_id=None,
        sequencer="17CB3A0A0D4C1B2A",
        region=None,
        time=datetime(2024, 5, 1, 12, 0, 0, 456000, tzinfo=UTC),
        request_id="17CB3A0A0C9B8E6F",
        host_id="dd9025bab4ad464b049177c95eb6ebf374d3b3fd1af9251148b658df7ac2e3e8",
        raw=MINIO_PUT["Records"][0],
    )


def test_test_event_gives_no_change() -> None:
    """s3:TestEvent, sent when notifications are configured, reports no change."""
    assert decode(TEST_EVENT) == []


def test_sns_wrapped_test_event_gives_no_change() -> None:
    """An s3:TestEvent inside an SNS envelope reports no change either."""
    assert decode(sns(TEST_EVENT)) == []


def test_sns_envelope_gives_the_changes_of_its_message() -> None:
    """An SNS-wrapped notification decodes exactly like the raw one it carries."""
    assert decode(sns(S3_PUT)) == decode(S3_PUT)


# --- EventBridge ---------------------------------------------------------------------------


def test_eventbridge_object_created_keeps_its_key_raw() -> None:
    """EventBridge sends the key unencoded: a space stays a space, the whole event is raw."""
    assert only(EB_CREATED) == ObjectChange(
        bucket="raw-data",
        key="incoming/report may.csv",
        event_name="ObjectCreated:Put",
        size=5,
        etag="b1946ac92492d2347c6235b4d2611184",
        version_id="IYV3p45BT0ac8hjHg1houSdS1a.Mce4r",
        sequencer="00617F08299329D189",
        region="ca-central-1",
        time=datetime(2024, 5, 1, 12, 0, 1, tzinfo=UTC),
        request_id="N4N7GDK58NMKJ12R",
        host_id=None,
        raw=EB_CREATED,
    )


def test_eventbridge_object_deleted_is_named_like_s3() -> None:
    """An EventBridge delete-marker deletion is named ObjectRemoved:DeleteMarkerCreated."""
    change = only(EB_DELETED)
    assert (change.event_name, change.size, change.etag, change.version_id) == (
        "ObjectRemoved:DeleteMarkerCreated",
        None,
        None,
        "1QW9g1Z99LUNbvaaYVpW9xDlOLU.qxgF",
    )


@pytest.mark.parametrize(
    ("document", "event_name"),
    [
        (eventbridge(EB_CREATED, reason="CopyObject"), "ObjectCreated:Copy"),
        (eventbridge(EB_CREATED, reason="POST Object"), "ObjectCreated:Post"),
        (
            eventbridge(EB_CREATED, reason="CompleteMultipartUpload"),
            "ObjectCreated:CompleteMultipartUpload",
        ),
        (
            eventbridge(EB_DELETED, **{"deletion-type": "Permanently Deleted"}),
            "ObjectRemoved:Delete",
        ),
        (
            eventbridge(EB_DELETED, reason="Lifecycle Expiration"),
            "LifecycleExpiration:DeleteMarkerCreated",
        ),
        (
            eventbridge(
                EB_DELETED,
                reason="Lifecycle Expiration",
                **{"deletion-type": "Permanently Deleted"},
            ),
            "LifecycleExpiration:Delete",
        ),
    ],
)
def test_eventbridge_reasons_map_to_s3_event_names(
    document: dict[str, Any], event_name: str
) -> None:
    """Every EventBridge reason and deletion type gets the name S3 would have sent."""
    assert only(document).event_name == event_name


# --- keys ----------------------------------------------------------------------------------

KEYS = [
    # (as sent, encoding, key)
    ("my+photo.jpg", KeyEncoding.URL_PLUS, "my photo.jpg"),
    ("my+photo.jpg", KeyEncoding.URL, "my+photo.jpg"),
    ("my+photo.jpg", KeyEncoding.RAW, "my+photo.jpg"),
    ("a+b%2Bc", KeyEncoding.URL_PLUS, "a b+c"),
    ("a+b%2Bc", KeyEncoding.URL, "a+b+c"),
    ("a+b%2Bc", KeyEncoding.RAW, "a+b%2Bc"),
    ("100%25+done", KeyEncoding.URL_PLUS, "100% done"),
    ("100%25+done", KeyEncoding.URL, "100%+done"),
    ("100%25+done", KeyEncoding.RAW, "100%25+done"),
    ("50%", KeyEncoding.URL_PLUS, "50%"),
    ("dir/sub/file.csv", KeyEncoding.URL_PLUS, "dir/sub/file.csv"),
    ("dir%2Fsub%2Ffile.csv", KeyEncoding.URL_PLUS, "dir/sub/file.csv"),
    ("dir%2Fsub%2Ffile.csv", KeyEncoding.URL, "dir/sub/file.csv"),
    ("dir%2Fsub%2Ffile.csv", KeyEncoding.RAW, "dir%2Fsub%2Ffile.csv"),
    ("caf%C3%A9+%E2%82%AC.txt", KeyEncoding.URL_PLUS, "café €.txt"),
    ("caf%C3%A9+%E2%82%AC.txt", KeyEncoding.URL, "café+€.txt"),
    ("café €.txt", KeyEncoding.RAW, "café €.txt"),
    ("café €.txt", KeyEncoding.URL_PLUS, "café €.txt"),
    ("date%3D2024-05-01%2Fpart%3D1", KeyEncoding.URL_PLUS, "date=2024-05-01/part=1"),
    ("date=2024-05-01/part=1", KeyEncoding.URL_PLUS, "date=2024-05-01/part=1"),
    ("date=2024-05-01/part=1", KeyEncoding.RAW, "date=2024-05-01/part=1"),
    ("a b+c%2F=é%", KeyEncoding.RAW, "a b+c%2F=é%"),
]


@pytest.mark.parametrize(("sent", "encoding", "key"), KEYS)
def test_s3_key_is_decoded_by_the_chosen_encoding(
    sent: str, encoding: KeyEncoding, key: str
) -> None:
    """Spaces, '+', '%', '/', '%2F', unicode and '=' decode per encoding; RAW changes nothing."""
    assert only(key_document(sent), encoding).key == key


@pytest.mark.parametrize(("sent", "encoding", "key"), KEYS)
def test_eventbridge_key_is_decoded_by_the_chosen_encoding(
    sent: str, encoding: KeyEncoding, key: str
) -> None:
    """The override applies to EventBridge too."""
    document = copy.deepcopy(EB_CREATED)
    document["detail"]["object"]["key"] = sent
    assert only(document, encoding).key == key


def test_eventbridge_key_defaults_to_raw() -> None:
    """Without an override an EventBridge key is never unquoted: '+' and '%2B' stay."""
    document = copy.deepcopy(EB_CREATED)
    document["detail"]["object"]["key"] = "a+b%2Bc"
    assert only(document).key == "a+b%2Bc"


def test_sns_key_defaults_to_url_plus() -> None:
    """An SNS-wrapped S3 key is decoded with '+' as a space, like a raw S3 one."""
    assert only(sns(key_document("a+b%2Bc"))).key == "a b+c"


# S3 keys are 1 to 1024 bytes of UTF-8: any text without lone surrogates.
ANY_KEY = st.text(st.characters(codec="utf-8"), min_size=1, max_size=200)


@given(ANY_KEY)
def test_quote_plus_key_comes_back_with_url_plus(key: str) -> None:
    """Any key S3 encodes with '+' for space decodes back to itself."""
    assert only(key_document(quote_plus(key)), KeyEncoding.URL_PLUS).key == key


@given(ANY_KEY)
def test_quoted_key_comes_back_with_url(key: str) -> None:
    """Any key encoded with %XX escapes only decodes back to itself."""
    assert only(key_document(quote(key, safe="")), KeyEncoding.URL).key == key


@given(ANY_KEY)
def test_raw_key_is_kept_exactly(key: str) -> None:
    """RAW keeps any key character for character, in S3 and EventBridge documents."""
    document = copy.deepcopy(EB_CREATED)
    document["detail"]["object"]["key"] = key
    assert only(key_document(key), KeyEncoding.RAW).key == key
    assert only(document).key == key


# --- CloudEvents ---------------------------------------------------------------------------


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def test_s3_change_becomes_the_adapter_shaped_cloudevent() -> None:
    """type from the event name, source from region and bucket, subject the decoded key."""
    record = S3_PUT["Records"][0]
    assert to_event(only(S3_PUT)) == Event(
        id=f"C3D13FE58DE4C810.0055AED6DCD90281E5.{key_digest('incoming/2024/report may.csv')}",
        source="com.amazonaws.s3.eu-west-1.raw-data",
        type="com.amazonaws.s3.ObjectCreated:Put",
        subject="incoming/2024/report may.csv",
        time=datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC),
        datacontenttype="application/json",
        data={
            "bucket": "raw-data",
            "key": "incoming/2024/report may.csv",
            "size": 1024,
            "etag": "d41d8cd98f00b204e9800998ecf8427e",
            "versionId": "096fKKXTRTtl3on89fVO.nfljtsv6qko",
            "sequencer": "0055AED6DCD90281E5",
            "eventName": "ObjectCreated:Put",
            "region": "eu-west-1",
            "record": record,
        },
    )


def test_minio_event_drops_the_s3_prefix_and_has_an_unknown_region() -> None:
    """MinIO's s3:ObjectCreated:Put gives the same type as AWS; no region gives 'unknown'."""
    event = to_event(only(MINIO_PUT))
    assert (event.type, event.source, event.subject, event.data["eventName"]) == (
        "com.amazonaws.s3.ObjectCreated:Put",
        "com.amazonaws.s3.unknown.images",
        "my photo.jpg",
        "ObjectCreated:Put",
    )


def test_eventbridge_event_gets_the_same_source_as_an_sqs_one() -> None:
    """One bucket gives one source whichever way its notifications travel."""
    event = to_event(only(EB_CREATED))
    assert (event.id, event.source, event.type) == (
        f"N4N7GDK58NMKJ12R.00617F08299329D189.{key_digest('incoming/report may.csv')}",
        "com.amazonaws.s3.ca-central-1.raw-data",
        "com.amazonaws.s3.ObjectCreated:Put",
    )


def test_redelivered_record_gets_the_same_event_id() -> None:
    """The same message received twice gives equal events, so the run is not started twice."""
    body = json.dumps(sns(S3_PUT))
    assert to_event(decode_message(body)[0]) == to_event(decode_message(body)[0])


def test_keys_of_one_delete_objects_request_get_distinct_ids() -> None:
    """A DeleteObjects request reports many keys under one request id and sequencer."""
    records = [
        record_with("ObjectRemoved:Delete", "7A7B7C7D7E7F8081", key=key, size=None, eTag=None)
        for key in ("a.csv", "b.csv")
    ]
    ids = [to_event(change).id for change in decode(s3_message(*records))]
    assert ids == [
        f"7A7B7C7D7E7F8081.0055AED6DCD90281E5.{key_digest('a.csv')}",
        f"7A7B7C7D7E7F8081.0055AED6DCD90281E5.{key_digest('b.csv')}",
    ]


def test_record_without_request_id_gets_a_digest_of_itself_as_id() -> None:
    """A store that sends no request id still gives a stable id, from the record's content."""
    record = put_record()
    del record["responseElements"]
    expected = hashlib.sha256(
        json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()[:32]
    assert to_event(only(s3_message(record))).id == expected
    assert to_event(only(s3_message(put_record(sequencer=None)))).id != expected


def test_event_without_time_has_no_time() -> None:
    """A record without eventTime gives an event without time, not a made-up one."""
    record = put_record()
    del record["eventTime"]
    assert to_event(only(s3_message(record))).time is None


def test_event_round_trips_through_the_bus_form() -> None:
    """The event serializes to structured JSON and back unchanged."""
    event = to_event(only(MINIO_PUT))
    assert Event.from_dict(json.loads(json.dumps(event.to_dict()))) == event


# --- sequencers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "order"),
    [
        ("0055AED6DCD90281E5", "0055AED6DCD90281E5", 0),
        ("0055AED6DCD90281E5", "0055AED6DCD90281E6", -1),
        ("0055AED6DCD90281E6", "0055AED6DCD90281E5", 1),
        ("0055AED6DCD90281E5", "0055aed6dcd90281e5", 0),
        ("0055AED6DCD90281E5", "0055AED6DCD90281E500", 0),
        ("0056", "0055AED6DCD90281E5", 1),
        ("0055AED6DCD90281E5", "0056", -1),
        ("0055AED6DCD90281E5", "0055AED6DCD90281E501", -1),
        ("A", "9F", 1),
        ("1", "10", 0),
    ],
)
def test_sequencers_compare_after_right_padding(a: str, b: str, order: int) -> None:
    """The shorter sequencer is padded with zeros on the right, then compared as hex."""
    assert sequencer_order(a, b) == order


@pytest.mark.parametrize(
    ("a", "b", "bad"), [("", "00", ""), ("00", "0x1F", "0x1F"), ("G1", "00", "G1")]
)
def test_non_hex_sequencer_is_refused(a: str, b: str, bad: str) -> None:
    """A sequencer that is not hex raises ValueError naming it."""
    with pytest.raises(ValueError, match=r"^sequencer ") as caught:
        sequencer_order(a, b)
    assert str(caught.value) == (
        f"sequencer {bad!r} is not a hex string; S3 sequencers look like '0055AED6DCD90281E5'"
    )


# --- bad input -----------------------------------------------------------------------------


def with_record(**changes: Any) -> str:
    """The S3_PUT message with top-level record fields replaced (None removes the field)."""
    record = put_record()
    for name, value in changes.items():
        if value is None:
            record.pop(name)
        else:
            record[name] = value
    return json.dumps(s3_message(record))


def with_object(**fields: Any) -> str:
    return json.dumps(s3_message(put_record(**fields)))


def with_s3(s3: Any) -> str:
    return with_record(s3=s3)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", f"message body: empty; expected {ACCEPTED_FORMATS} as JSON"),
        (b"  \n", f"message body: empty; expected {ACCEPTED_FORMATS} as JSON"),
        (b"\xff{}", "message body: not UTF-8 text (invalid start byte at byte 0)"),
        ("not json", "message body: not JSON (Expecting value at 1:1)"),
        ('{"Records": [', "message body: not JSON (Expecting value at 1:14)"),
        ('{"Records": [NaN]}', "message body: not JSON (NaN is not a JSON number)"),
        ("[" * 100_000, "message body: not JSON (nested too deeply)"),
        ("[]", f"message body: a JSON array; expected a JSON object, {ACCEPTED_FORMATS}"),
        ('"Records"', f"message body: a JSON string; expected a JSON object, {ACCEPTED_FORMATS}"),
        (
            "{}",
            "message body: not an object-store notification (top-level fields: none);"
            f" expected {ACCEPTED_FORMATS}",
        ),
        (
            '{"Event": "s3:ObjectCreated:Put", "Bucket": "raw-data"}',
            "message body: not an object-store notification (top-level fields: 'Event',"
            f" 'Bucket'); expected {ACCEPTED_FORMATS}",
        ),
        ('{"Records": {}}', "Records: a JSON object; expected an array"),
        ('{"Records": null}', "Records: a JSON null; expected an array"),
        ('{"Records": [1]}', "Records[0]: a JSON number; expected an object"),
        (
            with_record(eventName=None),
            "Records[0].eventName: missing or empty; expected a non-empty string",
        ),
        (
            with_record(eventName=""),
            "Records[0].eventName: missing or empty; expected a non-empty string",
        ),
        (with_record(eventName=7), "Records[0].eventName: a JSON number; expected a string"),
        (with_record(s3=None), "Records[0].s3: missing; expected an object"),
        (with_s3([]), "Records[0].s3: a JSON array; expected an object"),
        (with_s3({"object": {"key": "a"}}), "Records[0].s3.bucket: missing; expected an object"),
        (
            with_s3({"bucket": {"arn": "arn:aws:s3:::raw-data"}, "object": {"key": "a"}}),
            "Records[0].s3.bucket.name: missing or empty; expected a non-empty string",
        ),
        (
            with_s3({"bucket": {"name": "raw-data"}}),
            "Records[0].s3.object: missing; expected an object",
        ),
        (
            with_object(key=None),
            "Records[0].s3.object.key: missing or empty; expected a non-empty string",
        ),
        (
            with_object(key=""),
            "Records[0].s3.object.key: missing or empty; expected a non-empty string",
        ),
        (with_object(key=12), "Records[0].s3.object.key: a JSON number; expected a string"),
        (
            with_object(key="caf%E9.txt"),
            "Records[0].s3.object.key: 'caf%E9.txt' percent-decodes to bytes that are not UTF-8;"
            " if the store sends keys unencoded, set the key encoding to 'raw'",
        ),
        (
            with_object(size="12"),
            "Records[0].s3.object.size: '12'; expected a whole number of bytes, 0 or more",
        ),
        (
            with_object(size=-1),
            "Records[0].s3.object.size: -1; expected a whole number of bytes, 0 or more",
        ),
        (
            with_object(size=1.5),
            "Records[0].s3.object.size: 1.5; expected a whole number of bytes, 0 or more",
        ),
        (
            with_object(size=True),
            "Records[0].s3.object.size: True; expected a whole number of bytes, 0 or more",
        ),
        (with_object(eTag=["x"]), "Records[0].s3.object.eTag: a JSON array; expected a string"),
        (
            with_object(versionId=3),
            "Records[0].s3.object.versionId: a JSON number; expected a string",
        ),
        (
            with_object(sequencer=False),
            "Records[0].s3.object.sequencer: a JSON boolean; expected a string",
        ),
        (with_record(awsRegion={}), "Records[0].awsRegion: a JSON object; expected a string"),
        (
            with_record(eventTime="yesterday"),
            "Records[0].eventTime: 'yesterday' is not an RFC 3339 timestamp such as '2024-05-01T12:00:00.000Z'",
        ),
        (
            with_record(eventTime="2024-05-01T12:00:00"),
            "Records[0].eventTime: '2024-05-01T12:00:00' is not an RFC 3339 timestamp such as '2024-05-01T12:00:00.000Z'",
        ),
        (
            with_record(responseElements="C3D1"),
            "Records[0].responseElements: a JSON string; expected an object",
        ),
        (
            with_record(responseElements={"x-amz-request-id": 5}),
            "Records[0].responseElements.x-amz-request-id: a JSON number; expected a string",
        ),
        (
            json.dumps(s3_message(put_record(), put_record(key=None))),
            "Records[1].s3.object.key: missing or empty; expected a non-empty string",
        ),
    ],
)
def test_bad_s3_message_is_refused_naming_the_place(body: str | bytes, message: str) -> None:
    """Each malformed S3 message raises DecodeError with the field path and what is accepted."""
    assert rejected(body) == message


SNS_NOT_NOTIFICATION = (
    " is not an SNS notification; only Type 'Notification' carries an S3 document"
    " (a SubscriptionConfirmation is answered by the push listener)"
)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            sns(S3_PUT, kind="SubscriptionConfirmation"),
            "Type: 'SubscriptionConfirmation'" + SNS_NOT_NOTIFICATION,
        ),
        (
            sns(S3_PUT, kind="UnsubscribeConfirmation"),
            "Type: 'UnsubscribeConfirmation'" + SNS_NOT_NOTIFICATION,
        ),
        (
            {"TopicArn": "arn:aws:sns:eu-west-1:111122223333:t", "Message": "{}"},
            "Type: None" + SNS_NOT_NOTIFICATION,
        ),
        (
            {"Type": "Notification", "TopicArn": "arn:aws:sns:eu-west-1:111122223333:t"},
            "Message: missing; expected the S3 notification as a JSON string",
        ),
        (
            {"Type": "Notification", "Message": S3_PUT},
            "Message: a JSON object; expected the S3 notification as a JSON string",
        ),
        (sns("Hello from SNS"), "Message: not JSON (Expecting value at 1:1)"),
        (sns(""), f"Message: empty; expected {ACCEPTED_FORMATS} as JSON"),
        (sns("[1]"), "Message: a JSON array; expected an S3 notification object"),
        (
            sns(EB_CREATED),
            "Message: no 'Records'; expected an S3 notification {\"Records\": [...]} or an s3:TestEvent",
        ),
        (sns({"Records": "none"}), "Message.Records: a JSON string; expected an array"),
        (
            sns(key_document("")),
            "Message.Records[0].s3.object.key: missing or empty; expected a non-empty string",
        ),
    ],
)
def test_bad_sns_envelope_is_refused_naming_the_place(
    document: dict[str, Any], message: str
) -> None:
    """A wrong SNS Type or a bad Message raises DecodeError located inside the envelope."""
    assert rejected(json.dumps(document)) == message


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {key: value for key, value in EB_CREATED.items() if key != "detail"},
            "detail: missing; expected an object",
        ),
        ({**EB_CREATED, "detail": "PutObject"}, "detail: a JSON string; expected an object"),
        (
            {**EB_CREATED, "detail-type": "Object Restore Completed"},
            "detail-type: 'Object Restore Completed' is not an object change;"
            " expected 'Object Created' or 'Object Deleted'",
        ),
        (eventbridge(EB_CREATED, bucket=None), "detail.bucket: missing; expected an object"),
        (
            eventbridge(EB_CREATED, object={"size": 5}),
            "detail.object.key: missing or empty; expected a non-empty string",
        ),
        (
            eventbridge(EB_CREATED, object={"key": "a", "size": -5}),
            "detail.object.size: -5; expected a whole number of bytes, 0 or more",
        ),
        (
            eventbridge(EB_CREATED, reason=None),
            "detail.reason: missing or empty; expected a non-empty string",
        ),
        (
            eventbridge(EB_CREATED, reason="RestoreObject"),
            "detail.reason: 'RestoreObject' is not known; expected one of 'PutObject',"
            " 'POST Object', 'CopyObject', 'CompleteMultipartUpload'",
        ),
        (
            eventbridge(EB_DELETED, reason="PutObject"),
            "detail.reason: 'PutObject' is not known; expected one of 'DeleteObject',"
            " 'Lifecycle Expiration'",
        ),
        (
            eventbridge(EB_DELETED, **{"deletion-type": None}),
            "detail.deletion-type: missing or empty; expected a non-empty string",
        ),
        (
            eventbridge(EB_DELETED, **{"deletion-type": "Soft"}),
            "detail.deletion-type: 'Soft' is not known; expected one of 'Permanently Deleted',"
            " 'Delete Marker Created'",
        ),
        (
            {**EB_CREATED, "time": "12:00"},
            "time: '12:00' is not an RFC 3339 timestamp such as '2024-05-01T12:00:00.000Z'",
        ),
        ({**EB_CREATED, "region": 1}, "region: a JSON number; expected a string"),
    ],
)
def test_bad_eventbridge_event_is_refused_naming_the_place(
    document: dict[str, Any], message: str
) -> None:
    """An EventBridge event without detail, or of another kind, raises DecodeError."""
    assert rejected(json.dumps(document)) == message


def test_decode_error_keeps_the_json_error_as_its_cause() -> None:
    """The parser's error is chained, so the log shows where the JSON broke."""
    with pytest.raises(DecodeError) as caught:
        decode_message("{oops")
    assert isinstance(caught.value.__cause__, json.JSONDecodeError)
