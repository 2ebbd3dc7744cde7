"""App factory (`create_app`) and the `upzir serve` entry point (`main`)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from prometheus_client import disable_created_metrics
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError
from redis.exceptions import TimeoutError as RedisTimeoutError

from jobs import webhooks
from jobs.errors import StoreError
from jobs.reaper import Reaper
from jobs.settings import Settings
from jobs.store import JobStore
from restorer.config import resolve_config
from restorer.errors import ConfigError

from .auth import is_loopback
from .events import StreamSlots, connect_async
from .metrics import ApiMetrics, MetricsMiddleware
from .routes import router
from .uploads import UploadSlots

log = logging.getLogger("upzir.api")

STATIC_DIR = Path(__file__).with_name("static")
"""The web page (plain HTML/CSS/JS, package data) served at `/`; it uses only the public API."""

EXIT_CONFIG = 2
"""Exit status of `upzir serve` when the configuration is invalid (argparse's usage-error status)."""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API; Redis is connected lazily, so the app starts (and /healthz answers) with Redis down."""
    settings = settings or Settings()
    resolve_config(settings.preset)  # a bad UPZIR_PRESET fails at start, not on every request
    metrics = ApiMetrics()
    # PIL's own decompression-bomb guard agrees with our pixel cap (uploads are the only images opened here).
    Image.MAX_IMAGE_PIXELS = settings.max_pixels

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.metrics = metrics
        app.state.store = JobStore(settings)
        app.state.aredis = connect_async(settings)
        app.state.uploads = UploadSlots(settings.max_concurrent_uploads, settings.upload_slot_wait_s)
        app.state.streams = StreamSlots(settings)
        warn_if_open(settings)
        reaper = None
        if settings.api_reaper:
            store = app.state.store
            reaper = Reaper(store, settings, owner="api", notify=lambda record: webhooks.notify(store, record))
            reaper.start()
        try:
            yield
        finally:
            if reaper is not None:
                reaper.stop(timeout=settings.redis_timeout_s * 2)
            await app.state.aredis.aclose()
            app.state.store.redis.close()

    app = FastAPI(
        title="UP-ZeroIR restoration service",
        version="0.1.0",
        description="Zero-shot image restoration jobs: submit, follow progress, fetch the result.",
        lifespan=lifespan,
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    @app.exception_handler(RedisOutOfMemoryError)
    async def redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
        """Redis down, slow or full (OOM under noeviction): the job store cannot take this now; say when to retry."""
        full = isinstance(exc, RedisOutOfMemoryError)
        log.log(
            logging.ERROR if full else logging.WARNING,
            "Redis %s on %s %s: %s",
            "out of memory" if full else "unavailable",
            request.method,
            request.url.path,
            exc,
        )
        if request.url.path == "/restore":
            metrics.upload_rejected.labels(reason="store_full" if full else "unavailable").inc()
        detail = (
            "the job store (Redis) is full; retry later, when finished jobs have expired"
            if full
            else "the job store (Redis) is unreachable; retry shortly"
        )
        return JSONResponse(
            {"detail": detail}, status_code=503, headers={"Retry-After": str(settings.unavailable_retry_after_s)}
        )

    @app.exception_handler(StoreError)
    async def store_refused(request: Request, exc: StoreError) -> JSONResponse:
        """Every store refusal carries its status (404 unknown, 409 conflict, 429 queue full, ...)."""
        if request.url.path == "/restore":
            metrics.upload_rejected.labels(reason=exc.reason).inc()
        return JSONResponse({"detail": str(exc)}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(parts)}, status_code=422)

    return app


def warn_if_open(settings: Settings) -> None:
    """Say loudly when nothing protects the API or its webhooks (the service is meant to sit behind both)."""
    if not settings.tokens and not is_loopback(settings.host):
        log.warning(
            "UPZIR_API_TOKENS is not set and the API listens on %s: anyone who can reach it may submit,"
            " read and cancel jobs",
            settings.host,
        )
    if settings.webhook_secret is None:
        log.warning("UPZIR_WEBHOOK_SECRET is not set: webhook bodies go unsigned")


def main(argv: list[str] | None = None) -> int:
    """`upzir serve`: run the API under uvicorn."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="upzir serve", description="Run the restoration HTTP API.")
    parser.add_argument("--host", help="bind address (UPZIR_HOST)")
    parser.add_argument("--port", type=int, help="port (UPZIR_PORT)")
    parser.add_argument("--log-level", help="debug, info, warning, error (UPZIR_LOG_LEVEL)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "log_level": args.log_level}.items() if v}
    try:
        settings = Settings(**overrides)
        app = create_app(settings)
    except (ValidationError, ConfigError) as exc:
        print(f"upzir serve: invalid configuration: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_CONFIG
    disable_created_metrics()  # `*_created` series only double the scrape size; this process is ours
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        proxy_headers=True,
    )
    return 0
