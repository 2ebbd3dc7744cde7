"""The job store: Redis key layout, the job object and every state transition, shared by API and worker.

Redis keys (prefix `upzir`, `Settings.key_prefix`), each with a TTL so nothing grows without bound:

    {p}:job:{id}             hash   the job record; status moves only through the transitions below
    {p}:job:{id}:input       string uploaded bytes (deleted when the job ends)
    {p}:job:{id}:result      string restored PNG (result TTL)
    {p}:job:{id}:events      stream status / checkpoint / completed events for SSE (replay + follow)
    {p}:job:{id}:cancel      string cancel request for a running job (the API never edits a running job)
    {p}:job:{id}:preview:{n} string PNG of checkpoint n's x̂0 (longest side ≤ preview_max_side)
    {p}:idem:{sha256(key)}   string Idempotency-Key → "pending:{id}" (SET NX claim, 60 s) → job id (idempotency TTL)
    {p}:processing           set    ids of jobs in `processing` (what the reaper scans)
    {p}:worker:{wid}         string a ready worker's description; TTL = worker_lost_after_s, renewed per heartbeat
    {p}:workers              set    worker ids, pruned when their key has expired
    rq:*                     RQ's own queue, job and registry keys; the RQ job id is `{id}-{attempt}`

Writers: the API creates jobs and cancels queued ones; the worker writes progress and the outcome; the
reaper fails (or re-queues) jobs of dead workers. Every status change is a compare-and-set Lua script that
also appends the matching events, so the hash and the event stream never disagree.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Callable

import redis
from pydantic import BaseModel
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from rq import Queue
from rq.exceptions import NoSuchJobError

from .settings import Settings

TASK = "worker.tasks.restore_job"
"""Dotted path of the job function: the API enqueues it by name and never imports torch."""

EVENT_STREAM_MAXLEN = 10_000
"""Cap per job event stream: far above any schedule's checkpoint count, a fuse against runaway writers."""

IDEMPOTENCY_CLAIM_TTL_S = 60
"""How long a claimed-but-unfinished Idempotency-Key blocks its twin; creating a job takes milliseconds."""

REDIS_BACKOFF_CAP_S = 0.5
"""Longest pause between retries of one Redis command: retries are for blips, outages answer 503."""


class JobStatus(str, Enum):
    """Lifecycle: queued → processing → succeeded | failed | canceled."""

    QUEUED = "queued"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


class EventType(str, Enum):
    """SSE event names (the contract in SERVICE.md)."""

    STATUS = "status"
    CHECKPOINT = "checkpoint"
    COMPLETED = "completed"


# --- the job object ---------------------------------------------------------------------------------


class JobInput(BaseModel):
    filename: str | None
    width: int
    height: int
    params: dict[str, Any]


class JobProgress(BaseModel):
    round: int | None = None
    step: int | None = None
    total_steps: int | None = None
    last_score: float | None = None
    checkpoints: list[dict[str, Any]] = []


class JobMetrics(BaseModel):
    queue_wait_s: float | None = None
    run_s: float | None = None
    steps_run: int | None = None
    rounds: int | None = None


class JobUrls(BaseModel):
    get: str
    events: str
    result: str
    cancel: str


class Job(BaseModel):
    """The job object every endpoint, SSE `completed` event and webhook returns."""

    id: str
    status: JobStatus
    created_at: str
    started_at: str | None
    completed_at: str | None
    input: JobInput
    progress: JobProgress
    queue_position: int | None
    early_exit: bool | None
    metrics: JobMetrics
    error: str | None
    urls: JobUrls


# --- errors the API maps to status codes ------------------------------------------------------------


class StoreError(Exception):
    """Base of the store's refusals; the message is meant for the person calling the API."""


class JobNotFound(StoreError):
    pass


class JobConflict(StoreError):
    pass


class QueueFull(StoreError):
    def __init__(self, depth: int, cap: int) -> None:
        super().__init__(f"the queue is full ({depth} jobs waiting, limit {cap}); retry later")
        self.depth = depth


class IdempotencyMismatch(StoreError):
    pass


class IdempotencyInFlight(StoreError):
    pass


# --- helpers ----------------------------------------------------------------------------------------


