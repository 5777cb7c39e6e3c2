"""Watching eventflow's Jobs, and reading what a watched Job and its Pod say.

`JobWatch` keeps ONE list+watch of every Job eventflow owns in a namespace (label
selector): it starts from a list's resourceVersion, asks for bookmarks so a quiet stream
still advances that version, resumes from the last version seen when the connection drops
or the server ends the stream, and on 410 Gone lists again and hands the whole list over for
reconciling. It never polls a Job. `verdict` and `pod_report` are the pure part: how a
Job's conditions and its Pod's container status become a step's phase, reason, exit code
and outputs. The API-reading helpers every call shares (the rate limit, `ApiError`,
Retry-After, a Status' message) live here too.

It does not create, delete or read logs of Jobs, and keeps no per-attempt state: the
executor (executors/kubernetes.py) does, through the callbacks it gives `JobWatch`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from eventflow.errors import ConfigError, TemporaryError
from eventflow.executors.manifests import CONTAINER, parse_termination_message
from eventflow.executors.protocol import StepPhase

log = structlog.get_logger()

Json = dict[str, Any]
# Runs one API call (rate limited, retried) and answers its response, status already 2xx.
Call = Callable[..., Awaitable[aiohttp.ClientResponse]]
IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName"})


class WatchGone(Exception):
    """The API server no longer holds the history the watch asked for (410 Gone)."""


class ApiError(Exception):
    """An API request answered with a status that retrying does not mend."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class TokenBucket:
    """The client-side rate limit every API call passes (client-go's limiter): at most
    `burst` calls at once, refilled at `rate` per second. Calls are served in order, except
    that a `background` call waits while an `urgent` one is under way: reading a finished
    step's results must not hold back creating the next Job."""

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ConfigError(
                f"k8s.qps/burst: {rate}/{burst} is not accepted; give qps > 0 and burst >= 1"
            )
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp: float | None = None
        self._lock = asyncio.Lock()
        self._urgent = 0  # calls not in the background, from their turn to their answer
        self._no_urgent = asyncio.Event()
        self._no_urgent.set()

    @contextlib.asynccontextmanager
    async def urgent(self) -> AsyncIterator[None]:
        """While inside (a create or delete, from its turn to its answer), background
        takers wait."""
        self._urgent += 1
        self._no_urgent.clear()
        try:
            yield
        finally:
            self._urgent -= 1
            if not self._urgent:
                self._no_urgent.set()

    async def take(self, background: bool = False) -> None:
        while background and self._urgent:
            await self._no_urgent.wait()
        await self._take()

    async def _take(self) -> None:
        # the lock queues callers in order, so a waiting call is not overtaken
        async with self._lock:
            loop = asyncio.get_running_loop()
            now = loop.time()
            elapsed = 0.0 if self._stamp is None else now - self._stamp
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
            self._stamp = now
            if self._tokens < 1:
                await asyncio.sleep((1 - self._tokens) / self._rate)
                self._stamp = loop.time()
                self._tokens = 1.0
            self._tokens -= 1


