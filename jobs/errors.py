"""The store's refusals. Each carries the HTTP status it means, so the API maps them in one handler.

Messages are written for the person calling the API; the "unknown or expired" wording lives only here.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of the store's refusals: `status` is the HTTP status, `retry_after` (s) a Retry-After header."""

    status: int = 500
    reason: str = "store_error"
    """Metric label for a refused submission (`restore_upload_rejected_total{reason}`)."""
    retry_after: int | None = None

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        if retry_after is not None:
            self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


class JobNotFound(StoreError):
    """Unknown, expired, or owned by another token (the three look alike on purpose)."""

    status = 404
    reason = "not_found"

    @classmethod
    def unknown(cls, job_id: str) -> JobNotFound:
        return cls(f"no job {job_id!r} (unknown or expired)")


class JobConflict(StoreError):
    reason = "conflict"
    status = 409


class QueueFull(StoreError):
    reason = "queue_full"
    status = 429


class IdempotencyMismatch(StoreError):
    reason = "idempotency_mismatch"
    status = 422


class IdempotencyInFlight(StoreError):
    reason = "idempotency_in_flight"
    status = 409
    retry_after = 1
    """A twin request with the same Idempotency-Key finishes creating its job within milliseconds."""
