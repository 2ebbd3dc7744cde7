"""Thin routes: translate HTTP into JobStore calls and store refusals into status codes (Cog's http.py habit)."""

from __future__ import annotations

import io
import math
from enum import Enum
from typing import Any

from fastapi import APIRouter, Header, HTTPException, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse

from restorer.config import resolve_config
from restorer.errors import ConfigError

from .events import job_events, resume_id
from .jobs import (
    IdempotencyInFlight,
    IdempotencyMismatch,
    Job,
    JobConflict,
    JobNotFound,
    JobStore,
    QueueFull,
)
from .uploads import IMAGE_FIELD, RestoreParams, UploadRejected, inspect_image, parse_params, read_upload

router = APIRouter()

JOB_ID = Path(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description="Job id.")

IDEMPOTENCY_RETRY_AFTER_S = 1
"""A twin request with the same Idempotency-Key finishes creating its job within milliseconds."""


class ResultFormat(str, Enum):
    png = "png"
    webp = "webp"
    jpeg = "jpeg"


RESULT_MEDIA = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}
RESULT_SAVE: dict[str, dict[str, Any]] = {
    "png": {"format": "PNG"},
    "webp": {"format": "WEBP", "quality": 95},  # near-lossless: the point of the service is quality
    "jpeg": {"format": "JPEG", "quality": 95},
}


def _restore_openapi() -> dict[str, Any]:
    """Describe the multipart body we parse ourselves (FastAPI cannot infer it from a raw Request)."""
    schema = RestoreParams.model_json_schema()
    props = {IMAGE_FIELD: {"type": "string", "format": "binary", "description": "PNG, JPEG or WebP."}}
    props.update(schema["properties"])
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": [IMAGE_FIELD], "properties": props}
                }
            },
        }
    }


def _error(status: int, reason: str, message: str) -> dict[int | str, dict[str, Any]]:
    return {status: {"description": f"{reason}: {message}", "content": {"application/json": {}}}}


def _store(request: Request) -> JobStore:
    return request.app.state.store


@router.post(
    "/restore",
    status_code=202,
    response_model=Job,
    openapi_extra=_restore_openapi(),
    responses={
        **_error(413, "too large", "body or image over the byte cap"),
        **_error(415, "unsupported", "not PNG/JPEG/WebP (sniffed from the bytes)"),
        **_error(422, "invalid", "bad parameters, unreadable/truncated image, zero size or too many pixels"),
        **_error(429, "queue full", "retry after Retry-After seconds"),
        **_error(503, "unavailable", "Redis unreachable; retry after Retry-After seconds"),
    },
)
async def restore(
    request: Request,
    response: Response,
    idempotency_key: str | None = Header(None, max_length=255, description="Same key → same job."),
) -> dict[str, Any]:
    """Submit an image for restoration; answers 202 with the job at once."""
    state = request.app.state
    settings = state.settings
    try:
        upload = await read_upload(request, settings)
        params = parse_params(upload.fields)
        preset = params.preset or settings.preset
        overrides = params.overrides()
        try:
            cfg = resolve_config(preset, overrides)
        except ConfigError as exc:
            raise UploadRejected(422, "bad_params", str(exc)) from None
        rounds = cfg.max_rounds if cfg.dqr == "on" else 1
        checkpoints = rounds * math.ceil(cfg.steps / cfg.checkpoint_every)
        if checkpoints > settings.max_checkpoints_per_job:
            raise UploadRejected(
                422, "bad_params",
                f"this job would write up to {checkpoints} checkpoints ({rounds} round(s) × {cfg.steps} steps / "
                f"checkpoint_every {cfg.checkpoint_every}); the limit is {settings.max_checkpoints_per_job}: "
                "raise checkpoint_every or lower steps / max_rounds",
            )
        width, height = await run_in_threadpool(inspect_image, upload.data, upload.kind, settings.max_pixels)
    except UploadRejected as exc:
        state.metrics.upload_rejected.labels(reason=exc.reason).inc()
        raise HTTPException(exc.status, exc.message) from None
    try:
        job, created = await run_in_threadpool(
            state.store.submit,
            image=upload.data,
            filename=upload.filename,
            width=width,
            height=height,
            params={"preset": preset, **overrides},
            webhook=str(params.webhook) if params.webhook else None,
            idempotency_key=idempotency_key,
        )
    except QueueFull as exc:
        state.metrics.upload_rejected.labels(reason="queue_full").inc()
        raise HTTPException(429, str(exc), headers={"Retry-After": str(settings.queue_full_retry_after_s)}) from None
    except IdempotencyMismatch as exc:
        raise HTTPException(422, str(exc)) from None
    except IdempotencyInFlight as exc:
        raise HTTPException(409, str(exc), headers={"Retry-After": str(IDEMPOTENCY_RETRY_AFTER_S)}) from None
    if created:
        state.metrics.jobs_submitted.inc()
    else:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = job["urls"]["get"]
    return job


