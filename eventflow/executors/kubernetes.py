"""The Kubernetes executor: each step attempt runs as a batch/v1 Job.

`submit` creates the Job `build_job` describes; its deterministic name makes a second create
answer 409, which adopts the Job instead of duplicating it (promise 2). One `JobWatch` over
every eventflow Job in the namespace reports starts and ends: no Job is polled. At an end,
one list of the Job's Pods gives the exit code, the reason (OOMKilled, image pull errors) and
the outputs (the container's termination message), and one read of its log gives the tail.
Every API call passes a client-side token bucket (qps, burst), where reading a finished
step's results yields to creates and deletes, and is retried with backoff on 429 and 5xx,
honouring Retry-After.

A Job is shaped by the executor's `JobOptions` under the installation's `defaults` block and
the step's `kubernetes:` blocks. It does not retry steps (the run controller makes attempt
N+1), and leaves Jobs running on `close`: they outlive eventflow and are `adopt`ed later.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog
from kubernetes_asyncio import client, config

from eventflow.errors import ConfigError, PermanentError, TemporaryError
from eventflow.executors.manifests import (
    CONTAINER,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    JobOptions,
    build_job,
    job_name,
    job_options,
    parse_termination_message,
)
from eventflow.executors.protocol import StepKey, StepPhase, StepSpec, StepUpdate
from eventflow.executors.watching import (
    ApiError,
    Caller,
    JobWatch,
    Json,
    TokenBucket,
    is_active,
    newest_pod,
    pod_report,
    verdict,
)
from eventflow.resources.kubernetes import KubernetesOptions, layers, merge_options

log = structlog.get_logger()

SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
ApiClientFactory = Callable[[], Awaitable[Any]]


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True, eq=False)
class _Attempt:
    key: StepKey
    name: str
    running: bool = False
    ended: bool = False
    cancelling: bool = False


class KubernetesExecutor:
    """Runs step attempts as Jobs in `options.namespace`; one terminal update per attempt."""

    def __init__(
        self,
        options: JobOptions,
        *,
        defaults: KubernetesOptions | None = None,
        api_client_factory: ApiClientFactory | None = None,
        kubeconfig: str | None = None,
        context: str | None = None,
        qps: float = 50,
        burst: int = 100,
        log_tail_lines: int = 20,
        max_retries: int = 5,
        retry_base_delay: float = 0.2,
        retry_max_delay: float = 30.0,
        watch_resume_delay: float = 0.1,
    ) -> None:
        self._options = options
        self._defaults = layers(defaults)
        self._namespace = options.namespace
        self._factory = api_client_factory
        self._kubeconfig = kubeconfig
        self._context = context
        self._call = Caller(TokenBucket(qps, burst), max_retries, retry_base_delay, retry_max_delay)
        self._tail_lines = log_tail_lines
        self._resume_delay = watch_resume_delay
        self._api: Any = None
        self._batch: Any = None
        self._core: Any = None
        self._attempts: dict[str, _Attempt] = {}
        self._jobs: dict[str, Json] = {}  # the watch's view of every eventflow Job
        self._ended_logs: dict[str, str] = {}  # by Job name, until `logs()` takes it
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watch_task: asyncio.Task[None] | None = None
        self._updates: asyncio.Queue[StepUpdate | None] = asyncio.Queue()
        self._consumed = False
        self._closed = False

    async def start(self) -> None:
        self._api = await self._connect()
        self._batch = client.BatchV1Api(self._api)
        self._core = client.CoreV1Api(self._api)
        watch = JobWatch(
            self._call,
            self._batch,
            self._namespace,
            SELECTOR,
            observe=self._observe,
            relisted=self._relisted,
            resume_delay=self._resume_delay,
        )
        # listed before start() returns, so adopt() sees every Job that exists
        await watch.list()
        self._watch_task = asyncio.create_task(self._guard(watch.run()), name="k8s job watch")

    async def close(self) -> None:
        """Stop watching and end `updates()`; Jobs keep running, to be adopted later."""
        if self._closed:
            return
        self._closed = True
        if self._watch_task is not None:
            self._watch_task.cancel()
            await asyncio.gather(self._watch_task, return_exceptions=True)
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._updates.put_nowait(None)
        if self._api is not None:
            await self._api.close()

    async def submit(self, step: StepSpec) -> None:
        key = step.key
        if self._closed:
            raise PermanentError(f"step {key}: the Kubernetes executor is closed; submit first")
        name = job_name(key)
        if name in self._attempts:
            log.debug("step already submitted", step=str(key))
            return
        attempt = _Attempt(key, name)
        self._attempts[name] = attempt
        try:
            options = self._options
            if self._defaults or step.kubernetes:
                options = job_options(options, merge_options(*self._defaults, *step.kubernetes))
            body = build_job(step, options)
        except ConfigError as error:
            self._end(attempt, StepUpdate(key, StepPhase.FAILED, _now(), reason=str(error)))
            return
        try:
            response = await self._call(self._batch.create_namespaced_job, self._namespace, body)
        except ApiError as error:
            if error.status == 409:
                log.info("job adopted", step=str(key), job=name)
                if name in self._jobs:
                    self._observe("MODIFIED", self._jobs[name])
                return
            reason = f"the API server refused the Job {name}: {error}; fix the step or the RBAC"
            self._end(attempt, StepUpdate(key, StepPhase.FAILED, _now(), reason=reason))
            return
        except TemporaryError:
            del self._attempts[name]  # a later submit must try again
            raise
        response.release()
        log.info("job created", step=str(key), job=name)

    def updates(self) -> AsyncIterator[StepUpdate]:
        if self._consumed:
            raise RuntimeError(
                "KubernetesExecutor.updates() has a single consumer, already iterating"
            )
        self._consumed = True
        return self._drain()

    async def cancel(self, key: StepKey) -> None:
        attempt = self._attempts.get(job_name(key))
        if attempt is None or attempt.ended or attempt.cancelling:
            return
        attempt.cancelling = True
        try:
            response = await self._call(
                self._batch.delete_namespaced_job,
                attempt.name,
                self._namespace,
                propagation_policy="Background",
            )
        except ApiError as error:
            if error.status != 404:
                attempt.cancelling = False
                raise
            # already gone: the watch may never tell, so report it here
            self._end(attempt, StepUpdate(key, StepPhase.CANCELLED, _now(), reason="cancelled"))
            return
        response.release()

    async def logs(self, key: StepKey, follow: bool = False) -> AsyncIterator[str]:
        kept = None if follow else self._ended_logs.pop(job_name(key), None)
        if kept is not None:  # read when the attempt ended
            for line in kept.splitlines():
                yield line
            return
        pod = await self._pod(job_name(key))
        if pod is None:
            return
        response = await self._call(
            self._core.read_namespaced_pod_log,
            pod["metadata"]["name"],
            self._namespace,
            container=CONTAINER,
            follow=follow,
            _request_timeout=aiohttp.ClientTimeout(),
        )
        async with response:
            async for line in response.content:
                yield line.decode("utf-8", "replace").rstrip("\n")

    async def adopt(self, keys: Sequence[StepKey]) -> None:
        """Watch `keys`' Jobs as ours; report those that ended or no longer exist now."""
        for key in keys:
            name = job_name(key)
            if name in self._attempts:
                continue
            # the store already holds it as Running: no second RUNNING update
            attempt = self._attempts[name] = _Attempt(key, name, running=True)
            job = self._jobs.get(name)
            if job is None:
                reason = f"the Job {name} no longer exists in namespace {self._namespace}"
                self._end(attempt, StepUpdate(key, StepPhase.FAILED, _now(), reason=reason))
            else:
                self._observe("MODIFIED", job)

    # --- the watch's callbacks -----------------------------------------------------------

    def _observe(self, kind: str, job: Json) -> None:
        name = job["metadata"]["name"]
        if kind == "DELETED":
            self._jobs.pop(name, None)
        else:
            self._jobs[name] = job
        attempt = self._attempts.get(name)
        if attempt is None or attempt.ended:
            return
        if kind == "DELETED":
            phase = StepPhase.CANCELLED if attempt.cancelling else StepPhase.FAILED
            reason = "cancelled" if attempt.cancelling else f"the Job {name} was deleted"
            self._end(attempt, StepUpdate(attempt.key, phase, _now(), reason=reason))
            return
        ending = verdict(job)
        if ending is None:
            if is_active(job) and not attempt.running:
                attempt.running = True
                log.info("step started", step=str(attempt.key), job=name)
                self._updates.put_nowait(StepUpdate(attempt.key, StepPhase.RUNNING, _now()))
            return
        attempt.ended = True  # from now on, later events of this Job change nothing
        self._spawn(self._finish(attempt, *ending), f"k8s step {attempt.key} end")

    def _relisted(self, jobs: list[Json]) -> None:
        """After a 410 (or at start): reconcile with the full list, as if each were watched."""
        listed = {job["metadata"]["name"]: job for job in jobs}
        for name in set(self._jobs) - set(listed):
            self._observe("DELETED", self._jobs[name])
        for job in listed.values():
            self._observe("MODIFIED", job)

    # --- internals -----------------------------------------------------------------------

    async def _finish(self, attempt: _Attempt, phase: StepPhase, reason: str | None) -> None:
        """One list of the Job's Pods and one read of its log, then the terminal update.

        The log is kept for the `logs()` call the run controller makes next, so one read
        serves both the tail and the stored log."""
        report, tail, outputs = pod_report(None), None, None
        try:
            pod = await self._pod(attempt.name)
            report = pod_report(pod)
            outputs = report.outputs
            if pod is not None:
                text = await self._log(pod["metadata"]["name"])
                self._ended_logs[attempt.name] = text
                tail = "\n".join(text.splitlines()[-self._tail_lines :] if self._tail_lines else [])
                if outputs is None:  # as on the local executor: a JSON object as last line
                    outputs = parse_termination_message(text)
        except (ApiError, TemporaryError) as error:
            log.warning("step details unavailable", step=str(attempt.key), error=str(error))
        # a Pod that never ran (image pull) says more than the deadline that ended its wait
        never_ran = phase is StepPhase.TIMED_OUT and report.exit_code is None
        if report.reason is not None and (phase is StepPhase.FAILED or never_ran):
            phase, reason = StepPhase.FAILED, report.reason
        update = StepUpdate(attempt.key, phase, _now(), report.exit_code, reason, outputs, tail)
        self._end(attempt, update)

    def _end(self, attempt: _Attempt, update: StepUpdate) -> None:
        attempt.ended = True
        log.info("step ended", step=str(update.key), phase=str(update.phase), reason=update.reason)
        self._updates.put_nowait(update)

    async def _pod(self, name: str) -> Json | None:
        response = await self._call(
            self._core.list_namespaced_pod,
            self._namespace,
            label_selector=f"job-name={name}",
            background=True,
        )
        async with response:
            body = await response.json()
        pod = newest_pod(body.get("items") or [])
        return dict(pod) if pod is not None else None

    async def _log(self, pod: str) -> str:
        response = await self._call(
            self._core.read_namespaced_pod_log,
            pod,
            self._namespace,
            container=CONTAINER,
            background=True,
        )
        async with response:
            text: str = await response.text()
        return text

    async def _connect(self) -> Any:
        if self._factory is not None:
            return await self._factory()
        configuration = client.Configuration()
        try:
            if self._kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
                # the loader is untyped; it reads the service account's token and CA files
                config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration
                )
            else:
                await config.load_kube_config(
                    config_file=self._kubeconfig,
                    context=self._context,
                    client_configuration=configuration,
                )
        except (config.ConfigException, OSError) as error:
            raise ConfigError(
                f"k8s: cannot load the cluster's configuration (kubeconfig {self._kubeconfig!r},"
                f" context {self._context!r}): {error}; set k8s.kubeconfig and k8s.context, or"
                " run eventflow in a Pod with a service account"
            ) from error
        return client.ApiClient(configuration)

    async def _drain(self) -> AsyncIterator[StepUpdate]:
        while (update := await self._updates.get()) is not None:
            yield update

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            # without the watch no attempt would ever end: say so loudly
            log.exception("job watch failed")
            raise
