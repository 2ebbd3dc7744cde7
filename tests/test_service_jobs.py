"""JobStore against real Redis: compare-and-set transitions, races between API and worker, TTLs."""

from __future__ import annotations

import json

import pytest
from conftest import image_bytes

from jobs.record import EventType, JobStatus
from jobs.settings import Settings
from jobs.store import JobStore


@pytest.fixture
def store(redis_client, redis_url) -> JobStore:
    s = JobStore(
        Settings(redis_url=redis_url, result_ttl_s=600, failure_ttl_s=900, pending_ttl_s=1200, job_timeout_s=600)
    )
    yield s
    s.redis.close()


def new_job(store: JobStore) -> str:
    job, created = store.submit(image=image_bytes(), filename="a.png", width=40, height=32, params={"preset": "fast"})
    assert created
    return job.id


def events(store: JobStore, job_id: str) -> list[str]:
    return [f[b"event"].decode() for _, f in store.redis.xrange(store.keys.events(job_id))]


def test_cancel_wins_over_a_later_start(store):
    job_id = new_job(store)
    assert store.cancel(job_id)[0].status == "canceled"
    assert store.start(job_id, 1, "w") is None  # the worker dequeued it anyway: it must skip it
    assert store.get(job_id).status == "canceled"
    assert store.queue_depth() == 0


def test_cancel_of_a_running_job_is_a_request_not_an_edit(store):
    job_id = new_job(store)
    assert store.start(job_id, 1, "w") is not None
    job, ended = store.cancel(job_id)
    assert job.status == "processing" and ended is None  # only the worker ends a running job
    assert store.cancel_requested(job_id)
    assert store.finish(job_id, 1, JobStatus.CANCELED, error="canceled by request").status == "canceled"
    assert store.finish(job_id, 1, JobStatus.SUCCEEDED) is None  # one outcome only
    assert events(store, job_id) == ["status", "status", "status", "completed"]


def test_stale_attempt_cannot_write(store):
    job_id = new_job(store)
    assert store.start(job_id, 1, "w") is not None
    assert store.write_progress(job_id, 1, {"step": 1}, (EventType.CHECKPOINT, {"index": 0}))
    assert store.requeue(job_id, 1, "test")
    assert not store.write_progress(job_id, 1, {"step": 2})
    assert store.start(job_id, 1, "w") is None
    assert store.finish(job_id, 1, JobStatus.SUCCEEDED) is None
    assert store.get(job_id).status == "queued"
    assert store.queue.get_job_ids()[0] == f"{job_id}-2"  # back at the front, as attempt 2


def test_progress_never_recreates_an_expired_job(store):
    job_id = new_job(store)
    store.start(job_id, 1, "w")
    store.redis.delete(store.keys.job(job_id))  # what expiry does
    assert not store.write_progress(job_id, 1, {"step": 3})
    assert not store.redis.exists(store.keys.job(job_id))


def test_everything_a_finished_job_leaves_has_a_ttl(store):
    job_id = new_job(store)
    store.start(job_id, 1, "w")
    store.save_preview(job_id, 0, b"png")
    store.write_progress(job_id, 1, {}, checkpoint={"index": 0})
    assert store.redis.type(store.keys.checkpoints(job_id)) == b"list"  # appended, never rewritten
    final = store.finish(
        job_id, 1, JobStatus.SUCCEEDED, result_png=b"result", fields={"early_exit": True, "steps_run": 7}
    )
    assert final.status == "succeeded" and final.early_exit is True and final.steps_run == 7
    assert final.checkpoints == ({"index": 0},)
    assert store.result(job_id) == b"result"
    keys = list(store.redis.scan_iter(f"{store.settings.key_prefix}:job:{job_id}*"))
    assert keys and not store.redis.exists(store.keys.input(job_id))
    for key in keys:
        assert 0 < store.redis.ttl(key) <= 600, key
    assert job_id.encode() not in store.redis.smembers(store.keys.processing)
    completed = json.loads(store.redis.xrange(store.keys.events(job_id))[-1][1][b"data"])
    assert completed["status"] == "succeeded" and completed["id"] == job_id


def test_expired_idempotent_job_frees_its_key(store):
    first, _ = store.submit(image=b"x", filename=None, width=1, height=1, params={}, idempotency_key="k")
    store.redis.delete(store.keys.job(first.id))  # the job expired before the key did
    second, created = store.submit(image=b"x", filename=None, width=1, height=1, params={}, idempotency_key="k")
    assert created and second.id != first.id
