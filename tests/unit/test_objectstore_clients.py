"""AWS errors worded as what the user should change, for the log and /readyz."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from sensors.objectstore.clients import describe


def client_error(code: str, message: str = "") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "ReceiveMessage")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            client_error("AccessDenied", "User: arn:aws:iam::1:user/x is not authorized"),
            "queue q: access denied (User: arn:aws:iam::1:user/x is not authorized); grant the"
            " sensor's identity s3:ListBucket for poll, or sqs:ReceiveMessage,"
            " sqs:DeleteMessage and sqs:GetQueueUrl for sqs",
        ),
        (
            client_error("AWS.SimpleQueueService.NonExistentQueue"),
            "queue q: the queue does not exist (AWS.SimpleQueueService.NonExistentQueue);"
            " create it or fix sqs.queueUrl",
        ),
        (
            client_error("NoSuchBucket"),
            "queue q: the bucket does not exist; create it or fix bucket",
        ),
        (client_error("Throttling", "Rate exceeded"), "queue q: Throttling: Rate exceeded"),
        (
            NoCredentialsError(),
            "queue q: no AWS credentials found; set AWS_ACCESS_KEY_ID and"
            " AWS_SECRET_ACCESS_KEY, a profile, or a web identity (IRSA)",
        ),
        (
            EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
            "queue q: cannot reach http://127.0.0.1:1; check endpointUrl",
        ),
    ],
)
def test_aws_errors_say_what_to_change(error: Exception, expected: str) -> None:
    """Access denied, a missing queue or bucket, no credentials: each names the fix."""
    assert describe(error, "queue q") == expected
