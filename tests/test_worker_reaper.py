"""The reaper against real Redis: jobs nobody holds any more (dead worker, lost final write, a ticket taken
by a worker that died before starting it) are failed or re-queued within `worker_lost_bound_s`.

A worker here is only its heartbeat key; the end-to-end test with a SIGKILLed worker process lives in
test_worker_lifecycle.py.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from urllib.parse import urlsplit

from conftest import free_port, image_bytes, wait_for

from jobs.reaper import Reaper, reap
from jobs.settings import Settings
from jobs.store import JobStore


def make(redis_url: str, **overrides) -> tuple[JobStore, Settings]:
    timing = {"heartbeat_s": 0.2, "worker_lost_after_s": 0.6, "reaper_interval_s": 0.2}
    settings = Settings(redis_url=redis_url, **{**timing, **overrides})
    return JobStore(settings), settings


def new_job(store: JobStore) -> str:
    return store.submit(image=image_bytes(), filename="a.png", width=40, height=32, params={})[0].id


def test_live_worker_keeps_its_job_dead_worker_loses_it(redis_client, redis_url):
    store, settings = make(redis_url)
    job_id = new_job(store)
    store.workers.heartbeat("w1", {}, [job_id])
    assert store.start(job_id, 1, "w1")
    assert reap(store, settings) == []
    notified = []
    reaped = wait_for(
        lambda: reap(store, settings, notify=notified.append), timeout=5, what="the heartbeat key to expire"
    )
    assert [(r.job_id, r.action) for r in reaped] == [(job_id, "failed")]
    job = store.get(job_id)
    assert job.status == "failed" and "w1" in job.error and "heartbeats" in job.error
    assert notified and notified[0].status == "failed"
    assert not store.processing_ids()
    assert store.workers.ready() == []


def test_requeue_mode_retries_then_gives_up(redis_client, redis_url):
    store, settings = make(redis_url, on_worker_lost="requeue", max_attempts=2)
    job_id = new_job(store)
    assert store.start(job_id, 1, "ghost")  # a worker that died right after taking the job
    [first] = reap(store, settings)
    assert first.action == "requeued"
    job = store.get(job_id)
    assert job.status == "queued" and job.queue_position == 0 and "re-queued" in job.error
    assert store.start(job_id, 2, "ghost-2")
    [second] = reap(store, settings)
    assert second.action == "failed"
    assert "after 2 attempts" in store.get(job_id).error


def test_overdue_job_of_a_live_worker_fails(redis_client, redis_url):
    store, settings = make(redis_url, job_timeout_s=1)
    job_id = new_job(store)
    store.workers.heartbeat("wedged", {}, [job_id])
    store.start(job_id, 1, "wedged")
    assert reap(store, settings, now=time.time() + 60) != []
    assert "UPZIR_JOB_TIMEOUT_S" in store.get(job_id).error


def test_reaper_thread_meets_the_bound(redis_client, redis_url):
    store, settings = make(redis_url)
    job_id = new_job(store)
    store.workers.heartbeat("w2", {}, [job_id])
    store.start(job_id, 1, "w2")
    died = time.monotonic()  # last heartbeat: now
    reaper = Reaper(store, settings, owner="test")
    reaper.start()
    try:
        wait_for(
            lambda: store.get(job_id).status == "failed",
            timeout=settings.worker_lost_bound_s + 2,
            what="the reaper to fail the job",
        )
    finally:
        reaper.stop(timeout=2)
    assert time.monotonic() - died <= settings.worker_lost_bound_s + 1.0


def test_a_live_worker_that_no_longer_lists_its_job_lost_it(redis_client, redis_url):
    """A final write that never landed: the worker is alive, but the job left its heartbeat's list."""
    store, settings = make(redis_url)
    job_id = new_job(store)
    store.workers.heartbeat("w3", {}, [job_id])
    store.start(job_id, 1, "w3")
    assert reap(store, settings) == []  # listed: running
    store.workers.heartbeat("w3", {}, [])  # the worker gave up storing the outcome
    assert reap(store, settings) == []  # just started: the next heartbeat may not list it yet
    [lost] = reap(store, settings, now=time.time() + settings.worker_lost_after_s)
    assert lost.action == "failed"
    assert "does not list this job as running" in store.get(job_id).error


