"""The object-store sensor for the pulling modes: poll (list a bucket) and sqs (read a queue).

It holds the AWS client for its mode, runs the mode's loop, and when the store or queue fails
(access denied, a missing queue or bucket, no credentials, an unreachable endpoint) it logs
the problem, shows it on /readyz (`connected`, `problem`), waits with capped exponential
backoff and starts again: the sensor goes on. A bus that refuses an event is retried the same
way (the queue keeps the message; the poll lists again). In mode sqs with `reconcileSeconds`
it also holds an S3 client, for the poll mode's listing of the bucket between receives. The
push mode is `pushing.py`; what a message means is `normalizing.py`'s, what is reported
`reporting.py`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from datetime import timedelta

import structlog

from eventflow.errors import TemporaryError
from eventflow.sensing.protocol import Emit, SensorContext
from sensors.objectstore.clients import AWS_ERRORS, describe, s3_client, sqs_client
from sensors.objectstore.config import ObjectStoreConfig
from sensors.objectstore.polling import BucketPoller
from sensors.objectstore.receiving import QueueReceiver
from sensors.objectstore.reporting import Counts, Health, Reporter

log = structlog.get_logger()

BACKOFF_INITIAL_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0


def backoff(initial: float, cap: float = BACKOFF_MAX_SECONDS) -> Iterator[float]:
    """Delays between attempts: doubling from `initial`, never above `cap`."""
    delay = initial
    while True:
        yield delay
        delay = min(delay * 2, cap)


class ObjectStoreSensor:
    """One `spec.objectstore` sensor in mode poll or sqs."""

    def __init__(
        self,
        name: str,
        config: ObjectStoreConfig,
        context: SensorContext,
        *,
        backoff_initial_seconds: float = BACKOFF_INITIAL_SECONDS,
    ) -> None:
        self.name = name
        self.config = config
        self.health = Health()
        self.reporter = Reporter(name, config, context.state, context.clock)
        self.reporter.keeps_listing = (
            config.sqs is not None and config.sqs.reconcileSeconds is not None
        )
        self._backoff_initial = backoff_initial_seconds

    @property
    def connected(self) -> bool:
        """Whether the last call to the store or queue succeeded (for /readyz)."""
        return self.health.connected

    @property
    def problem(self) -> str | None:
        """Why the sensor is not connected, in words the user can act on; None when it is."""
        return self.health.problem

    @property
    def counts(self) -> Counts:
        return self.reporter.counts

    async def run(self, emit: Emit) -> None:
        """Run the mode's loop; after a failure, back off and run it again."""
        delays = backoff(self._backoff_initial)
        what = self._source()
        while True:
            try:
                await self._run_mode(emit)
            except (*AWS_ERRORS, OSError) as error:
                problem = describe(error, what)
            except TemporaryError as error:
                problem = f"{what}: {error}"
            else:
                return
            if self.health.connected:
                delays = backoff(self._backoff_initial)
            self.health.down(problem)
            delay = next(delays)
            log.error("sensor source failed", sensor=self.name, problem=problem, retry_in=delay)
            await asyncio.sleep(delay)

    def _source(self) -> str:
        """How messages name what the sensor reads: its bucket or its queue."""
        sqs = self.config.sqs
        if sqs is None:
            return f"bucket {self.config.bucket}"
        return f"queue {sqs.queueUrl or sqs.queueName}"

    def _poller(self, grace: timedelta | None = None) -> BucketPoller:
        return BucketPoller(self.reporter, self.health, grace)

    async def _run_mode(self, emit: Emit) -> None:
        sqs_config = self.config.sqs
        if sqs_config is None:
            async with s3_client(self.config) as s3:
                await self._poller().run(s3, emit)
            return
        async with contextlib.AsyncExitStack() as clients:
            sqs = await clients.enter_async_context(sqs_client(self.config))
            reconcile = None
            if sqs_config.reconcileSeconds is not None:
                s3 = await clients.enter_async_context(s3_client(self.config))
                poller = self._poller(timedelta(seconds=sqs_config.reconcileGraceSeconds))

                async def reconcile(emit: Emit) -> object:
                    return await poller.cycle(s3, emit)

            receiver = QueueReceiver(self.reporter, sqs_config, self.health, reconcile)
            await receiver.run(sqs, emit)
