"""A stateful Kubernetes API emulator on loopback, for the Kubernetes executor's tests.

It serves what the executor uses, over real HTTP with real field names: batch/v1 Jobs
(create, get, list and watch by label selector from a resourceVersion, with bookmarks and
410 Gone for compacted versions, delete) and v1 Pods (list by label, log). A job
"controller" that the test drives (`start`, `succeed`, `fail`, `oom_kill`, `image_pull_error`,
`deadline_exceeded`, in tests/k8s_controller.py) moves Jobs and their Pods as the real one
would; `on_created`/`on_deleted` let something run them (tests/k8s_kubelet.py). Every
request is recorded and counted by verb (`verbs`, `watch_events`); faults are injected on
demand (`fail_next`, `drop_watches`, `gone_on_next_watch`).

kmock (PyPI) was tried first: it keeps no resourceVersion history ('...' for every list),
replays every object on each watch and has no label selectors or 410, so it cannot check
resumption. This emulator does not do auth, field selectors, patches or other kinds.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from bisect import bisect_right
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from operator import itemgetter
from typing import Any

import uvicorn
from kubernetes_asyncio.client import ApiClient, Configuration
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.k8s_controller import JobController, stamp

JOBS = "/apis/batch/v1/namespaces/{namespace}/jobs"
PODS = "/api/v1/namespaces/{namespace}/pods"


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any


@dataclass
class _Fault:
    status: int
    count: int
    retry_after: str | None


def _status(code: int, reason: str, message: str) -> JSONResponse:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
    return JSONResponse({**body, "message": message, "reason": reason, "code": code}, code)


def _truthy(value: str | None) -> bool:
    """As the API server's Go strconv.ParseBool: kubernetes-asyncio sends 'True'."""
    return value in {"1", "t", "T", "true", "TRUE", "True"}


def _selected(obj: dict[str, Any], selector: str | None) -> bool:
    labels = obj["metadata"].get("labels") or {}
    for term in filter(None, (selector or "").split(",")):
        name, _, value = term.partition("=")
        if labels.get(name) != value:
            return False
    return True


def _verb(request: Recorded) -> str:
    """create, watch, list, get, delete (Jobs); list pods; read log."""
    if request.path.endswith("/log"):
        return "read log"
    if "/pods" in request.path:
        return "list pods"
    if request.method == "POST":
        return "create"
    if request.method == "DELETE":
        return "delete"
    if _truthy(request.query.get("watch")):
        return "watch"
    return "list" if request.path.endswith("/jobs") else "get"


