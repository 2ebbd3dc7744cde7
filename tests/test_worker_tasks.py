"""The job function in-process (no RQ, no subprocess) with a real tiny Restorer and real Redis:
the outcomes that are hard to provoke from outside (timeout, corrupt input, shutdown-cancel)."""

from __future__ import annotations

import pytest

from conftest import image_bytes
from service.jobs import JobStore
from service.settings import Settings
from worker import tasks
from worker.metrics import WorkerMetrics

SLOW = {"steps": 500, "checkpoint_every": 250, "dqr": "off", "seed": 2}


@pytest.fixture(scope="module")
def restorer(tiny_ldm_dir):
    from restorer import Restorer

    return Restorer.load(model=str(tiny_ldm_dir), device="cpu", judge="piqe")


@pytest.fixture
def runtime(restorer, redis_client, redis_url):
    def make(**overrides) -> tasks.Runtime:
        settings = Settings(redis_url=redis_url, **overrides)
        rt = tasks.Runtime(restorer, JobStore(settings), settings, WorkerMetrics(), "in-process")
        tasks.install(rt)
        return rt

    yield make
    tasks.install(None)


def submit(rt: tasks.Runtime, params: dict, size=(64, 64)) -> str:
    return rt.store.submit(image=image_bytes(size), filename=None, width=size[0], height=size[1],
                           params={"preset": "fast", **params})[0]["id"]


def outcome(rt: tasks.Runtime, outcome: str) -> float:
    return rt.metrics.registry.get_sample_value("restore_jobs_completed_total",
                                                {"outcome": outcome, "early_exit": "false"})


def test_job_timeout_fails_with_an_actionable_message(runtime):
    rt = runtime(job_timeout_s=1)
    job_id = submit(rt, SLOW)
    assert tasks.restore_job(job_id, 1)["status"] == "failed"
    job = rt.store.get(job_id)
    assert "timed out" in job["error"] and "UPZIR_JOB_TIMEOUT_S" in job["error"]
    assert job["metrics"]["steps_run"] < SLOW["steps"]
    assert outcome(rt, "failed") == 1


def test_shutdown_cancel_stops_the_job_at_its_next_step(runtime):
    rt = runtime()
    job_id = submit(rt, SLOW)
    rt.shutdown_cancel.set()
    assert tasks.restore_job(job_id, 1)["status"] == "canceled"
    assert "shut down" in rt.store.get(job_id)["error"]
    assert outcome(rt, "canceled") == 1


def test_corrupt_stored_input_fails_the_job_not_the_worker(runtime):
    rt = runtime()
    job_id = submit(rt, {"steps": 2, "checkpoint_every": 1})
    rt.store.redis.set(rt.store.keys.input(job_id), b"\x89PNG\r\n\x1a\n broken")
    assert tasks.restore_job(job_id, 1)["status"] == "failed"
    assert "cannot be decoded" in rt.store.get(job_id)["error"]


def test_a_canceled_or_superseded_job_is_skipped(runtime):
    rt = runtime()
    job_id = submit(rt, {"steps": 2, "checkpoint_every": 1})
    rt.store.cancel(job_id)
    assert tasks.restore_job(job_id, 1) == {"job_id": job_id, "skipped": True}
    other = submit(rt, {"steps": 2, "checkpoint_every": 1})
    assert tasks.restore_job(other, 2)["skipped"]  # an attempt number that is not the current one
    assert rt.store.get(other)["status"] == "queued"