def connect(settings: Settings, *, socket_timeout: float | None = None) -> redis.Redis:
    """A bytes Redis client with short timeouts and few retries, so outages surface quickly as 503."""
    timeout = settings.redis_timeout_s
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=socket_timeout if socket_timeout is not None else timeout,
        socket_connect_timeout=timeout,
        retry=Retry(ExponentialBackoff(cap=REDIS_BACKOFF_CAP_S), settings.redis_retries),
    )


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fingerprint(image: bytes, params: dict[str, Any], webhook: str | None) -> str:
    """What makes two submissions "the same request" for Idempotency-Key purposes."""
    h = hashlib.sha256(image)
    h.update(json.dumps({"params": params, "webhook": webhook}, sort_keys=True).encode())
    return h.hexdigest()


def as_str(v: bytes | str | None) -> str | None:
    if v is None:
        return None
    return v.decode() if isinstance(v, bytes) else v


def as_float(v: bytes | str | None) -> float | None:
    s = as_str(v)
    return float(s) if s not in (None, "") else None


def as_int(v: bytes | str | None) -> int | None:
    s = as_str(v)
    return int(s) if s not in (None, "") else None


@dataclass(frozen=True)
class Keys:
    """Every Redis key name in one place (layout in the module docstring)."""

    prefix: str

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def input(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:input"

    def result(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:result"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:events"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:cancel"

    def preview(self, job_id: str, n: int) -> str:
        return f"{self.prefix}:job:{job_id}:preview:{n}"

    def idem(self, key: str) -> str:
        return f"{self.prefix}:idem:{hashlib.sha256(key.encode()).hexdigest()}"

    @property
    def processing(self) -> str:
        return f"{self.prefix}:processing"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"


# Compare-and-set status change + events + bookkeeping, atomically.
# KEYS: 1 job hash, 2 events stream, 3 processing set, 4 input, 5.. extra keys to expire
# ARGV: 1 allowed current statuses "a,b"; 2 required attempt ('' any); 3 ttl ('' keep); 4 events JSON [[type, data]];
#       5 stream maxlen; 6 processing-set op add|rem|''; 7 job id; 8 input op del|''; 9.. field, value pairs
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, ''} end
local ok = false
for s in string.gmatch(ARGV[1], '[^,]+') do if s == cur then ok = true end end
if not ok then return {0, cur} end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[2] then return {0, cur} end
if #ARGV >= 9 then redis.call('HSET', KEYS[1], unpack(ARGV, 9)) end
for _, ev in ipairs(cjson.decode(ARGV[4])) do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'event', ev[1], 'data', ev[2])
end
if ARGV[6] == 'add' then redis.call('SADD', KEYS[3], ARGV[7]) end
if ARGV[6] == 'rem' then redis.call('SREM', KEYS[3], ARGV[7]) end
if ARGV[8] == 'del' then redis.call('DEL', KEYS[4]) end
if ARGV[3] ~= '' then
  for i = 1, #KEYS do
    if i ~= 3 then redis.call('EXPIRE', KEYS[i], ARGV[3]) end
  end
