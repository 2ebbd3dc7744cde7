"""The RQ side of a job: which task runs it, its RQ id per attempt, enqueueing and dropping entries.

The job record is the truth; an RQ entry is only a ticket that wakes a worker. A ticket for a job that is
no longer queued (canceled, claimed by a batch, superseded by a later attempt) is skipped by the worker.
"""

from __future__ import annotations

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError

from .settings import Settings

TASK = "worker.tasks.restore_job"
"""Dotted path of the job function: the API enqueues it by name and never imports torch."""


def rq_id(job_id: str, attempt: int) -> str:
    return f"{job_id}-{attempt}"


def parse_rq_id(value: str) -> tuple[str, int] | None:
    """`{id}-{attempt}` → (id, attempt); None for entries that are not ours."""
    job_id, _, attempt = value.rpartition("-")
    if not job_id or not attempt.isdigit():
        return None
    return job_id, int(attempt)


def enqueue(
    queue: Queue, pipe: redis.client.Pipeline, settings: Settings, job_id: str, attempt: int, at_front: bool = False
) -> None:
    """Add the ticket for (job, attempt) inside the caller's MULTI."""
    s = settings
    queue.enqueue_call(
        TASK,
        args=(job_id, attempt),
        job_id=rq_id(job_id, attempt),
        # our own cooperative timeout fires first; RQ's is the backstop for a wedged job
        timeout=int(s.job_timeout_s + s.worker_lost_after_s),
        ttl=s.pending_ttl_s,
        result_ttl=s.result_ttl_s,
        failure_ttl=s.failure_ttl_s,
        description=f"restore {job_id} (attempt {attempt})",
        at_front=at_front,
        pipeline=pipe,
    )


def drop(queue: Queue, ticket: str) -> None:
    """Take a ticket out of the queue (a worker that dequeues it anyway skips it)."""
    queue.remove(ticket)
    try:
        queue.job_class.fetch(ticket, connection=queue.connection).delete(remove_from_queue=True)
    except NoSuchJobError:
        pass


def position(queue: Queue, job_id: str, attempt: int) -> int | None:
    """0-based place of the job's ticket in the queue, None when it is not there."""
    pos = queue.connection.lpos(queue.key, rq_id(job_id, attempt))
    return None if pos is None else int(pos)
