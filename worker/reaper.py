"""Dead-worker detection: no job stays `processing` once its worker has stopped sending heartbeats.

Every worker renews `{p}:worker:{id}` (TTL `worker_lost_after_s`) every `heartbeat_s` from a thread that
keeps beating while the sampler runs. The reaper (run by the API and by every worker, every
`reaper_interval_s`) looks at the `processing` set: a job whose worker key has expired is failed — or
re-queued, with `UPZIR_ON_WORKER_LOST=requeue`, up to `max_attempts` — so the longest a dead worker's job
stays `processing` is `worker_lost_after_s + reaper_interval_s` (`Settings.worker_lost_bound_s`).
A job running past `job_timeout_s` with a live worker (a wedged process whose heartbeat thread survives) is
failed too. Several reapers may run at once: every change is a compare-and-set on (status, attempt).

RQ's StartedJobRegistry cleanup notices the same deaths later on its own clock; we do not rely on it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from service.jobs import JobStatus, JobStore, as_float, as_int, as_str
from service.settings import OnWorkerLost, Settings

log = logging.getLogger("upzir.reaper")


@dataclass(frozen=True)
class Reaped:
    job_id: str
    action: str  # "failed" | "requeued"
    reason: str


Notify = Callable[[dict[str, Any], str | None], None]
"""Called with (final job, webhook URL or None) for each job the reaper failed."""


def reap(store: JobStore, settings: Settings, now: float | None = None, notify: Notify | None = None) -> list[Reaped]:
    """One pass over the processing jobs; returns what was done."""
    now = time.time() if now is None else now
    done: list[Reaped] = []
    for job_id in store.processing_ids():
        h = store.snapshot(job_id)
        if not h or as_str(h.get(b"status")) != JobStatus.PROCESSING.value:
            store.forget_processing(job_id)  # expired, or ended by a writer that lost the race
            continue
        worker = as_str(h.get(b"worker")) or ""
        attempt = as_int(h.get(b"attempt")) or 1
        started = as_float(h.get(b"started_at")) or now
        overdue = now - started > settings.job_timeout_s + settings.worker_lost_after_s
        if store.worker_alive(worker) and not overdue:
            continue
        if overdue:
            reason = (
                f"the job ran for more than {settings.job_timeout_s} s (UPZIR_JOB_TIMEOUT_S) on worker {worker}"
                " without finishing; its worker looks wedged"
            )
        else:
            reason = (
                f"worker {worker} stopped sending heartbeats for {settings.worker_lost_after_s:g} s while running"
                " this job (it crashed, was killed or lost its connection)"
            )
        if (
            not overdue
            and settings.on_worker_lost == OnWorkerLost.REQUEUE
            and attempt < settings.max_attempts
        ):
            if store.requeue(job_id, attempt, f"re-queued: {reason}"):
                log.warning("re-queued job %s (attempt %d): %s", job_id, attempt + 1, reason)
                done.append(Reaped(job_id, "requeued", reason))
            continue
        if settings.on_worker_lost == OnWorkerLost.REQUEUE and not overdue:
            reason += f"; not re-queued again after {attempt} attempts (UPZIR_MAX_ATTEMPTS)"
        final = store.finish(job_id, attempt, JobStatus.FAILED, error=reason)
        if final is not None:
            log.warning("failed job %s: %s", job_id, reason)
            done.append(Reaped(job_id, "failed", reason))
            if notify is not None:
                notify(final, as_str(h.get(b"webhook")) or None)
    store.ready_workers()  # prunes the ids of expired workers
    return done


class Reaper(threading.Thread):
    """Runs `reap` every `reaper_interval_s` until stopped; Redis outages are logged and waited out."""

    def __init__(self, store: JobStore, settings: Settings, owner: str, notify: Notify | None = None) -> None:
        super().__init__(name=f"upzir-reaper-{owner}", daemon=True)
        self.store = store
        self.settings = settings
        self.notify = notify
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.settings.reaper_interval_s):
            try:
                reap(self.store, self.settings, notify=self.notify)
            except RedisError as exc:
                log.warning("reaper: Redis unavailable (%s); will retry", exc)
            except Exception:  # a reaper bug must not kill the thread that guarantees the bound
                log.exception("reaper pass failed")

    def stop(self, timeout: float | None = None) -> None:
        self._stop_event.set()
        self.join(timeout)
