"""AWS clients for the sensor (aiobotocore), and AWS errors told as what the user should do.

Credentials come from the standard AWS chain only (environment, the shared config's `profile`,
web identity for IRSA, instance metadata): nothing secret is in the Sensor document. This
module creates clients and words errors; it does not retry or decide what an error means for
the sensor (the sensor backs off and shows the problem on /readyz).
"""

from __future__ import annotations

from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
)

from sensors.objectstore.config import ObjectStoreConfig

AWS_ERRORS = (BotoCoreError, ClientError)
_MISSING_QUEUE = ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")


def _options(config: ObjectStoreConfig) -> dict[str, Any]:
    return {
        "region_name": config.region,
        "endpoint_url": config.endpointUrl,
        "config": AioConfig(
            s3={"addressing_style": "path" if config.pathStyle else "auto"},
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=5,
            # A long poll holds the request up to 20 s; the read timeout must outlast it.
            read_timeout=40,
        ),
    }


def session(config: ObjectStoreConfig) -> AioSession:
    return AioSession(profile=config.profile)


def s3_client(config: ObjectStoreConfig) -> Any:
    """`async with s3_client(config) as s3:` an S3 client for the configured store."""
    return session(config).create_client("s3", **_options(config))


def sqs_client(config: ObjectStoreConfig) -> Any:
    """`async with sqs_client(config) as sqs:` an SQS client in the configured region."""
    return session(config).create_client("sqs", **_options(config))


def describe(error: BaseException, what: str) -> str:
    """A sentence for the log and /readyz: what failed on `what` and what to change."""
    if isinstance(error, NoCredentialsError):
        return (
            f"{what}: no AWS credentials found; set AWS_ACCESS_KEY_ID and"
            " AWS_SECRET_ACCESS_KEY, a profile, or a web identity (IRSA)"
        )
    if isinstance(error, EndpointConnectionError):
        return f"{what}: cannot reach {error.kwargs.get('endpoint_url')}; check endpointUrl"
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", "unknown"))
        message = str(error.response.get("Error", {}).get("Message", ""))
        if code in _MISSING_QUEUE:
            return f"{what}: the queue does not exist ({code}); create it or fix sqs.queueUrl"
        if code in ("AccessDenied", "AccessDeniedException", "403"):
            return (
                f"{what}: access denied ({message or code}); grant the sensor's identity"
                " s3:ListBucket for poll, or sqs:ReceiveMessage, sqs:DeleteMessage and"
                " sqs:GetQueueUrl for sqs"
            )
        if code == "NoSuchBucket":
            return f"{what}: the bucket does not exist; create it or fix bucket"
        return f"{what}: {code}: {message}"
    return f"{what}: {error}"
