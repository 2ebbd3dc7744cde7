"""The job system the API (`service/`) and the workers (`worker/`) share; neither imports the other.

Split by concept, as rq is: `settings` (one typed settings object), `record` (statuses, the stored record,
the public job object), `errors` (refusals with their HTTP status), `keys` (Redis key layout and Lua
scripts), `queue` (RQ tickets), `store` (every read and transition), `workers` (registry and heartbeats),
`reaper` (recovering jobs nobody holds) and `webhooks` (guarded, signed notifications).
Import-light: nothing here imports torch.
"""
