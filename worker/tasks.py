"""The job function RQ runs: one restoration, from the stored upload to the stored result.

It runs inside `upzir worker`, in the worker's own process, using the Restorer that process loaded once
(installed here by `worker.main` as the `Runtime`). Every way a job can end is mapped to a terminal status
with an error a person can act on; nothing a job does takes the worker down.
"""

from __future__ import annotations

import io
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

from jobs import webhooks
from jobs.record import JobRecord, JobStatus
from jobs.settings import Settings
from jobs.store import JobStore
from restorer.config import resolve_config
from restorer.errors import ConfigError, ImageError, RestoreCanceled, RestorerError

from .memory import JobTooLarge, MemoryBudget
from .metrics import WorkerMetrics
from .outcome import ActiveJobs, Outcome, StopReason
from .progress import ProgressWriter

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
    active: ActiveJobs = field(default_factory=ActiveJobs)  # published with every heartbeat
    batch_lookup_failing: bool = False  # Redis refused the last look for joiners (log once per outage)


_runtime: Runtime | None = None


def install(runtime: Runtime | None) -> None:
    global _runtime
    _runtime = runtime


def current() -> Runtime:
    if _runtime is None:
        raise RuntimeError("worker.tasks.restore_job runs only inside `upzir worker` (no model is loaded here)")
    return _runtime


def _decode(data: bytes) -> Image.Image:
    """The stored upload as a PIL image (the API validated it; this guards against a corrupted store)."""
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
    record = rt.store.start(job_id, attempt, rt.worker_id)
    if record is None:
        log.info("job %s attempt %d: not queued any more (canceled, expired or superseded); skipped", job_id, attempt)
        return {"job_id": job_id, "skipped": True}
    host = JobAttempt(rt, record)
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


def _admit(rt: Runtime, batch: Any, budget: MemoryBudget, members: dict[int, JobAttempt]) -> None:
    """Claim queued jobs whose canvas matches the batch's (they share its UNet calls) while room and memory last."""
    room = rt.settings.max_batch - batch.active
    if room <= 0 or not members or rt.stopping.is_set():  # a stopping worker finishes what it has, takes no more
        return
    canvas = next(iter(members.values())).canvas
    in_use = sum(m.pixels for m in members.values())

    def accept(record: JobRecord) -> bool:
        nonlocal in_use
        size = _canvas_of(rt, record)
        if size != canvas or not budget.fits(in_use, size[0] * size[1]):
            return False
        in_use += size[0] * size[1]
        return True

    try:
        claimed = rt.store.claim_queued(rt.worker_id, room, rt.settings.batch_scan_depth, accept)
    except RedisError as exc:  # no new members this step; the running ones go on
        if not rt.batch_lookup_failing:  # once per outage, not once per sampler step
            log.warning("could not look for jobs to batch (%s); the running jobs go on", exc)
        rt.batch_lookup_failing = True
        return
    rt.batch_lookup_failing = False
    for record in claimed:
        joiner = JobAttempt(rt, record)
        if joiner.open(budget):
            batch.add(joiner.prepared.run)
            members[id(joiner.prepared.run)] = joiner
            extend_backstop(rt.settings.job_timeout_s + rt.settings.worker_lost_after_s)
            log.info("job %s attempt %d joined the batch (%d active)", record.id, record.attempt, batch.active)


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


def job_config(record: JobRecord) -> Any:
    """The RestoreConfig a job record asks for (its preset + overrides); ConfigError if they are invalid."""
    params = dict(record.params)
    return resolve_config(params.pop("preset", None), params)


def _canvas_of(rt: Runtime, record: JobRecord) -> tuple[int, int] | None:
    """The padded canvas a queued job will sample on (None when its record cannot say)."""
    try:
        cfg = job_config(record)
    except ConfigError:
        return None
    if min(record.width, record.height) < 1:
        return None
    return rt.restorer.canvas((record.width, record.height), cfg).padded_size


