"""Server-sent events for one job, read from its Redis stream: replay what happened, then follow live.

Streams are capped per process (`sse_max_streams`, 503) and per job (`sse_max_streams_per_job`, 429), refused
before the response starts, and each lasts at most `sse_max_duration_s` (the client resumes with
Last-Event-ID), so abandoned or hostile streams cannot pin every slot.

A Redis Stream gives both halves for free: XREAD from id 0 replays, XREAD BLOCK from the last id seen
follows. Each SSE event carries the stream entry id as its `id`, so a client that reconnects with
`Last-Event-ID` resumes exactly where it stopped. The stream ends after the `completed` event.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from jobs.errors import StoreError
from jobs.keys import Keys
from jobs.record import EventType
from jobs.settings import Settings
from jobs.store import REDIS_BACKOFF_CAP_S

STREAM_ID = re.compile(r"^\d+-\d+$")
READ_COUNT = 100
"""Entries per XREAD: replays come in a few round trips without unbounded replies."""


SPARE_CONNECTIONS = 8
"""Async Redis connections beyond one per stream, for the existence checks between reads."""


class ProcessStreamsFull(StoreError):
    """This API process serves as many streams as it may; refused before the response starts."""

    status = 503


class JobStreamsFull(StoreError):
    """This job has as many streams as it may; refused before the response starts."""

    status = 429


class StreamSlots:
    """Counts open event streams, in total and per job, in this API process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.total = 0
        self.per_job: Counter[str] = Counter()

    def acquire(self, job_id: str) -> None:
        s = self.settings
        if self.total >= s.sse_max_streams:
            raise ProcessStreamsFull(
                f"this API process already serves {s.sse_max_streams} event streams (UPZIR_SSE_MAX_STREAMS); retry"
                " shortly or poll GET /jobs/{id}",
                retry_after=s.unavailable_retry_after_s,
            )
        if self.per_job[job_id] >= s.sse_max_streams_per_job:
            raise JobStreamsFull(
                f"job {job_id} already has {s.sse_max_streams_per_job} open event streams"
                " (UPZIR_SSE_MAX_STREAMS_PER_JOB); close one first",
                retry_after=s.unavailable_retry_after_s,
            )
        self.total += 1
        self.per_job[job_id] += 1

    def release(self, job_id: str) -> None:
        self.total -= 1
        self.per_job[job_id] -= 1
        if self.per_job[job_id] <= 0:
            del self.per_job[job_id]


class SlottedEventSourceResponse(EventSourceResponse):
    """An SSE response that gives its stream slot back however it ends (completed, cut, client gone)."""

    def __init__(self, *args: Any, slots: StreamSlots, job_id: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slots, self.job_id = slots, job_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slots.release(self.job_id)


def connect_async(settings: Settings) -> aioredis.Redis:
    """Async client for blocking stream reads; its socket timeout outlasts one XREAD BLOCK."""
    return aioredis.Redis.from_url(
        settings.redis_url,
        max_connections=settings.sse_max_streams + SPARE_CONNECTIONS,
        socket_timeout=settings.redis_timeout_s + settings.sse_block_ms / 1000,
        socket_connect_timeout=settings.redis_timeout_s,
        retry=Retry(ExponentialBackoff(cap=REDIS_BACKOFF_CAP_S), settings.redis_retries),
    )


def resume_id(last_event_id: str | None) -> str:
    """Where to start reading: after the client's Last-Event-ID if it is a stream id, else the beginning."""
    if last_event_id and STREAM_ID.match(last_event_id.strip()):
        return last_event_id.strip()
    return "0"


async def job_events(
    client: aioredis.Redis, keys: Keys, job_id: str, settings: Settings, start: str = "0"
) -> AsyncIterator[ServerSentEvent]:
    """Yield the job's events from `start` on, following live until `completed`, the job expires, or
    `sse_max_duration_s` has passed."""
    stream = keys.events(job_id)
    last = start
    deadline = time.monotonic() + settings.sse_max_duration_s
    while True:
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            return  # the client reconnects with Last-Event-ID and goes on where it stopped
        reply = await client.xread({stream: last}, count=READ_COUNT, block=max(1, min(settings.sse_block_ms, left_ms)))
        if not reply:
            if not await client.exists(keys.job(job_id)):
                return  # expired while we waited: nothing more will come
            continue
        for entry_id, fields in reply[0][1]:
            last = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            event = fields[b"event"].decode()
            yield ServerSentEvent(data=fields[b"data"].decode(), event=event, id=last)
            if event == EventType.COMPLETED.value:
                return
