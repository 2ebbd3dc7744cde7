"""The reaper: no job stays `processing` or `queued` once nobody holds it.

Every worker renews its registry entry (`workers.WorkerRegistry`) every `heartbeat_s` with the ids of the
jobs it is running, from a thread that keeps beating while the sampler runs. The reaper (run by the API and
by every worker, every `reaper_interval_s`) recovers, within `worker_lost_after_s + reaper_interval_s`
(`Settings.worker_lost_bound_s`):

- a `processing` job whose worker stopped beating (crashed, killed, partitioned): failed, or re-queued with
  `UPZIR_ON_WORKER_LOST=requeue` up to `max_attempts`;
- a `processing` job its live worker no longer lists (its final write was lost): failed the same way;
- a `processing` job past `job_timeout_s` on a live worker (a wedged process whose heartbeat survives): failed;
- a `queued` job that is neither in the queue nor in a live worker's hands (RQ handed its ticket to a worker
  that died before starting it): re-queued (it never ran, so running it is not running it twice), or failed
  after `max_attempts`.

Right after Redis restarts (its uptime below `worker_lost_after_s`), and until this reaper has reached it
again for that long after an outage (a partition Redis did not restart through), nobody is judged: a live
worker may not have beaten since Redis came back, and heartbeat keys that expired during an outage say
nothing about the workers. Several reapers may run at once: every change is a compare-and-set on
(status, attempt).
RQ's StartedJobRegistry cleanup notices the same deaths later on its own clock; we do not rely on it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from redis.exceptions import RedisError

from . import queue as tickets
from .record import JobRecord, JobStatus
from .settings import OnWorkerLost, Settings
from .store import JobStore
from .workers import WorkerInfo

log = logging.getLogger("upzir.reaper")


class Action(str, Enum):
    FAILED = "failed"
    REQUEUED = "requeued"


@dataclass(frozen=True)
class Reaped:
    job_id: str
    action: Action
    reason: str


Notify = Callable[[JobRecord], object]
"""Called with the final record of each job the reaper failed (its webhook is notified)."""


def orphan_grace_s(settings: Settings) -> float:
    """How long a job may look unheld before it is recovered, so the whole bound stays `worker_lost_bound_s`."""
    return max(settings.worker_lost_after_s - settings.reaper_interval_s, settings.heartbeat_s)


def reap(store: JobStore, settings: Settings, now: float | None = None, notify: Notify | None = None) -> list[Reaped]:
    """One pass over the processing and queued jobs; returns what was done."""
    now = time.time() if now is None else now
    if store.redis_uptime_s() < settings.worker_lost_after_s:
        return []  # Redis came back moments ago: live workers may not have renewed their heartbeats yet
    live = store.workers.alive()
    done: list[Reaped] = []
    for job_id in store.processing_ids():
        record = store.record(job_id)
        if record is None or record.status != JobStatus.PROCESSING:
            store.forget_processing(job_id)  # expired, or ended by a writer that lost the race
            continue
        lost = _why_processing_is_lost(record, live.get(record.worker), settings, now)
        if lost is not None:
            reason, retry = lost
            done += _recover(store, settings, record, reason, retry=retry, notify=notify)
    held = frozenset().union(*(w.jobs for w in live.values())) if live else frozenset()
    for job_id in store.queued_ids():
        record = store.record(job_id)
        if record is None or record.status != JobStatus.QUEUED:
            store.forget_queued(job_id)
            continue
        if tickets.position(store.queue, job_id, record.attempt) is not None or job_id in held:
            if record.orphan_seen_at is not None:
                store.clear_orphan_seen(job_id)
            continue
        if record.orphan_seen_at is None:
            store.mark_orphan_seen(job_id, now)  # the grace starts now
            continue
        if now - record.orphan_seen_at < orphan_grace_s(settings):
            continue
        reason = (
            f"the job left the queue but no worker started it within {orphan_grace_s(settings):g} s (the worker that"
            " took it crashed or was killed)"
        )
        done += _recover(store, settings, record, reason, retry=True, notify=notify)
    return done


def _why_processing_is_lost(
    record: JobRecord, worker: WorkerInfo | None, settings: Settings, now: float
) -> tuple[str, bool] | None:
    """(reason, may be re-queued) when nobody is running this job any more; None while someone is."""
    started = record.started_at or now
    if now - started > settings.job_timeout_s + settings.worker_lost_after_s:
        wedged = (
            f"the job ran for more than {settings.job_timeout_s} s (UPZIR_JOB_TIMEOUT_S) on worker {record.worker}"
            " without finishing; its worker looks wedged"
        )
        return wedged, False  # it would wedge the next worker too
    if worker is None:
        dead = (
            f"worker {record.worker} stopped sending heartbeats for {settings.worker_lost_after_s:g} s while running"
            " this job (it crashed, was killed or lost its connection)"
        )
        return dead, True
    if record.id not in worker.jobs and now - started > orphan_grace_s(settings):
        lost = (
            f"worker {record.worker} does not list this job as running (it died before its next heartbeat, or it"
            " could not store the job's outcome)"
        )
        return lost, True
    return None


def _recover(
    store: JobStore, settings: Settings, record: JobRecord, reason: str, *, retry: bool, notify: Notify | None
) -> list[Reaped]:
    """Re-queue the job when allowed, fail it otherwise; notify its webhook when it failed."""
    never_ran = record.status == JobStatus.QUEUED
    may_retry = retry and (never_ran or settings.on_worker_lost == OnWorkerLost.REQUEUE)
    if may_retry and record.attempt < settings.max_attempts:
        if store.requeue(record.id, record.attempt, f"re-queued: {reason}"):
            log.warning("re-queued job %s (attempt %d): %s", record.id, record.attempt + 1, reason)
            return [Reaped(record.id, Action.REQUEUED, reason)]
        return []
    if may_retry:
        reason += f"; not re-queued again after {record.attempt} attempts (UPZIR_MAX_ATTEMPTS)"
    final = store.finish(record.id, record.attempt, JobStatus.FAILED, error=reason, allowed=(record.status,))
    if final is None:
        return []
    log.warning("failed job %s: %s", record.id, reason)
    if notify is not None:
        notify(final)
    return [Reaped(record.id, Action.FAILED, reason)]


class Reaper(threading.Thread):
    """Runs `reap` every `reaper_interval_s` until stopped; Redis outages are logged and waited out."""

    def __init__(self, store: JobStore, settings: Settings, owner: str, notify: Notify | None = None) -> None:
        super().__init__(name=f"upzir-reaper-{owner}", daemon=True)
        self.store = store
        self.settings = settings
        self.notify = notify
        self._stop_event = threading.Event()

    def run(self) -> None:
        quiet_until = 0.0  # after an outage, give every worker `worker_lost_after_s` to beat again
        while not self._stop_event.wait(self.settings.reaper_interval_s):
            try:
                if time.monotonic() < quiet_until:
                    self.store.redis.ping()  # judging nobody yet; a failed contact restarts the wait
                    continue
                reap(self.store, self.settings, notify=self.notify)
            except RedisError as exc:
                if time.monotonic() >= quiet_until:
                    log.warning(
                        "reaper: Redis unavailable (%s); judging no worker until it has been back for %g s",
                        exc,
                        self.settings.worker_lost_after_s,
                    )
                quiet_until = time.monotonic() + self.settings.worker_lost_after_s
            except Exception:  # a reaper bug must not kill the thread that guarantees the bound
                log.exception("reaper pass failed")

    def stop(self, timeout: float | None = None) -> None:
        self._stop_event.set()
        self.join(timeout)
