"""The job function RQ runs: one restoration, from the stored upload to the stored result.

It runs inside `upzir worker`, in the worker's own process, using the Restorer that process loaded once
(installed here by `worker.main` as the `Runtime`). Every way a job can end is mapped to a terminal status
with an error a person can act on; nothing a job does takes the worker down.
"""

from __future__ import annotations

import io
import json
import logging
import math
import signal
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

from .memory import JobTooLarge, MemoryBudget
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
    stopping: threading.Event = field(default_factory=threading.Event)  # set on SIGTERM: claim nothing more
    budget: MemoryBudget | None = None  # made on first use, for the restorer's device


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
    """Run job `job_id` (this attempt) as the host of a batch; returns a small summary for RQ.

    While the batch has room, compatible queued jobs (same canvas, memory permitting) are claimed from the
    queue and join between steps; each ends on its own (result, failure, cancel) as its run ends. The
    results live in the store; RQ only sees this host job.
    """
    rt = current()
    snapshot = rt.store.start(job_id, attempt, rt.worker_id)
    if snapshot is None:
        log.info("job %s attempt %d: not queued any more (canceled, expired or superseded); skipped", job_id, attempt)
        return {"job_id": job_id, "skipped": True}
    host = JobAttempt(rt, job_id, attempt, snapshot)
    batch = rt.restorer.batch(rt.settings.max_batch)
    budget = memory_budget(rt)
    members: dict[int, JobAttempt] = {}
    rt.metrics.worker_busy.set(1)
    try:
        if host.open(budget):
            batch.add(host.prepared.run)
            members[id(host.prepared.run)] = host
        while batch.active:
            _admit(rt, batch, budget, members)
            rt.metrics.batch_size.set(batch.active)
            budget.begin_step()
            ended = batch.step()
            peak = budget.end_step(sum(m.pixels for m in members.values()))
            for m in members.values():
                m.observe_peak(peak)
            for run in ended:
                if members.pop(id(run)).close() and run.error is None:
                    budget.job_completed()
    except JobTimeoutException:  # RQ's backstop fired outside a sampler step: every member ends with it
        for m in members.values():
            m.abort(f"timed out after {rt.settings.job_timeout_s} s (UPZIR_JOB_TIMEOUT_S)")
        raise
    except BaseException:  # SystemExit/KeyboardInterrupt: a forced shutdown; record it, then let it through
        for m in members.values():
            m.abort("the worker was stopped during the job (forced shutdown)")
        raise
    finally:
        rt.metrics.worker_busy.set(0)
        rt.metrics.batch_size.set(0)
    return {"job_id": job_id, "status": host.status.value if not host.lost else "lost"}


def memory_budget(rt: Runtime) -> MemoryBudget:
    if rt.budget is None:
        rt.budget = MemoryBudget.for_device(rt.restorer.prior.device, rt.settings)
    return rt.budget


def _admit(rt: Runtime, batch: Any, budget: MemoryBudget, members: dict[int, "JobAttempt"]) -> None:
    """Claim queued jobs whose canvas matches the batch's (they share its UNet calls) while room and memory last."""
    room = rt.settings.max_batch - batch.active
    if room <= 0 or not members or rt.stopping.is_set():  # a stopping worker finishes what it has, takes no more
        return
    canvas = next(iter(members.values())).canvas
    in_use = sum(m.pixels for m in members.values())

    def accept(h: dict[bytes, bytes]) -> bool:
        nonlocal in_use
        size = _canvas_of(rt, h)
        if size != canvas or not budget.fits(in_use, size[0] * size[1]):
            return False
        in_use += size[0] * size[1]
        return True

    try:
        claimed = rt.store.claim_queued(rt.worker_id, room, rt.settings.batch_scan_depth, accept)
    except RedisError as exc:  # no new members this step; the running ones go on
        log.warning("could not look for jobs to batch (%s)", exc)
        return
    for job_id, attempt, snapshot in claimed:
        joiner = JobAttempt(rt, job_id, attempt, snapshot)
        if joiner.open(budget):
            batch.add(joiner.prepared.run)
            members[id(joiner.prepared.run)] = joiner
            extend_backstop(rt.settings.job_timeout_s + rt.settings.worker_lost_after_s)
            log.info("job %s attempt %d joined the batch (%d active)", job_id, attempt, batch.active)


