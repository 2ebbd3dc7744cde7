"""The reaper against real Redis: jobs of workers whose heartbeat key expired are failed or re-queued.

A worker here is only its heartbeat key; the end-to-end test with a SIGKILLed worker process lives in
test_worker_lifecycle.py.
"""

from __future__ import annotations

import time

import pytest

from conftest import image_bytes, wait_for
from service.jobs import JobStore
from service.settings import Settings
from worker.reaper import Reaper, reap


def make(redis_url: str, **overrides) -> tuple[JobStore, Settings]:
    settings = Settings(redis_url=redis_url, heartbeat_s=0.2, worker_lost_after_s=0.6, reaper_interval_s=0.2,
                        **overrides)
    return JobStore(settings), settings


def new_job(store: JobStore) -> str:
    return store.submit(image=image_bytes(), filename="a.png", width=40, height=32, params={})[0]["id"]


def test_live_worker_keeps_its_job_dead_worker_loses_it(redis_client, redis_url):
    store, settings = make(redis_url)
    job_id = new_job(store)
    store.heartbeat_worker("w1", {})
    assert store.start(job_id, 1, "w1")
    assert reap(store, settings) == []
    notified = []
    reaped = wait_for(lambda: reap(store, settings, notify=lambda job, url: notified.append(job)),
                      timeout=5, what="the heartbeat key to expire")
    assert [(r.job_id, r.action) for r in reaped] == [(job_id, "failed")]
    job = store.get(job_id)
    assert job["status"] == "failed" and "w1" in job["error"] and "heartbeats" in job["error"]
    assert notified and notified[0]["status"] == "failed"
    assert not store.processing_ids()
    assert store.ready_workers() == []


def test_requeue_mode_retries_then_gives_up(redis_client, redis_url):
    store, settings = make(redis_url, on_worker_lost="requeue", max_attempts=2)
    job_id = new_job(store)
    assert store.start(job_id, 1, "ghost")  # a worker that died right after taking the job
    [first] = reap(store, settings)
    assert first.action == "requeued"
    job = store.get(job_id)
    assert job["status"] == "queued" and job["queue_position"] == 0 and "re-queued" in job["error"]
    assert store.start(job_id, 2, "ghost-2")
    [second] = reap(store, settings)
    assert second.action == "failed"
    assert "after 2 attempts" in store.get(job_id)["error"]


def test_overdue_job_of_a_live_worker_fails(redis_client, redis_url):
    store, settings = make(redis_url, job_timeout_s=1)
    job_id = new_job(store)
    store.heartbeat_worker("wedged", {})
    store.start(job_id, 1, "wedged")
    assert reap(store, settings, now=time.time() + 60) != []
    assert "UPZIR_JOB_TIMEOUT_S" in store.get(job_id)["error"]


def test_reaper_thread_meets_the_bound(redis_client, redis_url):
    store, settings = make(redis_url)
    job_id = new_job(store)
    store.heartbeat_worker("w2", {})
    store.start(job_id, 1, "w2")
    died = time.monotonic()  # last heartbeat: now
    reaper = Reaper(store, settings, owner="test")
    reaper.start()
    try:
        wait_for(lambda: store.get(job_id)["status"] == "failed", timeout=settings.worker_lost_bound_s + 2,
                 what="the reaper to fail the job")
    finally:
        reaper.stop(timeout=2)
    assert time.monotonic() - died <= settings.worker_lost_bound_s + 1.0
