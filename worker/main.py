"""`upzir worker`: load the model once, announce readiness, run jobs in-process, shut down gracefully.

Lifecycle: metrics port → `Restorer.load` (failure: one line on stderr, exit 3) → heartbeat thread marks the
worker ready → reaper thread → RQ work loop (`RestoreWorker`, in-process: no fork after CUDA init) until
SIGTERM/SIGINT. A Redis outage ends RQ's loop; we wait and start it again, the model stays loaded.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from typing import Any

import redis
from prometheus_client import disable_created_metrics
from pydantic import ValidationError
from redis.exceptions import RedisError
from rq import SimpleWorker
from rq.worker import WorkerStatus

from jobs import webhooks
from jobs.reaper import Reaper
from jobs.settings import Settings, ShutdownMode
from jobs.store import JobStore, connect

from . import tasks
from .metrics import WorkerMetrics
from .outcome import ActiveJobs

log = logging.getLogger("upzir.worker")

EXIT_CONFIG = 2
"""Exit status when the configuration is invalid (argparse's usage-error status)."""

EXIT_MODEL_LOAD = 3
"""Exit status when the model cannot be loaded (distinct from Python's 1 and argparse's 2)."""

EXIT_METRICS_PORT = 4
"""Exit status when the metrics port cannot be bound."""

REDIS_RECONNECT_MAX_WAIT_S = 10.0
"""Longest pause between reconnect attempts while Redis is down (RQ's own default is 60 s)."""


class RestoreWorker(SimpleWorker):
    """RQ's in-process worker; SIGTERM either lets the running job finish or asks it to cancel."""

    max_connection_wait_time = REDIS_RECONNECT_MAX_WAIT_S
    shutdown_mode: ShutdownMode = ShutdownMode.FINISH
    shutdown_cancel: threading.Event | None = None
    stop_event: threading.Event | None = None

    def request_stop(self, signum: int, frame: Any) -> None:
        if self.stop_event is not None:
            self.stop_event.set()
        if self.get_state() == WorkerStatus.BUSY and self.shutdown_mode == ShutdownMode.CANCEL:
            log.warning("SIGTERM: canceling the running job (UPZIR_SHUTDOWN=cancel)")
            if self.shutdown_cancel is not None:
                self.shutdown_cancel.set()
        elif self.get_state() == WorkerStatus.BUSY:
            log.warning("SIGTERM: finishing the running job, then exiting (UPZIR_SHUTDOWN=finish)")
        super().request_stop(signum, frame)


class Heartbeat(threading.Thread):
    """Renews the worker's ready/alive key every `heartbeat_s` with the jobs it holds, from its own thread
    (the sampler blocks the main one), and at once when that set changes, so the reaper never sees a running
    job missing from a live worker's list for long."""

    def __init__(
        self, store: JobStore, settings: Settings, worker_id: str, info: dict[str, Any], active: ActiveJobs
    ) -> None:
        super().__init__(name="upzir-heartbeat", daemon=True)
        self.store, self.settings, self.worker_id, self.info, self.active = store, settings, worker_id, info, active
        self._stop_event = threading.Event()
        self.beat_once()

    def beat_once(self) -> None:
        try:
            self.store.workers.heartbeat(self.worker_id, {**self.info, "at": time.time()}, self.active.snapshot())
        except RedisError as exc:
            log.warning("heartbeat not sent (Redis unavailable: %s)", exc)

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.active.changed.wait(self.settings.heartbeat_s)
            self.active.changed.clear()
            if not self._stop_event.is_set():
                self.beat_once()

    def stop(self) -> None:
        self._stop_event.set()
        self.active.changed.set()  # wake the thread now
        self.join(self.settings.redis_timeout_s * 2)
        try:
            self.store.workers.remove(self.worker_id)
        except RedisError:
            pass  # the key expires on its own


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="upzir worker", description="Run a restoration worker (one per GPU).")
    p.add_argument("--redis-url", help="UPZIR_REDIS_URL")
    p.add_argument("--queue", help="UPZIR_QUEUE")
    p.add_argument("--model", help="UPZIR_MODEL: hub id or folder of the prior")
    p.add_argument("--device", help="UPZIR_DEVICE: auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="UPZIR_DTYPE")
    p.add_argument("--judge", help="UPZIR_JUDGE: auto or a pyiqa metric name")
    p.add_argument("--metrics-port", type=int, help="UPZIR_WORKER_METRICS_PORT (0: off)")
    p.add_argument("--shutdown", choices=["finish", "cancel"], help="UPZIR_SHUTDOWN")
    p.add_argument("--name", help="worker id (default: host-pid-random)")
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    p.add_argument("--log-level", help="UPZIR_LOG_LEVEL")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `upzir worker` / `python -m worker`; returns the exit status."""
    args = parse_args(argv)
    overrides = {
        "redis_url": args.redis_url,
        "queue": args.queue,
        "model": args.model,
        "device": args.device,
        "dtype": args.dtype,
        "judge": args.judge,
        "worker_metrics_port": args.metrics_port,
        "shutdown": args.shutdown,
        "log_level": args.log_level,
    }
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        print(f"upzir worker: invalid configuration: {_one_line(exc)}", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    worker_id = args.name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    disable_created_metrics()  # `*_created` series only double the scrape size; this process is ours
    metrics = WorkerMetrics()
    if settings.worker_metrics_port:
        try:
            metrics.serve(settings.worker_metrics_port)
        except OSError as exc:
            print(f"upzir worker: cannot serve metrics on port {settings.worker_metrics_port}: {exc}", file=sys.stderr)
            return EXIT_METRICS_PORT

    from PIL import Image

    Image.MAX_IMAGE_PIXELS = settings.max_pixels
    try:
        from restorer import Restorer

        t0 = time.perf_counter()
        restorer = Restorer.load(
            model=settings.model, device=settings.device, dtype=settings.dtype, judge=settings.judge
        )
        load_s = time.perf_counter() - t0
    except Exception as exc:  # any failure here means: this worker cannot serve
        print(f"upzir worker: cannot load model {settings.model!r}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_MODEL_LOAD
    metrics.model_load_seconds.set(load_s)
    try:
        info = dict(restorer.describe())
    except Exception:  # describe() is informational only
        info = {"model": settings.model, "device": settings.device, "dtype": settings.dtype}
    info.update(worker=worker_id, pid=os.getpid(), load_s=round(load_s, 3))
    log.info("worker %s: model loaded in %.2f s: %s", worker_id, load_s, info)

    store = JobStore(settings)
    runtime = tasks.Runtime(restorer, store, settings, metrics, worker_id)
    tasks.install(runtime)
    stop_event = runtime.stopping  # SIGTERM sets it: the work loop ends and running batches admit no one
    heartbeat = Heartbeat(store, settings, worker_id, info, runtime.active)
    heartbeat.start()
    reaper = Reaper(store, settings, owner=worker_id, notify=lambda record: webhooks.notify(store, record))
    reaper.start()

    def stop_between_runs(signum: int, frame: Any) -> None:
        stop_event.set()

    rq_connection = connect(settings, socket_timeout=None)  # RQ sets its own, longer than its BLMOVE
    generation = 0
    try:
        while not stop_event.is_set():
            generation += 1
            worker = RestoreWorker(
                [settings.queue],
                connection=rq_connection,
                name=f"{worker_id}-{generation}",
                default_result_ttl=settings.result_ttl_s,
            )
            worker.shutdown_mode = settings.shutdown
            worker.shutdown_cancel = runtime.shutdown_cancel
            worker.stop_event = stop_event
            try:
                worker.work(burst=args.burst, logging_level=settings.log_level.upper(), with_scheduler=False)
            except RedisError as exc:
                log.warning("Redis unavailable (%s); restarting the work loop", exc)
            if args.burst or stop_event.is_set():
                break
            # RQ's loop ended on its own (usually a Redis outage): wait, then start a fresh one.
            signal.signal(signal.SIGTERM, stop_between_runs)
            signal.signal(signal.SIGINT, stop_between_runs)
            stop_event.wait(min(REDIS_RECONNECT_MAX_WAIT_S, settings.heartbeat_s))
    finally:
        reaper.stop(timeout=settings.redis_timeout_s * 2)
        heartbeat.stop()
        tasks.install(None)
        try:
            rq_connection.close()
            store.redis.close()
        except redis.RedisError:
            pass
    log.info("worker %s: stopped", worker_id)
    return 0
