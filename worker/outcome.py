"""How a job attempt ends in a worker: why it was told to stop, what is stored, and which jobs are running."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from jobs.record import JobStatus


class StopReason(str, Enum):
    """Why `should_cancel` said yes (the sampler only knows that it was told to stop)."""

    REQUEST = "request"  # POST /jobs/{id}/cancel
    SHUTDOWN = "shutdown"  # SIGTERM with UPZIR_SHUTDOWN=cancel
    TIMEOUT = "timeout"  # job_timeout_s passed
    LOST = "lost"  # the job is no longer ours (reaped, re-queued, expired): store nothing


@dataclass
class Outcome:
    """What the final write stores: a terminal status, an error a person can act on, the result and fields."""

    status: JobStatus
    error: str | None = None
    result_png: bytes | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    result: Any = None  # restorer.RestoreResult when it succeeded (typed loosely: no torch import here)


class ActiveJobs:
    """Ids of the jobs this worker holds (running, or storing their outcome); the heartbeat publishes them."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._lock = threading.Lock()
        self.changed = threading.Event()
        """Set on every change: the heartbeat publishes the new set at once instead of at its next tick."""

    def add(self, job_id: str) -> None:
        with self._lock:
            self._ids.add(job_id)
        self.changed.set()

    def discard(self, job_id: str) -> None:
        with self._lock:
            self._ids.discard(job_id)
        self.changed.set()

    def snapshot(self) -> list[str]:
        with self._lock:
            return sorted(self._ids)
