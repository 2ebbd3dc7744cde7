"""API metrics (names are contracts, see SERVICE.md) and the middleware that times every request.

Each app gets its own CollectorRegistry so several apps in one process never collide. Labels carry only
bounded values: the route template (`/jobs/{job_id}`), never a job id or a file name.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Request latency: milliseconds for reads, up to seconds for big uploads; SSE streams land in +Inf."""

UNMATCHED_ROUTE = "unmatched"
"""Route label for requests no route matched, so 404 scans cannot explode the label set."""


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs_submitted = Counter(
            "restore_jobs_submitted_total", "Jobs accepted and enqueued.", registry=self.registry
        )
        self.upload_rejected = Counter(
            "restore_upload_rejected_total",
            "Submissions refused, by reason (too_large, unsupported_type, bad_params, queue_full, ...).",
            ["reason"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "restore_http_request_duration_seconds",
            "HTTP request latency by route template, method and status.",
            ["route", "method", "status"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "restore_queue_depth", "Jobs waiting in the queue (sampled at scrape time).", registry=self.registry
        )
        self.queue_bytes = Gauge(
            "restore_queue_bytes",
            "Upload bytes of the queued jobs (sampled at scrape time; capped by max_queue_bytes).",
            registry=self.registry,
        )
        self.workers_ready = Gauge(
            "restore_workers_ready",
            "Workers with their model loaded and a current heartbeat (sampled at scrape "
            "time); 0 means jobs queue but nothing runs them.",
            registry=self.registry,
        )
        self.sse_streams = Gauge(
            "restore_sse_streams",
            "Event streams this API process serves now (capped by sse_max_streams).",
            registry=self.registry,
        )


class MetricsMiddleware:
    """Pure ASGI middleware: times each HTTP request and labels it with the matched route template."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: dict[str, Any] = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED_ROUTE
            self.metrics.http_duration.labels(
                route=template, method=scope["method"], status=str(status["code"])
            ).observe(time.perf_counter() - start)