end
return {1, cur}
"""

# Progress write from the running attempt only; never recreates an expired or reaped job.
# KEYS: 1 job hash, 2 events stream; ARGV: 1 attempt, 2 event type ('' none), 3 event data, 4 maxlen, 5.. pairs
_PROGRESS = """
if redis.call('HGET', KEYS[1], 'status') ~= 'processing' then return 0 end
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
if ARGV[2] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'event', ARGV[2], 'data', ARGV[3])
end
return 1
"""

# Delete a key only if it still holds our value (releasing an Idempotency-Key claim).
_DEL_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_PENDING = "pending:"


class JobStore:
    """All reads and writes of jobs; the API and the worker both go through it."""

    def __init__(self, settings: Settings, connection: redis.Redis | None = None) -> None:
        self.settings = settings
        self.redis = connection if connection is not None else connect(settings)
        self.keys = Keys(settings.key_prefix)
        self.queue = Queue(settings.queue, connection=self.redis)
        self._transition = self.redis.register_script(_TRANSITION)
        self._progress = self.redis.register_script(_PROGRESS)
        self._del_if = self.redis.register_script(_DEL_IF)

    # --- rendering --------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        return f"{self.settings.public_url.rstrip('/')}{path}"

    def preview_url(self, job_id: str, n: int) -> str:
        return self.url(f"/jobs/{job_id}/checkpoints/{n}/preview")

    def render(self, h: dict[bytes, bytes], queue_position: int | None = None) -> dict[str, Any]:
        """Hash → job object (a JSON-ready dict)."""
        job_id = as_str(h[b"id"]) or ""
        created, started, completed = as_float(h.get(b"created_at")), as_float(h.get(b"started_at")), as_float(h.get(b"completed_at"))
        early = as_str(h.get(b"early_exit"))
        run_s = as_float(h.get(b"run_s"))
        if run_s is None and started is not None and completed is not None:
            run_s = completed - started
        job = Job(
            id=job_id,
            status=JobStatus(as_str(h[b"status"])),
            created_at=iso(created) or "",
            started_at=iso(started),
            completed_at=iso(completed),
            input=JobInput(
                filename=as_str(h.get(b"filename")) or None,
                width=as_int(h.get(b"width")) or 0,
                height=as_int(h.get(b"height")) or 0,
                params=json.loads(as_str(h.get(b"params")) or "{}"),
            ),
            progress=JobProgress(
                round=as_int(h.get(b"round")),
                step=as_int(h.get(b"step")),
                total_steps=as_int(h.get(b"total_steps")),
                last_score=as_float(h.get(b"last_score")),
                checkpoints=json.loads(as_str(h.get(b"checkpoints")) or "[]"),
            ),
            queue_position=queue_position,
            early_exit=None if early in (None, "") else early == "1",
            metrics=JobMetrics(
                queue_wait_s=round(started - created, 3) if started is not None and created is not None else None,
                run_s=round(run_s, 3) if run_s is not None else None,
                steps_run=as_int(h.get(b"steps_run")),
                rounds=as_int(h.get(b"rounds")),
            ),
            error=as_str(h.get(b"error")) or None,
            urls=JobUrls(
                get=self.url(f"/jobs/{job_id}"),
                events=self.url(f"/jobs/{job_id}/events"),
                result=self.url(f"/jobs/{job_id}/result"),
                cancel=self.url(f"/jobs/{job_id}/cancel"),
            ),
        )
        return job.model_dump(mode="json")

    @staticmethod
    def rq_id(job_id: str, attempt: int) -> str:
        return f"{job_id}-{attempt}"

    # --- API side ---------------------------------------------------------------------------------

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
    ) -> tuple[dict[str, Any], bool]:
        """Create and enqueue a job; returns (job, created). Same Idempotency-Key → the first job, created=False."""
        fp = fingerprint(image, params, webhook)
        job_id = uuid.uuid4().hex
        idem_key = self.keys.idem(idempotency_key) if idempotency_key else None
        claim = f"{_PENDING}{job_id}"
        if idem_key:
            while True:
                if self.redis.set(idem_key, claim, nx=True, ex=IDEMPOTENCY_CLAIM_TTL_S):
                    break
                replay = self._replay(idem_key, fp)
                if replay is not None:
                    return replay, False
        try:
            self._create(job_id, fp, image, filename, width, height, params, webhook, idem_key)
        except BaseException:
            if idem_key:
                self._del_if(keys=[idem_key], args=[claim])
            raise
        job = self.get(job_id)
        if job is None:  # only if someone deleted it within the last milliseconds
            raise JobNotFound(f"job {job_id} vanished right after it was created")
        return job, True

    def _replay(self, idem_key: str, fp: str) -> dict[str, Any] | None:
        """The job an Idempotency-Key already names, or None when that key is free again."""
        value = as_str(self.redis.get(idem_key))
        if value is None:
            return None
        if value.startswith(_PENDING):
            raise IdempotencyInFlight(
                "a request with this Idempotency-Key is still being processed; retry in a moment"
            )
        stored_fp = as_str(self.redis.hget(self.keys.job(value), "fingerprint"))
        if stored_fp is None:  # the job expired: the key may start a new one
            self._del_if(keys=[idem_key], args=[value])
            return None
        if stored_fp != fp:
            raise IdempotencyMismatch(
                "this Idempotency-Key was already used for a different request (other image or parameters);"
                " use a new key"
            )
        return self.get(value)

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
    ) -> None:
        s, k = self.settings, self.keys
        now = time.time()
        record = {
            "id": job_id,
            "status": JobStatus.QUEUED.value,
            "created_at": repr(now),
            "filename": filename or "",
            "width": width,
            "height": height,
            "params": json.dumps(params, sort_keys=True),
            "webhook": webhook or "",
            "fingerprint": fp,
            "attempt": 1,
            "checkpoints": "[]",
        }
        event = {"status": JobStatus.QUEUED.value, "at": iso(now)}

        def create(pipe: redis.client.Pipeline) -> None:
            depth = pipe.llen(self.queue.key)
            if depth >= s.max_queue_depth:
                raise QueueFull(depth, s.max_queue_depth)
            pipe.multi()
            pipe.hset(k.job(job_id), mapping=record)
            pipe.expire(k.job(job_id), s.pending_ttl_s)
            pipe.set(k.input(job_id), image, ex=s.pending_ttl_s)
            pipe.xadd(
                k.events(job_id),
                {"event": EventType.STATUS.value, "data": json.dumps(event)},
                maxlen=EVENT_STREAM_MAXLEN,
                approximate=True,
            )
            pipe.expire(k.events(job_id), s.pending_ttl_s)
            if idem_key:
                pipe.set(idem_key, job_id, ex=s.idempotency_ttl_s)
            self._enqueue(pipe, job_id, attempt=1)

        self.redis.transaction(create, self.queue.key)

    def _enqueue(self, pipe: redis.client.Pipeline, job_id: str, attempt: int, at_front: bool = False) -> None:
        s = self.settings
        self.queue.enqueue_call(
            TASK,
            args=(job_id, attempt),
            job_id=self.rq_id(job_id, attempt),
            # our own cooperative timeout fires first; RQ's is the backstop for a wedged job
            timeout=int(s.job_timeout_s + s.worker_lost_after_s),
            ttl=s.pending_ttl_s,
            result_ttl=s.result_ttl_s,
            failure_ttl=s.failure_ttl_s,
            description=f"restore {job_id} (attempt {attempt})",
            at_front=at_front,
            pipeline=pipe,
        )

    def get(self, job_id: str) -> dict[str, Any] | None:
        h = self.redis.hgetall(self.keys.job(job_id))
        if not h or b"status" not in h:
            return None
        position = None
        if as_str(h[b"status"]) == JobStatus.QUEUED.value:
            position = self.redis.lpos(self.queue.key, self.rq_id(job_id, as_int(h.get(b"attempt")) or 1))
        return self.render(h, position)

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Queued → canceled now; processing → a cancel request the worker honours at its next step."""
        h = self.redis.hgetall(self.keys.job(job_id))
        if not h:
            raise JobNotFound(f"no job {job_id!r} (unknown or expired)")
        attempt = as_int(h.get(b"attempt")) or 1
        done, cur = self.transition(
            job_id,
            h,
            allowed=(JobStatus.QUEUED,),
            status=JobStatus.CANCELED,
            error="canceled by request before it started",
        )
        if done:
            self._drop_rq_job(self.rq_id(job_id, attempt))
        elif cur is None:
            raise JobNotFound(f"no job {job_id!r} (unknown or expired)")
        elif cur == JobStatus.PROCESSING:
            self.redis.set(self.keys.cancel(job_id), "1", ex=self.settings.pending_ttl_s)
        else:
            raise JobConflict(f"job {job_id} already ended ({cur.value}); nothing to cancel")
        job = self.get(job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id!r} (unknown or expired)")
        return job

    def _drop_rq_job(self, rq_id: str) -> None:
        """Take a canceled job's RQ entry out of the queue (a worker that dequeues it anyway skips it)."""
        self.queue.remove(rq_id)
        try:
            self.queue.job_class.fetch(rq_id, connection=self.redis).delete(remove_from_queue=True)
        except NoSuchJobError:
            pass

    def result(self, job_id: str) -> bytes:
        status = as_str(self.redis.hget(self.keys.job(job_id), "status"))
        if status is None:
            raise JobNotFound(f"no job {job_id!r} (unknown or expired)")
        if status != JobStatus.SUCCEEDED.value:
            hint = "wait for it to succeed" if not JobStatus(status).terminal else "it has no result"
            raise JobConflict(f"job {job_id} is {status}; {hint}")
        data = self.redis.get(self.keys.result(job_id))
        if data is None:
            raise JobNotFound(f"the result of job {job_id} has expired")
        return data

    def preview(self, job_id: str, n: int) -> bytes:
        data = self.redis.get(self.keys.preview(job_id, n))
        if data is None:
            raise JobNotFound(f"no preview {n} for job {job_id!r} (no such checkpoint yet, or expired)")
        return data

    def exists(self, job_id: str) -> bool:
        return bool(self.redis.exists(self.keys.job(job_id)))

    def queue_depth(self) -> int:
        return int(self.redis.llen(self.queue.key))

    # --- transitions --------------------------------------------------------------------------------

    def transition(
        self,
        job_id: str,
        snapshot: dict[bytes, bytes],
        *,
        allowed: tuple[JobStatus, ...],
        status: JobStatus,
        attempt: int | None = None,
        fields: dict[str, Any] | None = None,
        error: str | None = None,
        extra_keys: tuple[str, ...] = (),
    ) -> tuple[bool, JobStatus | None]:
        """Compare-and-set the status, append the events, set TTLs; (applied, status found)."""
        s, k = self.settings, self.keys
        now = time.time()
        updates: dict[str, Any] = {"status": status.value, **(fields or {})}
        if error is not None:
            updates["error"] = error
        event: dict[str, Any] = {"status": status.value, "at": iso(now)}
        if error:
            event["error"] = error
        events = [[EventType.STATUS.value, json.dumps(event)]]
        ttl: int | str = ""
        proc_op, input_op = "", ""
        if status.terminal:
            updates["completed_at"] = repr(now)
            ttl = s.result_ttl_s if status == JobStatus.SUCCEEDED else s.failure_ttl_s
            proc_op, input_op = "rem", "del"
            merged = {**snapshot, **{key.encode(): str(v).encode() for key, v in updates.items()}}
            events.append([EventType.COMPLETED.value, json.dumps(self.render(merged))])
        elif status == JobStatus.PROCESSING:
            ttl, proc_op = s.pending_ttl_s, "add"
        n_previews = len(json.loads(as_str(snapshot.get(b"checkpoints")) or "[]"))
        keys = [k.job(job_id), k.events(job_id), k.processing, k.input(job_id), k.result(job_id), k.cancel(job_id)]
        keys += [k.preview(job_id, i) for i in range(n_previews)] + list(extra_keys)
        pairs: list[Any] = []
        for key, v in updates.items():
            pairs += [key, "" if v is None else str(v)]
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
                *pairs,
            ],
        )
        cur_s = as_str(cur)
        return bool(applied), JobStatus(cur_s) if cur_s else None

    # --- worker side --------------------------------------------------------------------------------

    def start(self, job_id: str, attempt: int, worker_id: str) -> dict[bytes, bytes] | None:
        """Queued → processing for this attempt; None when the job was canceled, expired or superseded."""
        h = self.redis.hgetall(self.keys.job(job_id))
        if not h:
            return None
        now = time.time()
        ok, _ = self.transition(
            job_id,
            h,
            allowed=(JobStatus.QUEUED,),
            status=JobStatus.PROCESSING,
            attempt=attempt,
            fields={"started_at": repr(now), "worker": worker_id},
        )
        if not ok:
            return None
        h[b"status"], h[b"started_at"], h[b"worker"] = b"processing", repr(now).encode(), worker_id.encode()
        return h

    def claim_queued(
        self, worker_id: str, limit: int, scan: int, accept: Callable[[dict[bytes, bytes]], bool]
    ) -> list[tuple[str, int, dict[bytes, bytes]]]:
        """Start up to `limit` queued jobs that `accept` takes, from the first `scan` queue entries (batching).

        The store's queued → processing compare-and-set makes the claim: a worker that dequeues the same RQ
        entry later finds the job started and skips it; the entry is then dropped so no worker wastes a
        dequeue on it. A crash after the claim leaves a processing job of this worker: the reaper handles it.
        """
        claimed: list[tuple[str, int, dict[bytes, bytes]]] = []
        for raw in self.redis.lrange(self.queue.key, 0, scan - 1):
            if len(claimed) >= limit:
                break
            job_id, _, attempt_s = raw.decode().rpartition("-")
            if not job_id or not attempt_s.isdigit():
                continue  # not one of ours
            attempt = int(attempt_s)
            h = self.redis.hgetall(self.keys.job(job_id))
            if as_str(h.get(b"status")) != JobStatus.QUEUED.value or as_int(h.get(b"attempt")) != attempt:
                continue
            if not accept(h):
                continue
            snapshot = self.start(job_id, attempt, worker_id)
            if snapshot is None:
                continue  # canceled or taken meanwhile
            self._drop_rq_job(raw.decode())
            claimed.append((job_id, attempt, snapshot))
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
    ) -> bool:
        """Progress of the running attempt (+ optional event); False when the job is no longer ours."""
        pairs: list[Any] = []
        for key, v in fields.items():
            pairs += [key, "" if v is None else str(v)]
        etype, edata = (event[0].value, json.dumps(event[1])) if event else ("", "")
        return bool(
            self._progress(
                keys=[self.keys.job(job_id), self.keys.events(job_id)],
                args=[str(attempt), etype, edata, EVENT_STREAM_MAXLEN, *pairs],
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
    ) -> dict[str, Any] | None:
        """Processing → a terminal status for this attempt; returns the final job, None if someone else ended it."""
        h = self.redis.hgetall(self.keys.job(job_id))
        if not h:
            return None
        if result_png is not None:
            self.redis.set(self.keys.result(job_id), result_png, ex=self.settings.pending_ttl_s)
        ok, _ = self.transition(
            job_id, h, allowed=allowed, status=status, attempt=attempt, fields=fields, error=error
        )
        if not ok:
            if result_png is not None:
                self.redis.delete(self.keys.result(job_id))
            return None
        return self.get(job_id)

    def requeue(self, job_id: str, attempt: int, reason: str) -> bool:
        """Processing → queued as attempt+1, at the front of the queue (it has waited already)."""
        k = self.keys
        now = time.time()
        event = {"status": JobStatus.QUEUED.value, "at": iso(now), "reason": reason}
        requeued = False

        def move(pipe: redis.client.Pipeline) -> None:
            nonlocal requeued
            h = pipe.hgetall(k.job(job_id))
            if as_str(h.get(b"status")) != JobStatus.PROCESSING.value or as_int(h.get(b"attempt")) != attempt:
                requeued = False
                return
            pipe.multi()
            pipe.hset(
                k.job(job_id),
                mapping={"status": JobStatus.QUEUED.value, "attempt": attempt + 1, "error": reason},
            )
            pipe.hdel(k.job(job_id), "started_at", "worker", "round", "step", "total_steps", "last_score")
            pipe.hset(k.job(job_id), "checkpoints", "[]")
            pipe.srem(k.processing, job_id)
            pipe.delete(k.cancel(job_id))
            pipe.xadd(
                k.events(job_id),
                {"event": EventType.STATUS.value, "data": json.dumps(event)},
                maxlen=EVENT_STREAM_MAXLEN,
                approximate=True,
            )
            self._enqueue(pipe, job_id, attempt + 1, at_front=True)
            requeued = True

        self.redis.transaction(move, k.job(job_id))
        return requeued

    def processing_ids(self) -> list[str]:
        return [m.decode() for m in self.redis.smembers(self.keys.processing)]

    def snapshot(self, job_id: str) -> dict[bytes, bytes]:
        return self.redis.hgetall(self.keys.job(job_id))

    def forget_processing(self, job_id: str) -> None:
        self.redis.srem(self.keys.processing, job_id)

    # --- worker registry (readiness and liveness) ----------------------------------------------------

    def heartbeat_worker(self, worker_id: str, info: dict[str, Any]) -> None:
        """Mark a worker ready and alive for `worker_lost_after_s` more seconds."""
        ttl_ms = int(self.settings.worker_lost_after_s * 1000)
        with self.redis.pipeline() as pipe:
            pipe.set(self.keys.worker(worker_id), json.dumps(info), px=ttl_ms)
            pipe.sadd(self.keys.workers, worker_id)
            pipe.execute()

    def remove_worker(self, worker_id: str) -> None:
        with self.redis.pipeline() as pipe:
            pipe.delete(self.keys.worker(worker_id))
            pipe.srem(self.keys.workers, worker_id)
            pipe.execute()

    def worker_alive(self, worker_id: str) -> bool:
        return bool(worker_id) and bool(self.redis.exists(self.keys.worker(worker_id)))

    def ready_workers(self) -> list[str]:
        """Ids of workers whose heartbeat is current; forgets the others."""
        ids = [m.decode() for m in self.redis.smembers(self.keys.workers)]
        if not ids:
            return []
        with self.redis.pipeline() as pipe:
            for wid in ids:
                pipe.exists(self.keys.worker(wid))
            alive = pipe.execute()
        dead = [wid for wid, a in zip(ids, alive) if not a]
        if dead:
            self.redis.srem(self.keys.workers, *dead)
        return [wid for wid, a in zip(ids, alive) if a]