@dataclass
class KubeEmulator(JobController):
    namespace: str = "eventflow"
    url: str = ""
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    history: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    version: int = 100
    oldest: int = 100
    faults: dict[str, _Fault] = field(default_factory=dict)
    gone_next: bool = False
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    watch_events: int = 0  # events sent on watch streams, bookmarks included
    # What runs a created Job's Pod, when something does (tests/k8s_kubelet.py); told of
    # each Job created and deleted.
    on_created: Callable[[str], None] | None = None
    on_deleted: Callable[[str], None] | None = None
    _watch_epoch: int = 0
    _abort: bool = False
    _bookmarks: int = 0

    # --- what a test reads ---------------------------------------------------------------

    def calls(self, method: str, path_part: str = "") -> list[Recorded]:
        return [r for r in self.requests if r.method == method and path_part in r.path]

    def verbs(self) -> Counter[str]:
        """Requests by verb, as the API server's audit log counts them."""
        counted: Counter[str] = Counter()
        for request in self.requests:
            counted[_verb(request)] += 1
        return counted

    def configuration(self) -> Configuration:
        return Configuration(host=self.url)

    async def api_client(self) -> ApiClient:
        return ApiClient(self.configuration())

    # --- fault injection -----------------------------------------------------------------

    def fail_next(
        self, verb: str, status: int, count: int = 1, retry_after: str | None = None
    ) -> None:
        """The next `count` requests of `verb` ("create", "list", "watch") answer `status`."""
        self.faults[verb] = _Fault(status, count, retry_after)

    async def drop_watches(self, abort: bool = False) -> None:
        """End every open watch stream: cleanly, as the server's timeout does, or with
        `abort`, by breaking the connection mid-response."""
        async with self.changed:
            self._abort = abort
            self._watch_epoch += 1
            self.changed.notify_all()

    def gone_on_next_watch(self) -> None:
        self.gone_next = True

    def compact(self) -> None:
        """Forget history up to now: a watch from an older version gets 410 Gone."""
        self.oldest = self.version
        self.history.clear()

    async def bookmark(self) -> None:
        async with self.changed:
            self._bookmarks += 1
            self.changed.notify_all()

    async def _changed(self, kind: str, obj: dict[str, Any]) -> None:
        async with self.changed:
            self.version += 1
            obj["metadata"]["resourceVersion"] = str(self.version)
            self.history.append((self.version, kind, json.loads(json.dumps(obj))))
            self.changed.notify_all()

    def _fault(self, verb: str) -> Response | None:
        fault = self.faults.get(verb)
        if fault is None or fault.count <= 0:
            return None
        fault.count -= 1
        reasons = {
            429: "TooManyRequests",
            500: "InternalError",
            503: "ServiceUnavailable",
            409: "AlreadyExists",
        }
        response = _status(
            fault.status, reasons.get(fault.status, "Unknown"), f"injected {fault.status}"
        )
        if fault.retry_after is not None:
            response.headers["Retry-After"] = fault.retry_after
        return response

    async def _record(self, request: Request) -> Any:
        raw = await request.body()
        body = json.loads(raw) if raw else None
        self.requests.append(
            Recorded(request.method, request.url.path, dict(request.query_params), body)
        )
        return body

    async def _jobs(self, request: Request) -> Response:
        body = await self._record(request)
        if request.method == "POST":
            return await self._create(body)
        query = request.query_params
        selector = query.get("labelSelector")
        if _truthy(query.get("watch")):
            return self._fault("watch") or self._watch(
                query.get("resourceVersion"), selector, _truthy(query.get("allowWatchBookmarks"))
            )
        if fault := self._fault("list"):
            return fault
        items = [job for job in self.jobs.values() if _selected(job, selector)]
        meta = {"resourceVersion": str(self.version)}
        return JSONResponse(
            {"kind": "JobList", "apiVersion": "batch/v1", "metadata": meta, "items": items}
        )

    async def _create(self, body: dict[str, Any]) -> Response:
        if fault := self._fault("create"):
            return fault
        name = body["metadata"]["name"]
        if name in self.jobs:
            return _status(409, "AlreadyExists", f'jobs.batch "{name}" already exists')
        job = json.loads(json.dumps(body))
        job["metadata"] |= {
            "uid": str(uuid.uuid4()),
            "creationTimestamp": stamp(),
            "generation": 1,
        }
        job["status"] = {}
        self.jobs[name] = job
        await self._changed("ADDED", job)
        if self.on_created is not None:
            self.on_created(name)
        return JSONResponse(job, 201)

    def _watch(self, since: str | None, selector: str | None, bookmarks: bool) -> Response:
        start = int(since or self.version)
        if self.gone_next or start < self.oldest:
            self.gone_next = False
            gone = {
                "type": "ERROR",
                "object": {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "message": f"too old resource version: {start} ({self.oldest})",
                    "reason": "Expired",
                    "code": 410,
                },
            }
            return StreamingResponse(iter([json.dumps(gone) + "\n"]), media_type="application/json")
        return StreamingResponse(
            self._stream(start, selector, bookmarks), media_type="application/json"
        )

    async def _stream(
        self, start: int, selector: str | None, bookmarks: bool
    ) -> AsyncIterator[str]:
        epoch, marks, seen = self._watch_epoch, self._bookmarks, start
        while True:
            async with self.changed:
                await self.changed.wait_for(partial(self._news, seen, epoch, marks))
                if self._watch_epoch != epoch:
                    if self._abort:
                        raise ConnectionAbortedError("watch dropped by the test")
                    return
                # history is in version order: skip what this stream already sent
                events = self.history[bisect_right(self.history, seen, key=itemgetter(0)) :]
                seen = self.version
                if self._bookmarks != marks:
                    marks = self._bookmarks
                    if bookmarks:
                        mark = {
                            "kind": "Job",
                            "apiVersion": "batch/v1",
                            "metadata": {"resourceVersion": str(seen)},
                        }
                        events.append((seen, "BOOKMARK", mark))
            for _, kind, obj in events:
                if kind == "BOOKMARK" or _selected(obj, selector):
                    self.watch_events += 1
                    yield json.dumps({"type": kind, "object": obj}) + "\n"

    def _news(self, seen: int, epoch: int, marks: int) -> bool:
        return self.version > seen or self._watch_epoch != epoch or self._bookmarks != marks

    async def _job(self, request: Request) -> Response:
        await self._record(request)
        name = request.path_params["name"]
        job = self.jobs.get(name)
        if job is None:
            return _status(404, "NotFound", f'jobs.batch "{name}" not found')
        if request.method == "GET":
            return JSONResponse(job)
        del self.jobs[name]
        for pod_name in [
            p for p, pod in self.pods.items() if pod["metadata"]["labels"]["job-name"] == name
        ]:
            del self.pods[pod_name]
        await self._changed("DELETED", job)
        if self.on_deleted is not None:
            self.on_deleted(name)
        return JSONResponse(
            {"kind": "Status", "apiVersion": "v1", "status": "Success", "details": {"name": name}}
        )

    async def _pods(self, request: Request) -> Response:
        await self._record(request)
        selector = request.query_params.get("labelSelector")
        items = [pod for pod in self.pods.values() if _selected(pod, selector)]
        meta = {"resourceVersion": str(self.version)}
        return JSONResponse(
            {"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": items}
        )

    async def _log(self, request: Request) -> Response:
        await self._record(request)
        name = request.path_params["name"]
        if name not in self.logs:
            return _status(404, "NotFound", f'pods "{name}" not found')
        lines = self.logs[name].splitlines(keepends=True)
        tail = request.query_params.get("tailLines")
        return PlainTextResponse("".join(lines[-int(tail) :] if tail else lines))

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route(JOBS, self._jobs, methods=["GET", "POST"]),
                Route(JOBS + "/{name}", self._job, methods=["GET", "DELETE"]),
                Route(PODS, self._pods, methods=["GET"]),
                Route(PODS + "/{name}/log", self._log, methods=["GET"]),
            ]
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def running_emulator(namespace: str = "eventflow") -> AsyncIterator[KubeEmulator]:
    """An emulator served by uvicorn on a free loopback port, in the test's event loop."""
    emulator = KubeEmulator(namespace)
    port = _free_port()
    config = uvicorn.Config(
        emulator.app(),
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(), name="k8s emulator")
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    emulator.url = f"http://127.0.0.1:{port}"
    try:
        yield emulator
    finally:
        await emulator.drop_watches()
        server.should_exit = True
        await task
