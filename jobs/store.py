"""The job store: every read and state transition of a job, shared by the API, the worker and the reaper.

Writers: the API creates jobs and cancels queued ones; the worker writes progress and the outcome; the
reaper fails (or re-queues) jobs nobody is running. Every status change is a compare-and-set script
(`keys.TRANSITION`) that also appends the matching events, so the hash and the event stream never disagree.
Reads return `JobRecord` (typed, internal) or `Job` (public); refusals are `errors.StoreError`s.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from rq import Queue

from . import queue as tickets
from .errors import IdempotencyInFlight, IdempotencyMismatch, JobConflict, JobNotFound, QueueFull
from .keys import DEL_IF, PROGRESS, TRANSITION, Keys
from .record import EventType, Job, JobRecord, JobStatus, JobUrls, encode_fields, fingerprint, iso
from .settings import Settings
from .workers import WorkerRegistry

EVENT_STREAM_MAXLEN = 10_000
"""Cap per job event stream: far above any schedule's checkpoint count, a fuse against runaway writers."""

IDEMPOTENCY_CLAIM_TTL_S = 60
"""How long a claimed-but-unfinished Idempotency-Key blocks its twin; creating a job takes milliseconds."""

REDIS_BACKOFF_CAP_S = 0.5
"""Longest pause between retries of one Redis command: retries are for blips, outages answer 503."""

_PENDING = "pending:"

Owner = str | None
"""Who asks: a token fingerprint, or None when authentication is off (everyone sees every job)."""


def connect(settings: Settings, *, socket_timeout: float | None = None) -> redis.Redis:
    """A bytes Redis client with short timeouts and few retries, so outages surface quickly as 503."""
    timeout = settings.redis_timeout_s
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=socket_timeout if socket_timeout is not None else timeout,
        socket_connect_timeout=timeout,
        retry=Retry(ExponentialBackoff(cap=REDIS_BACKOFF_CAP_S), settings.redis_retries),
    )