@router.get("/jobs/{job_id}", response_model=Job, responses=_error(404, "not found", "unknown or expired"))
def get_job(request: Request, job_id: str = JOB_ID) -> dict[str, Any]:
    """The job object."""
    job = _store(request).get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r} (unknown or expired)")
    return job


@router.get(
    "/jobs/{job_id}/events",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **_error(404, "not found", "unknown or expired")},
)
async def job_event_stream(
    request: Request,
    job_id: str = JOB_ID,
    last_event_id: str | None = Header(None, description="Resume after this event id."),
) -> EventSourceResponse:
    """SSE: `status`, `checkpoint` and `completed` events; past ones replayed, then live; ends after `completed`."""
    state = request.app.state
    if not await run_in_threadpool(state.store.exists, job_id):
        raise HTTPException(404, f"no job {job_id!r} (unknown or expired)")
    return EventSourceResponse(
        job_events(state.aredis, state.store.keys, job_id, state.settings, resume_id(last_event_id)),
        ping=state.settings.sse_ping_s,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _convert(png: bytes, fmt: str) -> bytes:
    if fmt == "png":
        return png
    with Image.open(io.BytesIO(png)) as img:
        out = io.BytesIO()
        img.convert("RGB").save(out, **RESULT_SAVE[fmt])
        return out.getvalue()


@router.get(
    "/jobs/{job_id}/result",
    response_class=Response,
    responses={
        200: {"content": {m: {} for m in RESULT_MEDIA.values()}},
        **_error(404, "not found", "unknown job or expired result"),
        **_error(409, "not finished", "the job has not succeeded"),
    },
)
async def job_result(
    request: Request, job_id: str = JOB_ID, format: ResultFormat = Query(ResultFormat.png)
) -> Response:
    """The restored image: PNG by default, `?format=webp|jpeg` converts."""
    try:
        png = await run_in_threadpool(_store(request).result, job_id)
    except JobNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except JobConflict as exc:
        raise HTTPException(409, str(exc)) from None
    data = await run_in_threadpool(_convert, png, format.value)
    return Response(
        data,
        media_type=RESULT_MEDIA[format.value],
        headers={"Content-Disposition": f'inline; filename="{job_id}.{format.value}"'},
    )


@router.get(
    "/jobs/{job_id}/checkpoints/{n}/preview",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **_error(404, "not found", "no such checkpoint")},
)
def checkpoint_preview(request: Request, job_id: str = JOB_ID, n: int = Path(..., ge=0, le=100_000)) -> Response:
    """PNG preview (longest side ≤ preview_max_side) of checkpoint n's estimate."""
    try:
        data = _store(request).preview(job_id, n)
    except JobNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    return Response(data, media_type="image/png")


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=Job,
    responses={**_error(404, "not found", "unknown or expired"), **_error(409, "conflict", "already ended")},
)
def cancel_job(request: Request, job_id: str = JOB_ID) -> dict[str, Any]:
    """Queued → canceled at once; running → stops at its next step (poll or follow events)."""
    try:
        return _store(request).cancel(job_id)
    except JobNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except JobConflict as exc:
        raise HTTPException(409, str(exc)) from None


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up (no dependency checked: restarting the API would not fix Redis)."""
    return {"status": "ok"}


@router.get("/readyz", responses=_error(503, "not ready", "Redis down or no worker with a loaded model"))
def readyz(request: Request, response: Response) -> dict[str, Any]:
    """Ready when Redis answers and at least one worker has its model loaded."""
    settings = request.app.state.settings
    try:
        _store(request).redis.ping()
    except RedisError as exc:
        response.status_code = 503
        response.headers["Retry-After"] = str(settings.unavailable_retry_after_s)
        return {"status": "unavailable", "redis": f"unreachable: {exc}", "workers": 0}
    workers = _store(request).ready_workers()
    if not workers:
        response.status_code = 503
        response.headers["Retry-After"] = str(settings.unavailable_retry_after_s)
        return {"status": "unavailable", "redis": "ok", "workers": 0, "detail": "no worker has its model loaded"}
    return {"status": "ok", "redis": "ok", "workers": len(workers)}


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(request: Request) -> Response:
    """Prometheus text format; queue depth is sampled now (stale if Redis is down)."""
    state = request.app.state
    try:
        state.metrics.queue_depth.set(state.store.queue_depth())
    except RedisError:
        pass
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
