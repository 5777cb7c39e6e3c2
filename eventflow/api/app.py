"""The HTTP face of eventflow: webhook endpoints, the REST API (/api/v1), health.

Every error is JSON `{"error": "..."}` with a 4xx/5xx status and a reason a user can act on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from eventflow.api import intake, runs
from eventflow.api.responses import as_json, error
from eventflow.api.webhooks import ASGIApp, with_webhooks
from eventflow.service import Service


def create_app(service: Service) -> ASGIApp:
    """The ASGI app: webhooks served raw, the rest by FastAPI, whose lifespan starts and
    stops the service."""
    return with_webhooks(service, create_rest_app(service))


def create_rest_app(service: Service, manage_service: bool = True) -> FastAPI:
    """REST API and health; with `manage_service`, its lifespan starts and stops the service."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_service:
            await service.start()
        try:
            yield
        finally:
            if manage_service:
                await service.stop()

    app = FastAPI(title="eventflow", lifespan=lifespan, docs_url="/api/docs", redoc_url=None)
    app.state.service = service
    app.include_router(intake.router)
    app.include_router(runs.router)

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
        if not service.ready:
            return error(503, "not ready: starting or stopping")
        try:
            await service.store.ping()
        except Exception as exc:
            return error(503, f"not ready: store unreachable: {exc}")
        return as_json({"status": "ready", "sensors": sorted(service.sensors)})

    return app