def test_a_ticket_taken_by_a_worker_that_died_before_starting_is_requeued(redis_client, redis_url):
    """RQ moved the ticket out of the queue, the worker died before `start`: the job is queued but unheld."""
    store, settings = make(redis_url, max_attempts=2)
    job_id = new_job(store)
    assert reap(store, settings) == []  # in the queue: fine
    store.redis.lpop(store.queue.key)  # what a worker's BLMOVE does, just before it is SIGKILLed
    t0 = time.time()
    assert reap(store, settings, now=t0) == []  # first seen unheld: grace starts
    [requeued] = reap(store, settings, now=t0 + settings.worker_lost_after_s)
    assert requeued.action == "requeued" and "no worker started it" in requeued.reason
    job = store.get(job_id)
    assert job.status == "queued" and job.queue_position == 0
    store.redis.lpop(store.queue.key)  # the second worker dies the same way
    reap(store, settings, now=t0)
    [failed] = reap(store, settings, now=t0 + settings.worker_lost_after_s)
    assert failed.action == "failed" and store.get(job_id).status == "failed"
    assert "after 2 attempts" in store.get(job_id).error


def test_a_ticket_in_a_live_workers_hands_is_left_alone(redis_client, redis_url):
    store, settings = make(redis_url)
    job_id = new_job(store)
    store.redis.lpop(store.queue.key)
    store.workers.heartbeat("w4", {}, [job_id])  # it is about to start it
    assert reap(store, settings, now=time.time() + 60 * settings.worker_lost_after_s) == []
    assert store.get(job_id).status == "queued"


def test_orphaned_queued_job_is_recovered_within_the_bound(redis_client, redis_url):
    store, settings = make(redis_url)
    job_id = new_job(store)
    store.redis.lpop(store.queue.key)
    taken = time.monotonic()
    reaper = Reaper(store, settings, owner="test")
    reaper.start()
    try:
        wait_for(
            lambda: store.get(job_id).queue_position == 0,
            timeout=settings.worker_lost_bound_s + 2,
            what="the reaper to re-queue the orphan",
        )
    finally:
        reaper.stop(timeout=2)
    assert time.monotonic() - taken <= settings.worker_lost_bound_s + 1.0


def test_nobody_is_judged_until_redis_has_been_up_for_the_heartbeat_bound(spawn):
    """After a Redis restart, heartbeat keys that expired during the outage say nothing about live workers."""
    _, port = spawn.redis_server()  # fresh: its uptime starts at 0, as after a restart
    store, settings = make(f"redis://127.0.0.1:{port}/0", worker_lost_after_s=2.0, heartbeat_s=0.5)
    job_id = new_job(store)
    store.start(job_id, 1, "silent")  # a worker with no heartbeat key
    assert reap(store, settings) == []  # Redis is younger than worker_lost_after_s: wait
    wait_for(lambda: store.redis_uptime_s() >= settings.worker_lost_after_s, timeout=5, what="Redis uptime")
    [failed] = reap(store, settings)
    assert failed.action == "failed" and store.get(job_id).status == "failed"
    store.redis.close()


class Partition:
    """A TCP relay in front of the test Redis that can cut every connection and come back on the same port:
    an outage Redis itself does not notice (no restart, so its uptime says nothing)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.sockets: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        for s in [self.listener, *self.sockets]:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self.sockets = []

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)


def test_after_a_partition_nobody_is_judged_until_workers_could_beat_again(redis_client, redis_url):
    """Everyone loses Redis for longer than worker_lost_after_s, so the worker's key expires meanwhile. The
    reaper must wait worker_lost_after_s from when it reaches Redis again (not from when it first lost it), so
    the worker's first beat after the partition, up to heartbeat_s later, still counts."""
    timing = {"heartbeat_s": 1.0, "worker_lost_after_s": 2.0, "reaper_interval_s": 0.2}
    url = urlsplit(redis_url)
    relay = Partition((url.hostname, url.port))
    reaper_store, settings = make(f"redis://127.0.0.1:{relay.port}{url.path}", **timing)
    store, _ = make(redis_url, **timing)
    job_id = new_job(store)
    store.workers.heartbeat("w5", {}, [job_id])  # its last beat before the partition: the key lives 2 s
    store.start(job_id, 1, "w5")
    reaper = Reaper(reaper_store, settings, owner="test")
    reaper.start()
    try:
        time.sleep(1.0)
        relay.cut()  # the reaper's first failed pass comes within reaper_interval_s
        time.sleep(1.9)
        assert not store.redis.exists(store.keys.worker("w5"))  # expired during the partition
        relay.restore()
        time.sleep(0.9)  # the worker's next tick, just under heartbeat_s after Redis is back
        for _ in range(3):
            store.workers.heartbeat("w5", {}, [job_id])
            time.sleep(settings.heartbeat_s)
        assert store.get(job_id).status == "processing"
    finally:
        reaper.stop(timeout=2)
        relay.cut()
