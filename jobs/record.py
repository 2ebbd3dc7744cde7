"""The job record: its statuses, its stored form (a Redis hash) and the job object the API returns.

`JobRecord` is parsed once from the hash, where the store reads it; everything above the store works with
typed attributes. `Job` is the public shape (SERVICE.md) every endpoint, SSE `completed` event and webhook
carries.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from pydantic import BaseModel


class JobStatus(str, Enum):
    """Lifecycle: queued → processing → succeeded | failed | canceled."""

    QUEUED = "queued"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})
"""The outcomes; metric label values are derived from this set."""


class EventType(str, Enum):
    """SSE event names (the contract in SERVICE.md)."""

    STATUS = "status"
    CHECKPOINT = "checkpoint"
    COMPLETED = "completed"


# --- the public job object ---------------------------------------------------------------------------


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

    def public(self) -> dict[str, Any]:
        """JSON-ready dict (what webhooks and events carry)."""
        return self.model_dump(mode="json")


# --- the stored record -------------------------------------------------------------------------------


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fingerprint(image: bytes, params: dict[str, Any], webhook: str | None) -> str:
    """What makes two submissions "the same request" for Idempotency-Key purposes."""
    h = hashlib.sha256(image)
    h.update(json.dumps({"params": params, "webhook": webhook}, sort_keys=True).encode())
    return h.hexdigest()


def _str(v: bytes | None) -> str | None:
    return None if v is None else v.decode()


def _float(v: bytes | None) -> float | None:
    s = _str(v)
    return float(s) if s else None


def _int(v: bytes | None) -> int | None:
    s = _str(v)
    return int(s) if s else None


def encode_fields(fields: dict[str, Any]) -> dict[str, str]:
    """Typed values → the hash's strings (None → '', bools → '1'/'0')."""
    out: dict[str, str] = {}
    for key, v in fields.items():
        if v is None:
            out[key] = ""
        elif isinstance(v, bool):
            out[key] = "1" if v else "0"
        elif isinstance(v, float):
            out[key] = repr(v)
        elif isinstance(v, (dict, list)):
            out[key] = json.dumps(v, sort_keys=True)
        else:
            out[key] = str(v.value if isinstance(v, Enum) else v)
    return out


@dataclass(frozen=True)
class JobRecord:
    """A job as stored, typed. Built only by `JobRecord.parse`; the hash layout lives here and nowhere else."""

    id: str
    status: JobStatus
    attempt: int
    created_at: float
    started_at: float | None = None
    completed_at: float | None = None
    worker: str = ""
    owner: str = ""
    filename: str | None = None
    width: int = 0
    height: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    webhook: str | None = None
    fingerprint: str = ""
    input_bytes: int = 0
    round: int | None = None
    step: int | None = None
    total_steps: int | None = None
    last_score: float | None = None
    steps_run: int | None = None
    rounds: int | None = None
    early_exit: bool | None = None
    run_s: float | None = None
    error: str | None = None
    orphan_seen_at: float | None = None
    """When a reaper first found this queued job in nobody's hands (cleared when it is seen held again)."""
    checkpoints: tuple[dict[str, Any], ...] = ()
    raw: dict[bytes, bytes] = field(default_factory=dict, repr=False, compare=False)
    """The hash as read, kept only so a transition can render the record it is about to write."""

    @classmethod
    def parse(cls, h: dict[bytes, bytes], checkpoints: list[bytes] | None = None) -> JobRecord | None:
        """The hash → a record; None when it is not a job (missing or expired)."""
        if not h or b"status" not in h or b"id" not in h:
            return None
        early = _str(h.get(b"early_exit"))
        return cls(
            id=_str(h[b"id"]) or "",
            status=JobStatus(_str(h[b"status"])),
            attempt=_int(h.get(b"attempt")) or 1,
            created_at=_float(h.get(b"created_at")) or 0.0,
            started_at=_float(h.get(b"started_at")),
            completed_at=_float(h.get(b"completed_at")),
            worker=_str(h.get(b"worker")) or "",
            owner=_str(h.get(b"owner")) or "",
            filename=_str(h.get(b"filename")) or None,
            width=_int(h.get(b"width")) or 0,
            height=_int(h.get(b"height")) or 0,
            params=json.loads(_str(h.get(b"params")) or "{}"),
            webhook=_str(h.get(b"webhook")) or None,
            fingerprint=_str(h.get(b"fingerprint")) or "",
            input_bytes=_int(h.get(b"input_bytes")) or 0,
            round=_int(h.get(b"round")),
            step=_int(h.get(b"step")),
            total_steps=_int(h.get(b"total_steps")),
            last_score=_float(h.get(b"last_score")),
            steps_run=_int(h.get(b"steps_run")),
            rounds=_int(h.get(b"rounds")),
            early_exit=None if not early else early == "1",
            run_s=_float(h.get(b"run_s")),
            error=_str(h.get(b"error")) or None,
            orphan_seen_at=_float(h.get(b"orphan_seen_at")),
            checkpoints=tuple(json.loads(c) for c in (checkpoints or [])),
            raw=dict(h),
        )

    def updated(self, fields: dict[str, Any]) -> JobRecord:
        """This record with `fields` written over it, as the hash would read after the write."""
        merged = {**self.raw, **{k.encode(): v.encode() for k, v in encode_fields(fields).items()}}
        record = JobRecord.parse(merged)
        assert record is not None
        return replace(record, checkpoints=self.checkpoints)

    def job(self, urls: JobUrls, queue_position: int | None = None) -> Job:
        """The public job object."""
        run_s = self.run_s
        if run_s is None and self.started_at is not None and self.completed_at is not None:
            run_s = self.completed_at - self.started_at
        return Job(
            id=self.id,
            status=self.status,
            created_at=iso(self.created_at) or "",
            started_at=iso(self.started_at),
            completed_at=iso(self.completed_at),
            input=JobInput(filename=self.filename, width=self.width, height=self.height, params=self.params),
            progress=JobProgress(
                round=self.round,
                step=self.step,
                total_steps=self.total_steps,
                last_score=self.last_score,
                checkpoints=list(self.checkpoints),
            ),
            queue_position=queue_position,
            early_exit=self.early_exit,
            metrics=JobMetrics(
                queue_wait_s=round(self.started_at - self.created_at, 3) if self.started_at is not None else None,
                run_s=round(run_s, 3) if run_s is not None else None,
                steps_run=self.steps_run,
                rounds=self.rounds,
            ),
            error=self.error,
            urls=urls,
        )