class JobStore:
    """All reads and writes of jobs; the API and the worker both go through it."""

    def __init__(self, settings: Settings, connection: redis.Redis | None = None) -> None:
        self.settings = settings
        self.redis = connection if connection is not None else connect(settings)
        self.keys = Keys(settings.key_prefix)
        self.queue = Queue(settings.queue, connection=self.redis)
        self.workers = WorkerRegistry(self.redis, self.keys, settings)
        self._transition = self.redis.register_script(TRANSITION)
        self._progress = self.redis.register_script(PROGRESS)
        self._del_if = self.redis.register_script(DEL_IF)

    # --- reading --------------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        return f"{self.settings.public_url.rstrip('/')}{path}"

    def urls(self, job_id: str) -> JobUrls:
        return JobUrls(
            get=self.url(f"/jobs/{job_id}"),
            events=self.url(f"/jobs/{job_id}/events"),
            result=self.url(f"/jobs/{job_id}/result"),
            cancel=self.url(f"/jobs/{job_id}/cancel"),
        )

    def preview_url(self, job_id: str, n: int) -> str:
        return self.url(f"/jobs/{job_id}/checkpoints/{n}/preview")

    def record(self, job_id: str) -> JobRecord | None:
        """The stored record, or None when unknown or expired."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.job(job_id))
            pipe.lrange(self.keys.checkpoints(job_id), 0, -1)
            h, checkpoints = pipe.execute()
        return JobRecord.parse(h, checkpoints)

    def owned(self, job_id: str, owner: Owner) -> JobRecord:
        """The record if `owner` may see it; JobNotFound otherwise (another token's job looks unknown)."""
        record = self.record(job_id)
        if record is None or (owner is not None and record.owner != owner):
            raise JobNotFound.unknown(job_id)
        return record

    def render(self, record: JobRecord) -> Job:
        position = None
        if record.status == JobStatus.QUEUED:
            position = tickets.position(self.queue, record.id, record.attempt)
        return record.job(self.urls(record.id), position)

    def get(self, job_id: str, owner: Owner = None) -> Job:
        return self.render(self.owned(job_id, owner))

    def result(self, job_id: str, owner: Owner = None) -> bytes:
        record = self.owned(job_id, owner)
        if record.status != JobStatus.SUCCEEDED:
            hint = "it has no result" if record.status.terminal else "wait for it to succeed"
            raise JobConflict(f"job {job_id} is {record.status.value}; {hint}")
        data = self.redis.get(self.keys.result(job_id))
        if data is None:
            raise JobNotFound(f"the result of job {job_id} has expired")
        return data

    def preview(self, job_id: str, n: int, owner: Owner = None) -> bytes:
        self.owned(job_id, owner)
        data = self.redis.get(self.keys.preview(job_id, n))
        if data is None:
            raise JobNotFound(f"no preview {n} for job {job_id!r} (no such checkpoint yet, or expired)")
        return data

    def redis_uptime_s(self) -> float:
        """Seconds since this Redis started (a restart resets it; AOF keeps keys, not heartbeats' freshness)."""
        return float(self.redis.info("server")["uptime_in_seconds"])

    def queue_depth(self) -> int:
        return int(self.redis.llen(self.queue.key))

    def queued_bytes(self, client: redis.Redis | redis.client.Pipeline | None = None) -> int:
        """Upload bytes of the queued jobs (read through `client`, e.g. a WATCHing pipeline, when given)."""
        return sum(int(v) for v in (client or self.redis).hvals(self.keys.queued))

    # --- API side -------------------------------------------------------------------------------------

    def submit(
        self,
        *,
        image: bytes,
        filename: str | None,
        width: int,
        height: int,
        params: dict[str, Any],
        webhook: str | None = None,
        idempotency_key: str | None = None,
        owner: str = "",
    ) -> tuple[Job, bool]:
        """Create and enqueue a job; returns (job, created). Same Idempotency-Key → the first job, created=False."""
        fp = fingerprint(image, params, webhook)
        job_id = uuid.uuid4().hex
        # keys are per owner: one token's key never reveals or blocks another token's job
        idem_key = self.keys.idem(f"{owner}\0{idempotency_key}") if idempotency_key else None
        claim = f"{_PENDING}{job_id}"
        if idem_key:
            while True:
                if self.redis.set(idem_key, claim, nx=True, ex=IDEMPOTENCY_CLAIM_TTL_S):
                    break
                replay = self._replay(idem_key, fp)
                if replay is not None:
                    return replay, False
        try:
            self._create(job_id, fp, image, filename, width, height, params, webhook, idem_key, owner)
        except BaseException:
            if idem_key:
                self._del_if(keys=[idem_key], args=[claim])
            raise
        return self.get(job_id), True

    def _replay(self, idem_key: str, fp: str) -> Job | None:
        """The job an Idempotency-Key already names, or None when that key is free again."""
        raw = self.redis.get(idem_key)
        if raw is None:
            return None
        value = raw.decode()
        if value.startswith(_PENDING):
            raise IdempotencyInFlight("a request with this Idempotency-Key is still being processed; retry in a moment")
        record = self.record(value)
        if record is None:  # the job expired: the key may start a new one
            self._del_if(keys=[idem_key], args=[value])
            return None
        if record.fingerprint != fp:
            raise IdempotencyMismatch(
                "this Idempotency-Key was already used for a different request (other image or parameters);"
                " use a new key"
            )
        return self.render(record)

    def _create(
        self,
        job_id: str,
        fp: str,
        image: bytes,
        filename: str | None,
        width: int,
        height: int,
        params: dict[str, Any],
        webhook: str | None,
        idem_key: str | None,
        owner: str,
    ) -> None:
        s, k = self.settings, self.keys
        now = time.time()
        record = encode_fields(
            {
                "id": job_id,
                "status": JobStatus.QUEUED,
                "created_at": now,
                "filename": filename or "",
                "width": width,
                "height": height,
                "params": params,
                "webhook": webhook or "",
                "fingerprint": fp,
                "owner": owner,
                "input_bytes": len(image),
                "attempt": 1,
            }
        )
        event = {"status": JobStatus.QUEUED.value, "at": iso(now)}

        def create(pipe: redis.client.Pipeline) -> None:
            depth = pipe.llen(self.queue.key)
            if depth >= s.max_queue_depth:
                raise QueueFull(
                    f"the queue is full ({depth} jobs waiting, limit {s.max_queue_depth}); retry later",
                    retry_after=s.queue_full_retry_after_s,
                )
            waiting = self.queued_bytes(pipe)
            if waiting + len(image) > s.max_queue_bytes:
                raise QueueFull(
                    f"the queue is full ({waiting / 2**20:.1f} MiB of uploads waiting, limit"
                    f" {s.max_queue_bytes / 2**20:.0f} MiB); retry later",
                    retry_after=s.queue_full_retry_after_s,
                )
            pipe.multi()
            pipe.hset(k.job(job_id), mapping=record)
            pipe.expire(k.job(job_id), s.pending_ttl_s)
            pipe.set(k.input(job_id), image, ex=s.pending_ttl_s)
            pipe.hset(k.queued, job_id, len(image))
            self._append_status(pipe, job_id, event)
            pipe.expire(k.events(job_id), s.pending_ttl_s)
            if idem_key:
                pipe.set(idem_key, job_id, ex=s.idempotency_ttl_s)
            tickets.enqueue(self.queue, pipe, s, job_id, attempt=1)

        self.redis.transaction(create, self.queue.key, k.queued)

    def _append_status(self, pipe: redis.client.Pipeline, job_id: str, event: dict[str, Any]) -> None:
        """A `status` event written outside the transition script (creation, re-queue), in the caller's MULTI."""
        pipe.xadd(
            self.keys.events(job_id),
            {"event": EventType.STATUS.value, "data": json.dumps(event)},
            maxlen=EVENT_STREAM_MAXLEN,
            approximate=True,
        )

    def cancel(self, job_id: str, owner: Owner = None) -> tuple[Job, JobRecord | None]:
        """Queued → canceled now; processing → a cancel request the worker honours at its next step.

        Returns the job and, when it ended here, its final record (whose webhook the caller notifies).
        """
        record = self.owned(job_id, owner)
        done, cur = self.transition(
            record,
            allowed=(JobStatus.QUEUED,),
            status=JobStatus.CANCELED,
            error="canceled by request before it started",
        )
        if done:
            tickets.drop(self.queue, tickets.rq_id(job_id, record.attempt))
            final = self.owned(job_id, owner)
            return self.render(final), final
        if cur is None:
            raise JobNotFound.unknown(job_id)
        if cur == JobStatus.PROCESSING:
            self.redis.set(self.keys.cancel(job_id), "1", ex=self.settings.pending_ttl_s)
        elif cur.terminal:
            raise JobConflict(f"job {job_id} already ended ({cur.value}); nothing to cancel")
        return self.get(job_id, owner), None

    # --- transitions ----------------------------------------------------------------------------------

    def transition(
        self,
        record: JobRecord,
        *,
        allowed: tuple[JobStatus, ...],
        status: JobStatus,
        attempt: int | None = None,
        fields: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> tuple[bool, JobStatus | None]:
        """Compare-and-set the status, append the events, set TTLs; (applied, status found)."""
        s, k, job_id = self.settings, self.keys, record.id
        now = time.time()
        updates: dict[str, Any] = {"status": status, **(fields or {})}
        if error is not None:
            updates["error"] = error
        event: dict[str, Any] = {"status": status.value, "at": iso(now)}
        if error:
            event["error"] = error
        events = [[EventType.STATUS.value, json.dumps(event)]]
        ttl: int | str = ""
        proc_op, input_op = "", ""
        if status.terminal:
            updates["completed_at"] = now
            ttl = s.result_ttl_s if status == JobStatus.SUCCEEDED else s.failure_ttl_s
            proc_op, input_op = "rem", "del"
            final = record.updated(updates)
            events.append([EventType.COMPLETED.value, json.dumps(final.job(self.urls(job_id)).public())])
        elif status == JobStatus.PROCESSING:
            ttl, proc_op = s.pending_ttl_s, "add"
        keys = [
            k.job(job_id),
            k.events(job_id),
            k.processing,
            k.input(job_id),
            k.queued,
            k.result(job_id),
            k.cancel(job_id),
            k.checkpoints(job_id),
        ]
        keys += [k.preview(job_id, i) for i in range(len(record.checkpoints))]
        pairs = [x for kv in encode_fields(updates).items() for x in kv]
        applied, cur = self._transition(
            keys=keys,
            args=[
                ",".join(a.value for a in allowed),
                "" if attempt is None else str(attempt),
                str(ttl),
                json.dumps(events),
                EVENT_STREAM_MAXLEN,
                proc_op,
                job_id,
                input_op,
                "" if status == JobStatus.QUEUED else "rem",
                *pairs,
            ],
        )
        return bool(applied), JobStatus(cur.decode()) if cur else None

    # --- worker side ----------------------------------------------------------------------------------

    def start(self, job_id: str, attempt: int, worker_id: str) -> JobRecord | None:
        """Queued → processing for this attempt; None when the job was canceled, expired or superseded."""
        record = self.record(job_id)
        if record is None:
            return None
        fields = {"started_at": time.time(), "worker": worker_id}
        ok, _ = self.transition(
            record, allowed=(JobStatus.QUEUED,), status=JobStatus.PROCESSING, attempt=attempt, fields=fields
        )
        return record.updated({"status": JobStatus.PROCESSING, **fields}) if ok else None

    def claim_queued(
        self, worker_id: str, limit: int, scan: int, accept: Callable[[JobRecord], bool]
    ) -> list[JobRecord]:
        """Start up to `limit` queued jobs that `accept` takes, from the first `scan` queue entries (batching).

        The store's queued → processing compare-and-set makes the claim: a worker that dequeues the same RQ
        entry later finds the job started and skips it; the entry is then dropped so no worker wastes a
        dequeue on it. A crash after the claim leaves a processing job of this worker: the reaper handles it.
        """
        claimed: list[JobRecord] = []
        for raw in self.redis.lrange(self.queue.key, 0, scan - 1):
            if len(claimed) >= limit:
                break
            ticket = tickets.parse_rq_id(raw.decode())
            if ticket is None:
                continue  # not one of ours
            job_id, attempt = ticket
            record = self.record(job_id)
            if record is None or record.status != JobStatus.QUEUED or record.attempt != attempt:
                continue
            if not accept(record):
                continue
            started = self.start(job_id, attempt, worker_id)
            if started is None:
                continue  # canceled or taken meanwhile
            tickets.drop(self.queue, raw.decode())
            claimed.append(started)
        return claimed

    def load_input(self, job_id: str) -> bytes | None:
        return self.redis.get(self.keys.input(job_id))

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.redis.exists(self.keys.cancel(job_id)))

    def write_progress(
        self,
        job_id: str,
        attempt: int,
        fields: dict[str, Any],
        event: tuple[EventType, dict[str, Any]] | None = None,
        checkpoint: dict[str, Any] | None = None,
    ) -> bool:
        """Progress of the running attempt (+ an event, + a checkpoint appended); False when no longer ours."""
        pairs = [x for kv in encode_fields(fields).items() for x in kv]
        etype, edata = (event[0].value, json.dumps(event[1])) if event else ("", "")
        k = self.keys
        return bool(
            self._progress(
                keys=[k.job(job_id), k.events(job_id), k.checkpoints(job_id)],
                args=[
                    str(attempt),
                    etype,
                    edata,
                    EVENT_STREAM_MAXLEN,
                    json.dumps(checkpoint) if checkpoint is not None else "",
                    self.settings.pending_ttl_s,
                    *pairs,
                ],
            )
        )

    def save_preview(self, job_id: str, n: int, png: bytes) -> None:
        self.redis.set(self.keys.preview(job_id, n), png, ex=self.settings.pending_ttl_s)

    def finish(
        self,
        job_id: str,
        attempt: int,
        status: JobStatus,
        *,
        error: str | None = None,
        result_png: bytes | None = None,
        fields: dict[str, Any] | None = None,
        allowed: tuple[JobStatus, ...] = (JobStatus.PROCESSING,),
    ) -> JobRecord | None:
        """Processing → a terminal status for this attempt; the final record, None if someone else ended it."""
        record = self.record(job_id)
        if record is None:
            return None
        if result_png is not None:
            self.redis.set(self.keys.result(job_id), result_png, ex=self.settings.pending_ttl_s)
        ok, _ = self.transition(record, allowed=allowed, status=status, attempt=attempt, fields=fields, error=error)
        if not ok:
            if result_png is not None:
                self.redis.delete(self.keys.result(job_id))
            return None
        return self.record(job_id)

    def requeue(self, job_id: str, attempt: int, reason: str) -> bool:
        """Processing (or queued but orphaned) → queued as attempt+1, at the front of the queue."""
        k = self.keys
        now = time.time()
        event = {"status": JobStatus.QUEUED.value, "at": iso(now), "reason": reason}
        requeued = False

        def move(pipe: redis.client.Pipeline) -> None:
            nonlocal requeued
            record = JobRecord.parse(pipe.hgetall(k.job(job_id)))
            if record is None or record.status not in (JobStatus.PROCESSING, JobStatus.QUEUED):
                return
            if record.attempt != attempt:
                return
            requeued = True
            pipe.multi()
            pipe.hset(
                k.job(job_id),
                mapping=encode_fields({"status": JobStatus.QUEUED, "attempt": attempt + 1, "error": reason}),
            )
            pipe.hdel(
                k.job(job_id), "started_at", "worker", "round", "step", "total_steps", "last_score", "orphan_seen_at"
            )
            pipe.delete(k.checkpoints(job_id), k.cancel(job_id))
            pipe.srem(k.processing, job_id)
            pipe.hset(k.queued, job_id, record.input_bytes)
            self._append_status(pipe, job_id, event)
            tickets.enqueue(self.queue, pipe, self.settings, job_id, attempt + 1, at_front=True)

        self.redis.transaction(move, k.job(job_id))
        return requeued

    def mark_orphan_seen(self, job_id: str, now: float) -> None:
        """Record when a reaper first saw this queued job without a ticket or a worker (kept across reapers;
        the first reaper's time wins). Never recreates an expired record."""
        key = self.keys.job(job_id)
        if self.redis.exists(key):
            self.redis.hsetnx(key, "orphan_seen_at", repr(now))

    def clear_orphan_seen(self, job_id: str) -> None:
        self.redis.hdel(self.keys.job(job_id), "orphan_seen_at")

    def processing_ids(self) -> list[str]:
        return [m.decode() for m in self.redis.smembers(self.keys.processing)]

    def queued_ids(self) -> list[str]:
        return [m.decode() for m in self.redis.hkeys(self.keys.queued)]

    def forget_processing(self, job_id: str) -> None:
        """Drop an id from the processing set (its record expired, or a writer that lost a race moved it)."""
        self.redis.srem(self.keys.processing, job_id)

    def forget_queued(self, job_id: str) -> None:
        """Drop an id from the queued hash (its record expired while it waited)."""
        self.redis.hdel(self.keys.queued, job_id)
