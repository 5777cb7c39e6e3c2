"""The sqs mode: long-poll a queue of bucket notifications and settle each message.

A message is deleted only after every record it carries is on the bus (promise 1). One that
no decoder understands is poison: it is reported once (an `eventflow.objectstore.poison` event,
or the body sent to `sqs.deadLetterQueueUrl`), counted, and deleted, so it does not come back
forever. An s3:TestEvent is deleted without an event. When the bus cannot take an event, the
message is left in the queue and made visible again after the bus's delay. With
`reconcileSeconds`, a listing of the bucket runs between receives and reports what no
notification did. This module does not decode, filter or deduplicate: `normalizing.py` and
`reporting.py` do.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import structlog

from eventflow.errors import BusUnavailableError
from eventflow.sensing.protocol import Emit
from sensors.objectstore.clients import AWS_ERRORS, describe
from sensors.objectstore.config import ObjectStoreConfig, SqsConfig
from sensors.objectstore.normalizing import DecodeError, ObjectChange, decode_message
from sensors.objectstore.reporting import Health, Reporter, poison_event

log = structlog.get_logger()


class QueueReceiver:
    """One SQS queue, read by one sensor; several replicas may share it."""

    def __init__(
        self,
        reporter: Reporter[ObjectStoreConfig],
        config: SqsConfig,
        health: Health,
        reconcile: Callable[[Emit], Awaitable[object]] | None = None,
    ) -> None:
        """`reconcile` lists the bucket and reports what notifications missed; it runs at
        start and then every `reconcileSeconds`, between two receives."""
        self.reporter = reporter
        self.config = config
        self.health = health
        self.reconcile = reconcile

    async def take(
        self, messages: Sequence[tuple[str, str]], emit: Emit, sqs: Any = None
    ) -> list[str]:
        """Report the changes in one batch of (message id, body); return the event ids emitted.

        The records of all the batch's messages are reported together: one round of state
        reads and writes per batch, not per message. `sqs` is the client that sends poison to
        `deadLetterQueueUrl`, when that is set."""
        counts = self.reporter.counts
        changes: list[ObjectChange] = []
        for message_id, body in messages:
            try:
                decoded = decode_message(body, key_encoding=self.reporter.config.keyEncoding)
            except DecodeError as error:
                await self._poison(message_id, body, str(error), emit, sqs)
                counts.poisoned += 1
                log.error(
                    "poison message",
                    sensor=self.reporter.name,
                    message_id=message_id,
                    reason=str(error),
                    poisoned=counts.poisoned,
                )
                continue
            if not decoded:
                counts.skipped += 1  # an s3:TestEvent
            changes.extend(decoded)
        return await self.reporter.report(changes, emit) if changes else []

    async def _poison(self, message_id: str, body: str, reason: str, emit: Emit, sqs: Any) -> None:
        target = self.config.deadLetterQueueUrl
        if target is None or sqs is None:
            now = self.reporter.clock()
            await emit(poison_event(self.reporter.name, message_id, body, reason, now))
            return
        attributes = {"EventflowPoisonReason": {"DataType": "String", "StringValue": reason}}
        await sqs.send_message(QueueUrl=target, MessageBody=body, MessageAttributes=attributes)

    async def run(self, sqs: Any, emit: Emit) -> None:
        """Receive until cancelled; an AWS error propagates to the sensor, which backs off."""
        url = await self._queue_url(sqs)
        self.health.up()
        log.info("sensor connected", sensor=self.reporter.name, queue=url)
        await self.reporter.purge_due()
        reconciled_at = None
        while True:
            now = self.reporter.clock()
            if self.reconcile is not None and (
                reconciled_at is None or now - reconciled_at >= self._reconcile_every
            ):
                await self.reconcile(emit)
                reconciled_at = now
            options: dict[str, Any] = {
                "QueueUrl": url,
                "MaxNumberOfMessages": self.config.maxMessages,
                "WaitTimeSeconds": self.config.waitSeconds,
            }
            if self.config.visibilityTimeout is not None:
                options["VisibilityTimeout"] = self.config.visibilityTimeout
            reply = await sqs.receive_message(**options)
            if reply.get("Messages"):
                await self._settle(sqs, url, reply["Messages"], emit)
            await self.reporter.purge_due()

    @property
    def _reconcile_every(self) -> timedelta:
        return timedelta(seconds=self.config.reconcileSeconds or 0)

    async def _queue_url(self, sqs: Any) -> str:
        if self.config.queueUrl is not None:
            # Fails early, with the queue named, when the queue is missing or not ours.
            await sqs.get_queue_attributes(
                QueueUrl=self.config.queueUrl, AttributeNames=["QueueArn"]
            )
            return self.config.queueUrl
        reply = await sqs.get_queue_url(QueueName=self.config.queueName)
        return str(reply["QueueUrl"])

    async def _settle(
        self, sqs: Any, url: str, messages: Sequence[Mapping[str, Any]], emit: Emit
    ) -> None:
        """Take a received batch; delete it once all is on the bus, else let it come back."""
        batch = [(str(message["MessageId"]), str(message["Body"])) for message in messages]
        receipts = [
            {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]}
            for index, message in enumerate(messages)
        ]
        try:
            await self.take(batch, emit, sqs)
        except BusUnavailableError as error:
            log.warning(
                "messages left in the queue",
                sensor=self.reporter.name,
                messages=[message_id for message_id, _ in batch],
                error=str(error),
            )
            delay = max(1, math.ceil(error.delay))
            try:
                await sqs.change_message_visibility_batch(
                    QueueUrl=url,
                    Entries=[{**receipt, "VisibilityTimeout": delay} for receipt in receipts],
                )
            except AWS_ERRORS as aws_error:
                # They come back after the queue's visibility timeout instead.
                log.warning("visibility not changed", error=describe(aws_error, url))
            return
        reply = await sqs.delete_message_batch(QueueUrl=url, Entries=receipts)
        for failed in reply.get("Failed", []):
            # The message comes back; the dedupe window drops its records then.
            log.warning(
                "message not deleted",
                sensor=self.reporter.name,
                message_id=batch[int(failed["Id"])][0],
                error=failed.get("Message"),
            )