def extend_backstop(seconds: float) -> None:
    """Keep RQ's SIGALRM backstop, armed for the host job, beyond a newly joined member's own deadline.

    Each member has its own cooperative timeout (`job_timeout_s`); without this, the host's alarm could fire
    while a late joiner still has time left. Nothing happens when no alarm is armed (not under RQ).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    remaining = signal.alarm(0)
    if remaining:
        signal.alarm(max(remaining, math.ceil(seconds)))


def job_config(h: dict[bytes, bytes]) -> Any:
    """The RestoreConfig a job record asks for (its preset + overrides); ConfigError if they are invalid."""
    from restorer.config import resolve_config

    params = json.loads(as_str(h.get(b"params")) or "{}")
    return resolve_config(params.pop("preset", None), params)


def _canvas_of(rt: Runtime, h: dict[bytes, bytes]) -> tuple[int, int] | None:
    """The padded canvas a queued job will sample on (None when its record cannot say)."""
    from restorer.errors import ConfigError

    try:
        cfg = job_config(h)
        size = (int(as_str(h.get(b"width")) or 0), int(as_str(h.get(b"height")) or 0))
    except (ConfigError, ValueError):
        return None
    if min(size) < 1:
        return None
    return rt.restorer.canvas(size, cfg).padded_size


class JobAttempt:
    """One job attempt in this worker: opening it for the batch, its cancel check, and storing its outcome."""

    def __init__(self, rt: Runtime, job_id: str, attempt: int, snapshot: dict[bytes, bytes]) -> None:
        self.rt, self.job_id, self.attempt = rt, job_id, attempt
        self.t0 = time.monotonic()
        created, started = as_float(snapshot.get(b"created_at")), as_float(snapshot.get(b"started_at"))
        if created is not None and started is not None:
            rt.metrics.queue_wait.observe(max(0.0, started - created))
        self.webhook = as_str(snapshot.get(b"webhook")) or None
        self.snapshot = snapshot
        self.progress = ProgressWriter(rt.store, job_id, attempt, rt.metrics, rt.settings)
        self.stop: list[str] = []
        self.prepared: Any = None  # restorer.pipeline.PreparedRestore once open
        self.canvas: tuple[int, int] = (0, 0)
        self.peak: int | None = None
        self.status = JobStatus.FAILED

    @property
    def pixels(self) -> int:
        return self.canvas[0] * self.canvas[1]

    @property
    def lost(self) -> bool:
        return bool(self.stop) and self.stop[0] == _Stop.LOST

    def should_cancel(self) -> bool:
        rt = self.rt
        if self.progress.lost:
            self.stop.append(_Stop.LOST)
        elif rt.shutdown_cancel.is_set():
            self.stop.append(_Stop.SHUTDOWN)
        elif time.monotonic() - self.t0 > rt.settings.job_timeout_s:
            self.stop.append(_Stop.TIMEOUT)
        elif self.progress.cancel_requested():
            self.stop.append(_Stop.REQUEST)
        return bool(self.stop)

    def open(self, budget: MemoryBudget) -> bool:
        """Input, config, memory check and sampler set-up; False (the job already ended, failed) on any error."""
        from restorer.errors import ImageError

        try:
            data = self.rt.store.load_input(self.job_id)
            if data is None:
                raise ImageError("the uploaded image expired before the job started; submit it again")
            cfg = job_config(self.snapshot)
            image = _decode(data)
            self.canvas = self.rt.restorer.canvas(image.size, cfg).padded_size
            budget.check_alone(self.canvas)
            self.prepared = self.rt.restorer.prepare(
                image, cfg, on_checkpoint=self.progress.on_checkpoint, on_step=self.progress.on_step,
                should_cancel=self.should_cancel,
            )
            return True
        except Exception as exc:
            self.canvas = (0, 0)
            self._record(exc)
            return False

    def observe_peak(self, peak: int | None) -> None:
        if peak is not None:
            self.peak = max(self.peak or 0, peak)

    def close(self) -> bool:
        """Store the ended run's outcome; True when it succeeded."""
        try:
            result = self.prepared.result()
        except Exception as exc:
            self._record(exc)
            return False
        self.status = JobStatus.SUCCEEDED
        early_exit = bool(result.early_exit)
        fields: dict[str, Any] = {
            "early_exit": "1" if early_exit else "0",
            "steps_run": result.steps_run,
            "rounds": result.rounds,
        }
        if result.final_score is not None:
            fields["last_score"] = result.final_score
        result.peak_memory_bytes = self.peak
        _end(self.rt, self.job_id, self.attempt, self.status, None, _encode_png(result.image), fields,
             self.webhook, self.t0, early_exit, result)
        return True

    def abort(self, error: str) -> None:
        _end(self.rt, self.job_id, self.attempt, JobStatus.FAILED, error, None, {}, self.webhook, self.t0, False, None)

    def _record(self, exc: Exception) -> None:
        """Map what ended the job to a terminal status and an error a person can act on, and store it."""
        from restorer.errors import ConfigError, ImageError, RestoreCanceled, RestorerError

        settings, status, fields = self.rt.settings, JobStatus.FAILED, {}
        if isinstance(exc, RestoreCanceled):
            why = self.stop[0] if self.stop else _Stop.REQUEST
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
                log.warning("job %s attempt %d: no longer ours, result discarded", self.job_id, self.attempt)
                return
            else:
                status = JobStatus.CANCELED
                error = f"canceled by request after {exc.steps_run} steps"
        elif isinstance(exc, (ConfigError, ImageError)):
            error = f"invalid job: {exc}"
        elif isinstance(exc, JobTooLarge):
            error = str(exc)
        elif isinstance(exc, RestorerError):
            error = f"restoration failed: {exc}"
        elif isinstance(exc, JobTimeoutException):
            error = f"timed out after {settings.job_timeout_s} s (UPZIR_JOB_TIMEOUT_S)"
        else:  # the job failed, the worker goes on
            log.error("job %s failed", self.job_id, exc_info=exc)
            error = _describe_crash(exc)
        self.status = status
        _end(self.rt, self.job_id, self.attempt, status, error, None, fields, self.webhook, self.t0, False, None)


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
