"""Server-sent events for one job, read from its Redis stream: replay what happened, then follow live.

A Redis Stream gives both halves for free: XREAD from id 0 replays, XREAD BLOCK from the last id seen
follows. Each SSE event carries the stream entry id as its `id`, so a client that reconnects with
`Last-Event-ID` resumes exactly where it stopped. The stream ends after the `completed` event.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from sse_starlette import ServerSentEvent

from .jobs import REDIS_BACKOFF_CAP_S, EventType, Keys
from .settings import Settings

STREAM_ID = re.compile(r"^\d+-\d+$")
READ_COUNT = 100
"""Entries per XREAD: replays come in a few round trips without unbounded replies."""


def connect_async(settings: Settings) -> aioredis.Redis:
    """Async client for blocking stream reads; its socket timeout outlasts one XREAD BLOCK."""
    return aioredis.Redis.from_url(
        settings.redis_url,
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
    """Yield the job's events from `start` on, following live until `completed` or until the job expires."""
    stream = keys.events(job_id)
    last = start
    while True:
        reply = await client.xread({stream: last}, count=READ_COUNT, block=settings.sse_block_ms)
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