class JobAttempt:
    """One job attempt in this worker: opening it for the batch, its cancel check, and storing its outcome."""

    def __init__(self, rt: Runtime, record: JobRecord) -> None:
        self.rt, self.record = rt, record
        self.job_id, self.attempt = record.id, record.attempt
        self.t0 = time.monotonic()
        if record.started_at is not None:
            rt.metrics.queue_wait.observe(max(0.0, record.started_at - record.created_at))
        self.progress = ProgressWriter(rt.store, self.job_id, self.attempt, rt.metrics, rt.settings)
        self.stop: StopReason | None = None
        self.prepared: Any = None  # restorer.pipeline.PreparedRestore once open
        self.canvas: tuple[int, int] = (0, 0)
        self.peak: int | None = None
        self.status = JobStatus.FAILED
        rt.active.add(self.job_id)

    @property
    def pixels(self) -> int:
        return self.canvas[0] * self.canvas[1]

    @property
    def lost(self) -> bool:
        return self.stop == StopReason.LOST

    def should_cancel(self) -> bool:
        if self.stop is None:
            self.stop = self._stop_reason()
        return self.stop is not None

    def _stop_reason(self) -> StopReason | None:
        rt = self.rt
        if self.progress.lost:
            return StopReason.LOST
        if rt.shutdown_cancel.is_set():
            return StopReason.SHUTDOWN
        if time.monotonic() - self.t0 > rt.settings.job_timeout_s:
            return StopReason.TIMEOUT
        if self.progress.cancel_requested():
            return StopReason.REQUEST
        return None

    def open(self, budget: MemoryBudget) -> bool:
        """Input, config, memory check and sampler set-up; False (the job already ended, failed) on any error."""
        try:
            data = self.rt.store.load_input(self.job_id)
            if data is None:
                raise ImageError("the uploaded image expired before the job started; submit it again")
            cfg = job_config(self.record)
            image = _decode(data)
            self.canvas = self.rt.restorer.canvas(image.size, cfg).padded_size
            budget.check_alone(self.canvas)
            self.prepared = self.rt.restorer.prepare(
                image,
                cfg,
                on_checkpoint=self.progress.on_checkpoint,
                on_step=self.progress.on_step,
                should_cancel=self.should_cancel,
            )
            return True
        except Exception as exc:
            self.canvas = (0, 0)
            self.end(self.outcome_of(exc))
            return False

    def observe_peak(self, peak: int | None) -> None:
        if peak is not None:
            self.peak = max(self.peak or 0, peak)

    def close(self) -> bool:
        """Store the ended run's outcome; True when it succeeded."""
        try:
            result = self.prepared.result()
        except Exception as exc:
            self.end(self.outcome_of(exc))
            return False
        result.peak_memory_bytes = self.peak
        fields: dict[str, Any] = {
            "early_exit": bool(result.early_exit),
            "steps_run": result.steps_run,
            "rounds": result.rounds,
        }
        if result.final_score is not None:
            fields["last_score"] = result.final_score
        self.end(Outcome(JobStatus.SUCCEEDED, result_png=_encode_png(result.image), fields=fields, result=result))
        return True

    def abort(self, error: str) -> None:
        self.end(Outcome(JobStatus.FAILED, error=error))

    def outcome_of(self, exc: Exception) -> Outcome | None:
        """What ended the job, as a terminal status and an error a person can act on; None: not ours any more."""
        settings = self.rt.settings
        if isinstance(exc, RestoreCanceled):
            fields = {"steps_run": exc.steps_run}
            why = self.stop or StopReason.REQUEST
            if why == StopReason.LOST:
                log.warning("job %s attempt %d: no longer ours, result discarded", self.job_id, self.attempt)
                return None
            if why == StopReason.TIMEOUT:
                return Outcome(
                    JobStatus.FAILED,
                    fields=fields,
                    error=(
                        f"timed out after {settings.job_timeout_s} s (UPZIR_JOB_TIMEOUT_S) at step {exc.steps_run};"
                        " use fewer steps, a faster preset or a smaller image"
                    ),
                )
            if why == StopReason.SHUTDOWN:
                return Outcome(
                    JobStatus.CANCELED,
                    fields=fields,
                    error=(
                        f"canceled after {exc.steps_run} steps: the worker shut down (UPZIR_SHUTDOWN=cancel); submit again"
                    ),
                )
            return Outcome(JobStatus.CANCELED, fields=fields, error=f"canceled by request after {exc.steps_run} steps")
        if isinstance(exc, (ConfigError, ImageError)):
            return Outcome(JobStatus.FAILED, error=f"invalid job: {exc}")
        if isinstance(exc, JobTooLarge):
            return Outcome(JobStatus.FAILED, error=str(exc))
        if isinstance(exc, RestorerError):
            return Outcome(JobStatus.FAILED, error=f"restoration failed: {exc}")
        if isinstance(exc, JobTimeoutException):
            return Outcome(JobStatus.FAILED, error=f"timed out after {settings.job_timeout_s} s (UPZIR_JOB_TIMEOUT_S)")
        log.error("job %s failed", self.job_id, exc_info=exc)  # the job failed, the worker goes on
        return Outcome(JobStatus.FAILED, error=_describe_crash(exc))

    def end(self, outcome: Outcome | None) -> None:
        """Store the outcome (retrying Redis blips), observe metrics, notify the webhook; then stop listing the job."""
        try:
            if outcome is not None:
                self.status = outcome.status
                _store_outcome(self.rt, self, outcome)
        finally:
            self.rt.active.discard(self.job_id)


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


def _store_outcome(rt: Runtime, job: JobAttempt, outcome: Outcome) -> None:
    """The final write, retried through Redis blips for up to `worker_lost_after_s`; then metrics and webhook.

    While it retries, the job stays in this worker's published active jobs, so the reaper leaves it alone;
    if every try fails, the job drops out of that list and the reaper fails it within its bound.
    """
    settings, metrics = rt.settings, rt.metrics
    run_s = time.monotonic() - job.t0
    fields = {"run_s": round(run_s, 3), **outcome.fields}

    @retry(
        retry=retry_if_exception_type(RedisError),
        stop=stop_after_delay(settings.worker_lost_after_s),
        wait=wait_exponential(multiplier=0.1, max=FINAL_WRITE_BACKOFF_CAP_S),
        reraise=True,
    )
    def write() -> JobRecord | None:
        return rt.store.finish(
            job.job_id, job.attempt, outcome.status, error=outcome.error, result_png=outcome.result_png, fields=fields
        )

    try:
        final = write()
    except RedisError as exc:
        log.error(
            "job %s: outcome %s could not be stored (%s); the reaper will fail it",
            job.job_id,
            outcome.status.value,
            exc,
        )
        final = None
    early_exit = bool(outcome.fields.get("early_exit"))
    metrics.job_duration.labels(outcome=outcome.status.value).observe(run_s)
    metrics.jobs_completed.labels(outcome=outcome.status.value, early_exit="true" if early_exit else "false").inc()
    result = outcome.result
    if result is not None and outcome.status == JobStatus.SUCCEEDED:
        metrics.sampler_steps.observe(result.steps_run)
        if result.final_score is not None:
            metrics.quality_score.observe(result.final_score)
        metrics.gpu_memory_peak_bytes.set(result.peak_memory_bytes or 0)
    log.info(
        "job %s attempt %d: %s in %.2f s%s",
        job.job_id,
        job.attempt,
        outcome.status.value,
        run_s,
        f" ({outcome.error})" if outcome.error else "",
    )
    if final is not None:
        webhooks.notify(rt.store, final)
