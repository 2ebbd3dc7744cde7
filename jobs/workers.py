"""The worker registry: which workers are alive, what each has loaded, and which jobs each is running.

A worker renews `{p}:worker:{id}` (TTL `worker_lost_after_s`) every `heartbeat_s` with its description and
the ids of the jobs it is running right now. The reaper reads both halves: a dead worker's jobs fail (or are
re-queued); a live worker that no longer lists a job has lost it (say, its final write never landed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import redis

from .keys import Keys
from .settings import Settings


@dataclass(frozen=True)
class WorkerInfo:
    """One live worker, as its last heartbeat described it."""

    id: str
    info: dict[str, Any]
    jobs: frozenset[str] = field(default_factory=frozenset)


class WorkerRegistry:
    def __init__(self, connection: redis.Redis, keys: Keys, settings: Settings) -> None:
        self.redis, self.keys, self.settings = connection, keys, settings

    def heartbeat(self, worker_id: str, info: dict[str, Any], jobs: list[str] | tuple[str, ...] = ()) -> None:
        """Mark a worker ready and alive for `worker_lost_after_s` more seconds, running `jobs`."""
        ttl_ms = int(self.settings.worker_lost_after_s * 1000)
        with self.redis.pipeline() as pipe:
            pipe.set(self.keys.worker(worker_id), json.dumps({**info, "jobs": list(jobs)}), px=ttl_ms)
            pipe.sadd(self.keys.workers, worker_id)
            pipe.execute()

    def remove(self, worker_id: str) -> None:
        with self.redis.pipeline() as pipe:
            pipe.delete(self.keys.worker(worker_id))
            pipe.srem(self.keys.workers, worker_id)
            pipe.execute()

    def alive(self) -> dict[str, WorkerInfo]:
        """Workers whose heartbeat is current, by id; forgets the ids of the others."""
        ids = [m.decode() for m in self.redis.smembers(self.keys.workers)]
        if not ids:
            return {}
        values = self.redis.mget([self.keys.worker(w) for w in ids])
        dead = [w for w, v in zip(ids, values) if v is None]
        if dead:
            self.redis.srem(self.keys.workers, *dead)
        live: dict[str, WorkerInfo] = {}
        for wid, value in zip(ids, values):
            if value is None:
                continue
            info = json.loads(value)
            live[wid] = WorkerInfo(wid, info, frozenset(info.pop("jobs", [])))
        return live

    def ready(self) -> list[str]:
        """Ids of workers whose heartbeat is current."""
        return sorted(self.alive())
