"""The job function RQ runs: one restoration, from the stored upload to the stored result.

It runs inside `upzir worker`, in the worker's own process, using the Restorer that process loaded once
(installed here by `worker.main` as the `Runtime`). Every way a job can end is mapped to a terminal status
with an error a person can act on; nothing a job does takes the worker down.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from redis.exceptions import RedisError
from rq.timeouts import JobTimeoutException
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from service.jobs import JobStatus, JobStore, as_float, as_str
from service.settings import Settings

from .metrics import WorkerMetrics
from .progress import ProgressWriter
from .webhooks import deliver_in_background

log = logging.getLogger("upzir.tasks")

FINAL_WRITE_BACKOFF_CAP_S = 2.0
"""Longest pause between tries of a job's final write; the tries together last `worker_lost_after_s`."""


@dataclass
class Runtime:
    """What a job needs from its worker process: the loaded model, the store, config and metrics."""

    restorer: Any  # restorer.Restorer (typed loosely so this module imports without torch)
    store: JobStore
    settings: Settings
    metrics: WorkerMetrics
    worker_id: str
    shutdown_cancel: threading.Event = field(default_factory=threading.Event)


_runtime: Runtime | None = None


def install(runtime: Runtime | None) -> None:
    global _runtime
    _runtime = runtime


def current() -> Runtime:
    if _runtime is None:
        raise RuntimeError("worker.tasks.restore_job runs only inside `upzir worker` (no model is loaded here)")
    return _runtime


class _Stop:
    """Why should_cancel said yes (the sampler only knows that it was told to stop)."""

    REQUEST, SHUTDOWN, TIMEOUT, LOST = "request", "shutdown", "timeout", "lost"


def _decode(data: bytes) -> Image.Image:
    """The stored upload as a PIL image (the API validated it; this guards against a corrupted store)."""
    from restorer.errors import ImageError

    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as exc:
        raise ImageError(f"the stored image cannot be decoded ({type(exc).__name__}); submit it again") from None
    return img


def _encode_png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def restore_job(job_id: str, attempt: int) -> dict[str, Any]:
    """Run one attempt of job `job_id`; returns a small summary for RQ (the result lives in the store)."""
    rt = current()
    store, settings, metrics = rt.store, rt.settings, rt.metrics
    snapshot = store.start(job_id, attempt, rt.worker_id)
    if snapshot is None:
        log.info("job %s attempt %d: not queued any more (canceled, expired or superseded); skipped", job_id, attempt)
        return {"job_id": job_id, "skipped": True}

    from restorer.config import resolve_config
    from restorer.errors import ConfigError, ImageError, RestoreCanceled, RestorerError

    metrics.worker_busy.set(1)
    t0 = time.monotonic()
    created, started = as_float(snapshot.get(b"created_at")), as_float(snapshot.get(b"started_at"))
    if created is not None and started is not None:
        metrics.queue_wait.observe(max(0.0, started - created))
    webhook = as_str(snapshot.get(b"webhook")) or None
    progress = ProgressWriter(store, job_id, attempt, metrics, settings)
    stop: list[str] = []

    def should_cancel() -> bool:
        if progress.lost:
            stop.append(_Stop.LOST)
        elif rt.shutdown_cancel.is_set():
            stop.append(_Stop.SHUTDOWN)
        elif time.monotonic() - t0 > settings.job_timeout_s:
            stop.append(_Stop.TIMEOUT)
        elif progress.cancel_requested():
            stop.append(_Stop.REQUEST)
        return bool(stop)

    status, error, result_png, fields, early_exit = JobStatus.FAILED, None, None, {}, False
    result = None
    try:
        data = store.load_input(job_id)
        if data is None:
            raise ImageError("the uploaded image expired before the job started; submit it again")
        params = json.loads(as_str(snapshot.get(b"params")) or "{}")
        cfg = resolve_config(params.pop("preset", None), params)
        image = _decode(data)
        result = rt.restorer.restore(
            image,
            cfg,
            on_checkpoint=progress.on_checkpoint,
            on_step=progress.on_step,
            should_cancel=should_cancel,
        )
        result_png = _encode_png(result.image)
        early_exit = bool(result.early_exit)
        status = JobStatus.SUCCEEDED
        fields = {
            "early_exit": "1" if early_exit else "0",
            "steps_run": result.steps_run,
            "rounds": result.rounds,
            "run_s": round(time.monotonic() - t0, 3),
        }
        if result.final_score is not None:
            fields["last_score"] = result.final_score
    except RestoreCanceled as exc:
        why = stop[0] if stop else _Stop.REQUEST
        fields = {"steps_run": exc.steps_run}
        if why == _Stop.TIMEOUT:
            error = (
                f"timed out after {settings.job_timeout_s} s (UPZIR_JOB_TIMEOUT_S) at step {exc.steps_run};"
                " use fewer steps, a faster preset or a smaller image"
            )
        elif why == _Stop.SHUTDOWN:
            status = JobStatus.CANCELED
            error = f"canceled after {exc.steps_run} steps: the worker shut down (UPZIR_SHUTDOWN=cancel); submit again"
        elif why == _Stop.LOST:
            error = "this attempt was taken over (reaped or re-queued) while it ran"
        else:
            status = JobStatus.CANCELED
            error = f"canceled by request after {exc.steps_run} steps"
    except (ConfigError, ImageError) as exc:
        error = f"invalid job: {exc}"
    except RestorerError as exc:
        error = f"restoration failed: {exc}"
    except JobTimeoutException:
        error = f"timed out after {settings.job_timeout_s} s (UPZIR_JOB_TIMEOUT_S)"
    except Exception as exc:  # the job failed, the worker goes on
        log.exception("job %s failed", job_id)
        error = _describe_crash(exc)
    except BaseException:  # SystemExit/KeyboardInterrupt: a forced shutdown; record it, then let it through
        _end(rt, job_id, attempt, JobStatus.FAILED, "the worker was stopped during the job (forced shutdown)",
             None, {}, webhook, t0, False, None)
        raise
    finally:
        metrics.worker_busy.set(0)
    if stop and stop[0] == _Stop.LOST:
        log.warning("job %s attempt %d: no longer ours, result discarded", job_id, attempt)
        return {"job_id": job_id, "status": "lost"}
    _end(rt, job_id, attempt, status, error, result_png, fields, webhook, t0, early_exit, result)
    return {"job_id": job_id, "status": status.value}


