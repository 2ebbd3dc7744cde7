"""The job function in-process (no RQ, no subprocess) with a real tiny Restorer and real Redis:
the outcomes that are hard to provoke from outside (timeout, corrupt input, shutdown-cancel)."""

from __future__ import annotations

import pytest
from conftest import image_bytes

from jobs.queue import rq_id
from jobs.settings import Settings
from jobs.store import JobStore
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
    return rt.store.submit(
        image=image_bytes(size), filename=None, width=size[0], height=size[1], params={"preset": "fast", **params}
    )[0].id


def outcome(rt: tasks.Runtime, outcome: str) -> float:
    return rt.metrics.registry.get_sample_value(
        "restore_jobs_completed_total", {"outcome": outcome, "early_exit": "false"}
    )


def test_job_timeout_fails_with_an_actionable_message(runtime):
    rt = runtime(job_timeout_s=1)
    job_id = submit(rt, SLOW)
    assert tasks.restore_job(job_id, 1)["status"] == "failed"
    job = rt.store.get(job_id)
    assert "timed out" in job.error and "UPZIR_JOB_TIMEOUT_S" in job.error
    assert job.metrics.steps_run < SLOW["steps"]
    assert outcome(rt, "failed") == 1


def test_shutdown_cancel_stops_the_job_at_its_next_step(runtime):
    rt = runtime()
    job_id = submit(rt, SLOW)
    rt.shutdown_cancel.set()
    assert tasks.restore_job(job_id, 1)["status"] == "canceled"
    assert "shut down" in rt.store.get(job_id).error
    assert outcome(rt, "canceled") == 1


def test_corrupt_stored_input_fails_the_job_not_the_worker(runtime):
    rt = runtime()
    job_id = submit(rt, {"steps": 2, "checkpoint_every": 1})
    rt.store.redis.set(rt.store.keys.input(job_id), b"\x89PNG\r\n\x1a\n broken")
    assert tasks.restore_job(job_id, 1)["status"] == "failed"
    assert "cannot be decoded" in rt.store.get(job_id).error


def test_a_canceled_or_superseded_job_is_skipped(runtime):
    rt = runtime()
    job_id = submit(rt, {"steps": 2, "checkpoint_every": 1})
    rt.store.cancel(job_id)
    assert tasks.restore_job(job_id, 1) == {"job_id": job_id, "skipped": True}
    other = submit(rt, {"steps": 2, "checkpoint_every": 1})
    assert tasks.restore_job(other, 2)["skipped"]  # an attempt number that is not the current one
    assert rt.store.get(other).status == "queued"


QUICK = {"steps": 2, "checkpoint_every": 1}


def test_queued_jobs_with_the_same_canvas_join_the_batch(runtime):
    rt = runtime(max_batch=3)
    host = submit(rt, {**QUICK, "seed": 1})
    same = [submit(rt, {**QUICK, "seed": s, "steps": 4}) for s in (2, 3)]  # other steps: still batchable
    other_canvas = submit(rt, QUICK, size=(96, 64))
    late = submit(rt, QUICK)  # no room at first: joins when the 2-step host leaves (continuous batching)
    assert tasks.restore_job(host, 1)["status"] == "succeeded"
    jobs = {job_id: rt.store.get(job_id) for job_id in [host, *same, late]}
    assert all(job.status == "succeeded" for job in jobs.values()), jobs
    assert jobs[late].started_at >= jobs[host].completed_at
    assert all(jobs[j].started_at < jobs[host].completed_at for j in same)
    assert rt.store.get(other_canvas).status == "queued"
    # joiners' RQ entries were dropped (the host's own is RQ's to take; nothing dequeued it here)
    assert rt.store.queue.get_job_ids() == [rq_id(host, 1), rq_id(other_canvas, 1)]
    assert outcome(rt, "succeeded") == 4
    assert rt.metrics.registry.get_sample_value("restore_worker_batch_size") == 0


def test_a_claimed_job_is_skipped_by_a_worker_that_dequeues_it_anyway(runtime):
    rt = runtime(max_batch=2)
    host, joiner = submit(rt, QUICK), submit(rt, QUICK)
    tasks.restore_job(host, 1)
    assert rt.store.get(joiner).status == "succeeded"
    assert tasks.restore_job(joiner, 1) == {"job_id": joiner, "skipped": True}


def test_max_batch_one_runs_only_the_host(runtime):
    rt = runtime(max_batch=1)
    host, waiting = submit(rt, QUICK), submit(rt, QUICK)
    tasks.restore_job(host, 1)
    assert rt.store.get(waiting).status == "queued"


def test_a_job_that_cannot_fit_fails_with_what_would(runtime):
    # 1 MiB at 256 B/px: a 64x64 canvas (1 MiB) fits alone, a 96x96 one does not, two 64x64 do not batch
    rt = runtime(memory_budget_mb=1, job_bytes_per_pixel=256.0, max_batch=4)
    too_big = submit(rt, QUICK, size=(96, 96))
    assert tasks.restore_job(too_big, 1)["status"] == "failed"
    error = rt.store.get(too_big).error
    assert "does not fit" in error and "96x96" in error and "max_pixels ≤ 4096" in error
    host, waiting = submit(rt, QUICK), submit(rt, QUICK)
    assert tasks.restore_job(host, 1)["status"] == "succeeded"
    assert rt.store.get(waiting).status == "queued"  # memory, not room, kept it out


def test_a_joiner_extends_the_rq_backstop_to_its_own_deadline():
    import signal

    handler, outer = signal.getsignal(signal.SIGALRM), signal.alarm(0)  # pytest-timeout may have one armed
    signal.signal(signal.SIGALRM, lambda *_: None)
    try:
        tasks.extend_backstop(5)  # nothing armed: nothing armed after
        assert signal.alarm(0) == 0
        signal.alarm(10)
        tasks.extend_backstop(500)
        assert signal.alarm(0) > 400
        signal.alarm(900)
        tasks.extend_backstop(5)  # never shortens it
        assert signal.alarm(0) > 800
    finally:
        signal.signal(signal.SIGALRM, handler)
        signal.alarm(outer)
