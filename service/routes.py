"""Thin routes: translate HTTP into JobStore calls (Cog's http.py habit).

Store refusals carry their own HTTP status (`jobs.errors.StoreError`) and are answered by one handler in
`app.py`; the routes only say which store call an endpoint is.
"""

from __future__ import annotations

import io
import math
from enum import Enum
from typing import Any

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse

from jobs import webhooks
from jobs.record import Job
from jobs.store import JobStore
from restorer.config import resolve_config
from restorer.errors import ConfigError

from .auth import Caller, authenticate
from .events import SlottedEventSourceResponse, job_events, resume_id
from .uploads import IMAGE_FIELD, RestoreParams, UploadRejected, inspect_image, parse_params, read_upload

router = APIRouter()

JOB_ID = Path(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description="Job id.")


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
                "multipart/form-data": {"schema": {"type": "object", "required": [IMAGE_FIELD], "properties": props}}
            },
        }
    }


def _error(status: int, reason: str, message: str) -> dict[int | str, dict[str, Any]]:
    return {status: {"description": f"{reason}: {message}", "content": {"application/json": {}}}}


def get_store(request: Request) -> JobStore:
    """FastAPI dependency: the app's job store."""
    return request.app.state.store


NOT_FOUND = _error(404, "not found", "unknown, expired, or another token's job")
UNAUTHORIZED = _error(401, "unauthorized", "missing or wrong bearer token (when UPZIR_API_TOKENS is set)")


@router.post(
    "/restore",
    status_code=202,
    response_model=Job,
    openapi_extra=_restore_openapi(),
    responses={
        **_error(413, "too large", "body or image over the byte cap"),
        **_error(415, "unsupported", "not PNG/JPEG/WebP (sniffed from the bytes)"),
        **_error(422, "invalid", "bad parameters, unreadable/truncated image, zero size or too many pixels"),
        **_error(408, "too slow", "the body stalled or took too long"),
        **_error(429, "queue full", "queue depth or queued bytes at the cap; retry after Retry-After seconds"),
        **_error(503, "unavailable", "Redis unreachable or full, or too many uploads at once; retry after Retry-After"),
        **UNAUTHORIZED,
    },
)
async def restore(
    request: Request,
    response: Response,
    caller: Caller = Depends(authenticate),
    idempotency_key: str | None = Header(None, max_length=255, description="Same key → same job."),
) -> Job:
    """Submit an image for restoration; answers 202 with the job at once."""
    state = request.app.state
    settings = state.settings
    try:
        await state.uploads.acquire()
        try:
            upload = await read_upload(request, settings)
        finally:
            state.uploads.release()
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
                422,
                "bad_params",
                f"this job would write up to {checkpoints} checkpoints ({rounds} round(s) × {cfg.steps} steps / "
                f"checkpoint_every {cfg.checkpoint_every}); the limit is {settings.max_checkpoints_per_job}: "
                "raise checkpoint_every or lower steps / max_rounds",
            )
        webhook = str(params.webhook) if params.webhook else None
        if webhook is not None:
            try:
                await run_in_threadpool(webhooks.check, webhook, settings)
            except webhooks.WebhookRefused as exc:
                raise UploadRejected(422, "bad_webhook", str(exc)) from None
        width, height = await run_in_threadpool(inspect_image, upload.data, upload.kind, settings.max_pixels)
    except UploadRejected as exc:
        state.metrics.upload_rejected.labels(reason=exc.reason).inc()
        headers = {"Retry-After": str(settings.unavailable_retry_after_s)} if exc.status == 503 else None
        raise HTTPException(exc.status, exc.message, headers=headers) from None
    job, created = await run_in_threadpool(
        state.store.submit,
        image=upload.data,
        filename=upload.filename,
        width=width,
        height=height,
        params={"preset": preset, **overrides},
        webhook=webhook,
        idempotency_key=idempotency_key,
        owner=caller.submitter,
    )
    if created:
        state.metrics.jobs_submitted.inc()
    else:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = job.urls.get
    return job


@router.get("/jobs/{job_id}", response_model=Job, responses={**NOT_FOUND, **UNAUTHORIZED})
def get_job(job_id: str = JOB_ID, caller: Caller = Depends(authenticate), store: JobStore = Depends(get_store)) -> Job:
    """The job object."""
    return store.get(job_id, caller.owner)