def _describe_crash(exc: Exception) -> str:
    name = type(exc).__name__
    if "OutOfMemory" in name:
        try:
            import torch

            torch.cuda.empty_cache()
        except Exception:  # pragma: no cover - best effort
            pass
        return "out of GPU memory: use a smaller image or fewer pixels (max_pixels), or a bigger GPU"
    return f"internal error ({name}: {exc})"


def _end(
    rt: Runtime,
    job_id: str,
    attempt: int,
    status: JobStatus,
    error: str | None,
    result_png: bytes | None,
    fields: dict[str, Any],
    webhook: str | None,
    t0: float,
    early_exit: bool,
    result: Any,
) -> None:
    """Store the outcome (retrying Redis blips), observe metrics, notify the webhook."""
    settings, metrics = rt.settings, rt.metrics
    run_s = time.monotonic() - t0
    fields = {"run_s": round(run_s, 3), **fields}

    @retry(
        retry=retry_if_exception_type(RedisError),
        stop=stop_after_delay(settings.worker_lost_after_s),
        wait=wait_exponential(multiplier=0.1, max=FINAL_WRITE_BACKOFF_CAP_S),
        reraise=True,
    )
    def write() -> dict[str, Any] | None:
        return rt.store.finish(job_id, attempt, status, error=error, result_png=result_png, fields=fields)

    try:
        final = write()
    except RedisError as exc:
        log.error("job %s: outcome %s could not be stored (%s); the reaper will fail it", job_id, status.value, exc)
        final = None
    metrics.job_duration.labels(outcome=status.value).observe(run_s)
    metrics.jobs_completed.labels(outcome=status.value, early_exit="true" if early_exit else "false").inc()
    if result is not None and status == JobStatus.SUCCEEDED:
        metrics.sampler_steps.observe(result.steps_run)
        if result.final_score is not None:
            metrics.quality_score.observe(result.final_score)
        metrics.gpu_memory_peak_bytes.set(result.peak_memory_bytes or 0)
    log.info("job %s attempt %d: %s in %.2f s%s", job_id, attempt, status.value, run_s, f" ({error})" if error else "")
    if final is not None:
        deliver_in_background(webhook, final, settings)
