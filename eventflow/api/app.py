"""The HTTP face of eventflow: webhook endpoints, the REST API (/api/v1, and its docs at
/api/docs and /api/openapi.json, behind bearer tokens when any is configured), health.

Every error is JSON `{"error": "..."}` with a 4xx/5xx status and a reason a user can act on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from eventflow.api import deadletters, intake, registration, runs
from eventflow.api.auth import open_api_warning, with_api_tokens
from eventflow.api.responses import as_json, error
from eventflow.api.webhooks import ASGIApp, with_webhooks
from eventflow.reloading import reload_on_sighup
from eventflow.service import Service
from eventflow.watching import watch
from eventflow.workers.supervising import IntakeWorkers

log = structlog.get_logger()


def create_app(
    service: Service, *, sighup_reloads: bool = False, workers: IntakeWorkers | None = None
) -> ASGIApp:
    """The ASGI app: webhooks served raw, the rest by FastAPI (behind the API tokens, when
    any is configured), whose lifespan starts and stops the service. With `sighup_reloads`,
    SIGHUP reloads the resource files, as `POST /api/v1/reload` does; with the setting
    `watch_resources`, a change to the files does. With `workers`, the lifespan starts the
    intake workers once the service runs, and stops them before it."""
    warning = open_api_warning(service.settings.api)
    if warning is not None:
        log.warning("api without tokens", reason=warning)
    rest = create_rest_app(service, sighup_reloads=sighup_reloads, workers=workers)
    return with_webhooks(service, with_api_tokens(service.settings.api, rest))


@asynccontextmanager
async def _running_workers(service: Service, workers: IntakeWorkers | None) -> AsyncIterator[None]:
    """The intake workers running, and applying each change of the service's sensors."""
    if workers is None:
        yield
        return
    await workers.start()
    service.sensor_set.after_swap = workers.reload
    try:
        yield
    finally:
        service.sensor_set.after_swap = None
        await workers.stop(service.settings.shutdown_grace_seconds)


@asynccontextmanager
async def _reloading(service: Service, *, sighup_reloads: bool) -> AsyncIterator[None]:
    """SIGHUP (with `sighup_reloads`) and the file watcher (`watch_resources`) reloading."""
    stop_reloading = reload_on_sighup(service.reload) if sighup_reloads else None
    settings = service.settings
    watcher = (
        asyncio.create_task(
            watch(service.resource_paths, service.reload, settings.watch_interval_seconds),
            name="resource-watcher",
        )
        if settings.watch_resources
        else None
    )
    try:
        yield
    finally:
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        if stop_reloading is not None:
            stop_reloading()


def create_rest_app(
    service: Service,
    manage_service: bool = True,
    *,
    sighup_reloads: bool = False,
    workers: IntakeWorkers | None = None,
) -> FastAPI:
    """REST API and health; with `manage_service`, its lifespan starts and stops the service
    (and the intake `workers`, when there are)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_service:
            await service.start()
        async with contextlib.AsyncExitStack() as stack:
            if manage_service:
                stack.push_async_callback(service.stop)
            await stack.enter_async_context(_running_workers(service, workers))
            await stack.enter_async_context(_reloading(service, sighup_reloads=sighup_reloads))
            yield

    # The docs live under /api, so they are behind the API's tokens (read scope) with it.
    app = FastAPI(
        title="eventflow",
        lifespan=lifespan,
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    app.state.service = service
    app.include_router(intake.router)
    app.include_router(runs.router)
    app.include_router(deadletters.router)
    app.include_router(registration.router)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        return error(400, f"{where}: {first.get('msg', 'invalid')}")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        """200 when events can be taken and stored; 503 with the reason otherwise.

        Both answers list each sensor's connection to its source (null: it keeps none) and,
        from sensors that say, the problem keeping it down."""
        if not service.ready:
            return error(503, "not ready: starting or stopping")
        sensors = service.sensor_connections()
        reason = service.not_ready_reason()
        if reason is None:
            try:
                await service.store.ping()
            except Exception as exc:
                reason = f"store unreachable: {exc}"
        if reason is not None:
            return JSONResponse(
                {"error": f"not ready: {reason}", "sensors": sensors}, status_code=503
            )
        return as_json({"status": "ready", "sensors": sensors})

    return app
