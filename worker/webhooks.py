"""Webhook delivery: POST the final job object to the URL given at submit time, best effort with retries.

Delivery never decides a job's outcome: it runs after the job is stored, in a daemon thread, and a
receiver that stays down only costs log lines.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import httpx
from tenacity import retry_if_exception, retry_if_result, stop_after_attempt, wait_exponential, Retrying

from service.settings import Settings

log = logging.getLogger("upzir.webhooks")

WEBHOOK_BACKOFF_CAP_S = 30
"""Longest pause between webhook tries; the whole delivery stays within a couple of minutes."""


def _retryable_status(response: httpx.Response) -> bool:
    return response.status_code >= 500 or response.status_code == 429


def deliver(url: str, job: dict[str, Any], settings: Settings) -> bool:
    """POST `job` to `url`; True once a 2xx-4xx (except 429) answer comes back."""
    retrying = Retrying(
        stop=stop_after_attempt(settings.webhook_attempts),
        wait=wait_exponential(multiplier=0.5, max=WEBHOOK_BACKOFF_CAP_S),
        retry=retry_if_exception(lambda e: isinstance(e, httpx.TransportError)) | retry_if_result(_retryable_status),
        retry_error_callback=lambda state: None,
        reraise=False,
    )
    try:
        with httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False) as client:
            response = retrying(client.post, url, json=job, headers={"User-Agent": "upzir-webhook"})
    except Exception as exc:  # never let a receiver's problem reach the worker loop
        log.warning("webhook %s for job %s failed: %s", url, job.get("id"), exc)
        return False
    if response is None or response.status_code >= 300:
        log.warning("webhook %s for job %s gave up (%s)", url, job.get("id"), getattr(response, "status_code", None))
        return False
    return True


def deliver_in_background(url: str | None, job: dict[str, Any], settings: Settings) -> threading.Thread | None:
    if not url:
        return None
    thread = threading.Thread(target=deliver, args=(url, job, settings), name="upzir-webhook", daemon=True)
    thread.start()
    return thread
