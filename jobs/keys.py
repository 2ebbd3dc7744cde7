"""Every Redis key of the job system, and the Lua scripts that change several of them atomically.

Redis keys (prefix `upzir`, `Settings.key_prefix`), each with a TTL or pruned, so nothing grows without bound:

    {p}:job:{id}              hash   the job record (`JobRecord`); status moves only through the scripts below
    {p}:job:{id}:input        string uploaded bytes (deleted when the job ends)
    {p}:job:{id}:result       string restored PNG (result TTL)
    {p}:job:{id}:events       stream status / checkpoint / completed events for SSE (replay + follow)
    {p}:job:{id}:checkpoints  list   one JSON entry per quality checkpoint (appended, never rewritten)
    {p}:job:{id}:cancel       string cancel request for a running job (the API never edits a running job)
    {p}:job:{id}:preview:{n}  string PNG of checkpoint n's x̂0 (longest side ≤ preview_max_side)
    {p}:idem:{sha256(key)}    string Idempotency-Key → "pending:{id}" (SET NX claim, 60 s) → job id (idempotency TTL)
    {p}:processing            set    ids of jobs in `processing` (what the reaper scans)
    {p}:queued                hash   id → upload bytes of jobs in `queued` (the byte cap; orphan scan)
    {p}:worker:{wid}          string a ready worker's description and its active job ids; TTL worker_lost_after_s
    {p}:workers               set    worker ids, pruned when their key has expired
    rq:*                      RQ's own queue, job and registry keys; the RQ job id is `{id}-{attempt}`
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


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

    def checkpoints(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:checkpoints"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:cancel"

    def preview(self, job_id: str, n: int) -> str:
        return f"{self.prefix}:job:{job_id}:preview:{n}"

    def idem(self, key: str) -> str:
        return f"{self.prefix}:idem:{hashlib.sha256(key.encode()).hexdigest()}"

    @property
    def processing(self) -> str:
        return f"{self.prefix}:processing"

    @property
    def queued(self) -> str:
        return f"{self.prefix}:queued"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"


TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, ''} end
local ok = false
for s in string.gmatch(ARGV[1], '[^,]+') do if s == cur then ok = true end end
if not ok then return {0, cur} end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[2] then return {0, cur} end
if #ARGV >= 10 then redis.call('HSET', KEYS[1], unpack(ARGV, 10)) end
for _, ev in ipairs(cjson.decode(ARGV[4])) do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'event', ev[1], 'data', ev[2])
end
if ARGV[6] == 'add' then redis.call('SADD', KEYS[3], ARGV[7]) end
if ARGV[6] == 'rem' then redis.call('SREM', KEYS[3], ARGV[7]) end
if ARGV[8] == 'del' then redis.call('DEL', KEYS[4]) end
if ARGV[9] == 'rem' then redis.call('HDEL', KEYS[5], ARGV[7]) end
if ARGV[3] ~= '' then
  for i = 1, #KEYS do
    if i ~= 3 and i ~= 5 then redis.call('EXPIRE', KEYS[i], ARGV[3]) end
  end
end
return {1, cur}
"""
"""Compare-and-set status change + events + bookkeeping, atomically.
KEYS: 1 job hash, 2 events stream, 3 processing set, 4 input, 5 queued hash, 6.. more keys to expire.
ARGV: 1 allowed current statuses "a,b"; 2 required attempt ('' any); 3 ttl ('' keep); 4 events JSON [[type, data]];
5 stream maxlen; 6 processing-set op add|rem|''; 7 job id; 8 input op del|''; 9 queued-hash op rem|''; 10.. pairs."""

PROGRESS = """
if redis.call('HGET', KEYS[1], 'status') ~= 'processing' then return 0 end
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then return 0 end
if #ARGV >= 7 then redis.call('HSET', KEYS[1], unpack(ARGV, 7)) end
if ARGV[2] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'event', ARGV[2], 'data', ARGV[3])
end
if ARGV[5] ~= '' then
  redis.call('RPUSH', KEYS[3], ARGV[5])
  redis.call('EXPIRE', KEYS[3], ARGV[6])
end
return 1
"""
"""Progress write from the running attempt only; never recreates an expired or reaped job. A checkpoint is
one RPUSH, so a job with many checkpoints costs O(1) per write, not a rewrite of the whole list.
KEYS: 1 job hash, 2 events stream, 3 checkpoints list.
ARGV: 1 attempt, 2 event type ('' none), 3 event data, 4 maxlen, 5 checkpoint entry ('' none), 6 ttl, 7.. pairs."""

DEL_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
"""Delete a key only if it still holds our value (releasing an Idempotency-Key claim)."""