@router.get(
    "/jobs/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}},
        **NOT_FOUND,
        **UNAUTHORIZED,
        **_error(429, "too many streams", "this job has sse_max_streams_per_job open streams"),
        **_error(503, "too many streams", "this API process serves sse_max_streams streams"),
    },
)
async def job_event_stream(
    request: Request,
    job_id: str = JOB_ID,
    caller: Caller = Depends(authenticate),
    last_event_id: str | None = Header(None, description="Resume after this event id."),
) -> SlottedEventSourceResponse:
    """SSE: `status`, `checkpoint` and `completed` events; past ones replayed, then live; ends after `completed`
    (or after sse_max_duration_s: reconnect with Last-Event-ID)."""
    state = request.app.state
    await run_in_threadpool(state.store.owned, job_id, caller.owner)
    state.streams.acquire(job_id)  # refused here, before any byte of the response
    try:
        return SlottedEventSourceResponse(
            job_events(state.aredis, state.store.keys, job_id, state.settings, resume_id(last_event_id)),
            slots=state.streams,
            job_id=job_id,
            ping=state.settings.sse_ping_s,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    except BaseException:
        state.streams.release(job_id)
        raise


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
        **NOT_FOUND,
        **UNAUTHORIZED,
        **_error(409, "not finished", "the job has not succeeded"),
    },
)
async def job_result(
    job_id: str = JOB_ID,
    format: ResultFormat = Query(ResultFormat.png),
    caller: Caller = Depends(authenticate),
    store: JobStore = Depends(get_store),
) -> Response:
    """The restored image: PNG by default, `?format=webp|jpeg` converts."""
    png = await run_in_threadpool(store.result, job_id, caller.owner)
    data = await run_in_threadpool(_convert, png, format.value)
    return Response(
        data,
        media_type=RESULT_MEDIA[format.value],
        headers={"Content-Disposition": f'inline; filename="{job_id}.{format.value}"'},
    )


@router.get(
    "/jobs/{job_id}/checkpoints/{n}/preview",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **NOT_FOUND, **UNAUTHORIZED},
)
def checkpoint_preview(
    job_id: str = JOB_ID,
    n: int = Path(..., ge=0, le=100_000),
    caller: Caller = Depends(authenticate),
    store: JobStore = Depends(get_store),
) -> Response:
    """PNG preview (longest side ≤ preview_max_side) of checkpoint n's estimate."""
    return Response(store.preview(job_id, n, caller.owner), media_type="image/png")


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=Job,
    responses={**NOT_FOUND, **UNAUTHORIZED, **_error(409, "conflict", "already ended")},
)
def cancel_job(
    job_id: str = JOB_ID, caller: Caller = Depends(authenticate), store: JobStore = Depends(get_store)
) -> Job:
    """Queued → canceled at once (its webhook is told); running → stops at its next step (poll or follow events)."""
    job, ended = store.cancel(job_id, caller.owner)
    if ended is not None:
        webhooks.notify(store, ended)
    return job


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up (no dependency checked: restarting the API would not fix Redis)."""
    return {"status": "ok"}


@router.get("/readyz", responses=_error(503, "not ready", "Redis unreachable"))
def readyz(response: Response, store: JobStore = Depends(get_store)) -> dict[str, Any]:
    """This pod can serve: Redis answers, so jobs can be submitted, read and fetched.

    Whether a worker is up is reported (`workers`, `accepting_work`) but does not make the pod unready:
    with no worker, results can still be fetched and jobs still queue. Worker availability is its own
    signal: the `restore_workers_ready` metric and the `NoWorkerReady` alert.
    """
    try:
        store.redis.ping()
    except RedisError as exc:
        response.status_code = 503
        response.headers["Retry-After"] = str(store.settings.unavailable_retry_after_s)
        return {"status": "unavailable", "redis": f"unreachable: {exc}", "workers": 0, "accepting_work": False}
    workers = len(store.workers.ready())
    return {"status": "ok", "redis": "ok", "workers": workers, "accepting_work": workers > 0}


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(request: Request) -> Response:
    """Prometheus text format; queue depth, queued bytes and ready workers are sampled now (stale if Redis is down)."""
    state = request.app.state
    try:
        state.metrics.queue_depth.set(state.store.queue_depth())
        state.metrics.queue_bytes.set(state.store.queued_bytes())
        state.metrics.workers_ready.set(len(state.store.workers.ready()))
    except RedisError:
        pass
    state.metrics.sse_streams.set(state.streams.total)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