class Caller:
    """Runs API calls through the rate limit, retrying 429, 5xx and broken connections with
    exponential backoff (or the Retry-After the server asks for)."""

    def __init__(
        self, bucket: TokenBucket, retries: int, base_delay: float, max_delay: float
    ) -> None:
        self._bucket = bucket
        self._retries = retries
        self._base_delay = base_delay
        self._max_delay = max_delay

    async def __call__(
        self, method: Callable[..., Any], *args: Any, background: bool = False, **kwargs: Any
    ) -> Any:
        """One API call through the rate limit, retried on 429, 5xx and broken connections;
        a `background` call waits while any other is under way.

        Answers the raw response (2xx) for the caller to read and release.
        """
        if background:
            return await self._call(method, args, kwargs, background=True)
        async with self._bucket.urgent():
            return await self._call(method, args, kwargs, background=False)

    async def _call(
        self,
        method: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        background: bool,
    ) -> Any:
        what = getattr(method, "__name__", "request")
        for attempt in range(self._retries + 1):
            delay = min(self._max_delay, self._base_delay * 2**attempt)
            await self._bucket.take(background)
            try:
                response = await method(*args, _preload_content=False, **kwargs)
            except (aiohttp.ClientConnectionError, TimeoutError) as error:
                problem = f"cannot reach the Kubernetes API: {error!r}"
                failure: BaseException = error
            else:
                if 200 <= response.status < 300:
                    return response
                text = await response.text()
                response.release()
                message = api_message(text)
                if response.status != 429 and response.status < 500:
                    raise ApiError(response.status, response.reason or "", message)
                delay = retry_after(response.headers) or delay
                problem = f"the Kubernetes API answered {response.status}: {message}"
                failure = ApiError(response.status, response.reason or "", message)
            if attempt == self._retries:
                raise TemporaryError(
                    f"{what}: {problem} (tried {attempt + 1} times); check the API server"
                    " and eventflow's network access to it",
                    delay=delay,
                ) from failure
            log.warning("api call retried", call=what, problem=problem, delay=delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


def retry_after(headers: Any) -> float | None:
    try:
        return max(0.0, float(headers.get("Retry-After")))
    except (TypeError, ValueError):
        return None


def api_message(text: str) -> str:
    """The `message` of a Kubernetes Status body, or the text itself."""
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    return str(body.get("message", text)) if isinstance(body, dict) else text.strip()[:500]


def verdict(job: Mapping[str, Any]) -> tuple[StepPhase, str | None] | None:
    """The end a Job's conditions report, or None while it has not ended.

    Only the final conditions count: Kubernetes 1.31+ first sets SuccessCriteriaMet or
    FailureTarget while the Pods are still being stopped.
    """
    status = job.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Complete":
            return StepPhase.SUCCEEDED, None
        if condition.get("type") == "Failed":
            reason = condition.get("reason") or "Failed"
            if reason == "DeadlineExceeded":
                deadline = (job.get("spec") or {}).get("activeDeadlineSeconds")
                return StepPhase.TIMED_OUT, f"timed out after {deadline}s"
            message = condition.get("message")
            return StepPhase.FAILED, f"{reason}: {message}" if message else reason
    return None


def is_active(job: Mapping[str, Any]) -> bool:
    return int((job.get("status") or {}).get("active") or 0) >= 1


@dataclass(frozen=True, slots=True)
class PodReport:
    """What the step's container in the Job's Pod says about the attempt's end."""

    exit_code: int | None = None
    reason: str | None = None
    outputs: Mapping[str, Any] | None = None


def newest_pod(pods: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The Pod that ran last: with backoffLimit 0 there is one, unless it was evicted."""
    stamped = sorted(pods, key=lambda pod: pod["metadata"].get("creationTimestamp") or "")
    return stamped[-1] if stamped else None


def pod_report(pod: Mapping[str, Any] | None) -> PodReport:
    """Exit code, outputs (termination message) and why the container failed, if it says."""
    if pod is None:
        return PodReport()
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    status = next((s for s in statuses if s.get("name") == CONTAINER), None)
    state = (status or {}).get("state") or {}
    waiting = state.get("waiting") or {}
    if waiting.get("reason") in IMAGE_PULL_REASONS:
        image = (status or {}).get("image", "?")
        why = f"{waiting['reason']}: cannot pull image {image!r}: {waiting.get('message', '')}"
        return PodReport(reason=f"{why}; check the image name and tag, and the imagePullSecrets")
    terminated = state.get("terminated")
    if not terminated:
        return PodReport()
    code = terminated.get("exitCode")
    outputs = parse_termination_message(terminated.get("message") or "")
    reason = None
    if terminated.get("reason") == "OOMKilled":
        reason = (
            "OOMKilled: the step used more memory than its limit;"
            " raise resources.limits.memory or make the step use less"
        )
    elif code:
        reason = f"exited with code {code}"
    return PodReport(code, reason, outputs)


class JobWatch:
    """One list+watch of the Jobs `selector` picks in `namespace`, run until cancelled."""

    def __init__(
        self,
        call: Call,
        batch: Any,
        namespace: str,
        selector: str,
        *,
        observe: Callable[[str, Json], None],
        relisted: Callable[[list[Json]], None],
        timeout_seconds: int = 300,
        resume_delay: float = 0.1,
        refused_delay: float = 5.0,
    ) -> None:
        self._call = call
        self._batch = batch
        self._namespace = namespace
        self._selector = selector
        self._observe = observe
        self._relisted = relisted
        self._timeout = timeout_seconds
        self._resume_delay = resume_delay
        self._refused_delay = refused_delay
        self.resource_version: str | None = None

    async def list(self) -> None:
        """List the Jobs, remember the list's version, hand the items over."""
        response = await self._call(
            self._batch.list_namespaced_job, self._namespace, label_selector=self._selector
        )
        async with response:
            body = await response.json()
        self.resource_version = body["metadata"]["resourceVersion"]
        self._relisted(list(body.get("items") or []))

    async def run(self) -> None:
        while True:
            try:
                if self.resource_version is None:
                    await self.list()
                await self._watch()
                # the server ended the stream (its timeout): resume, but never in a tight loop
                await asyncio.sleep(self._resume_delay)
            except WatchGone:
                log.info("job watch expired", resource_version=self.resource_version)
                self.resource_version = None
            except ApiError as error:
                if error.status == 410:
                    log.info("job watch expired", resource_version=self.resource_version)
                    self.resource_version = None
                    continue
                # RBAC or a bad request: no step can end until a person fixes it
                log.error("job watch refused", error=str(error))
                await asyncio.sleep(self._refused_delay)
            except (aiohttp.ClientError, TimeoutError, TemporaryError) as error:
                log.warning("job watch dropped", error=str(error), resume=self.resource_version)
                await asyncio.sleep(self._resume_delay)

    async def _watch(self) -> None:
        response = await self._call(
            self._batch.list_namespaced_job,
            self._namespace,
            label_selector=self._selector,
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._timeout,
            _request_timeout=aiohttp.ClientTimeout(sock_read=self._timeout + 30),
        )
        async with response:
            # lines, not chunks: one event may span chunks, and a chunk may hold several
            async for line in response.content:
                if line.strip():
                    self._event(json.loads(line))

    def _event(self, event: Json) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise WatchGone(obj.get("message", "410 Gone"))
            raise aiohttp.ClientPayloadError(f"watch error event: {obj}")
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            self.resource_version = version
        if kind in {"ADDED", "MODIFIED", "DELETED"}:
            self._observe(kind, obj)
