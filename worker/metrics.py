"""Worker metrics (names are contracts, see SERVICE.md), served on the worker's own port.

Labels are bounded enums only (outcome, early_exit, decision); never a job id or file name.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from jobs.record import TERMINAL
from restorer.events import Decision

DURATION_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 180.0, 300.0, 450.0, 600.0, 900.0)
"""1 s (a fast preset on a small image) to 900 s (the paper preset on a large one), roughly log-spaced."""

STEP_BUCKETS = (5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 3000)
"""Steps actually run: early exits cut a schedule short, re-noise rounds extend it up to rounds × steps."""

SCORE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))
"""Normalised judge scores live in [0, 1]; tenths are what a dashboard can show."""

OUTCOMES = tuple(sorted(s.value for s in TERMINAL))
DECISIONS = tuple(d.value for d in Decision)
"""Label values derived from the enums, so the worker exposes every series from its first scrape."""


class WorkerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.job_duration = Histogram(
            "restore_job_duration_seconds",
            "Run time of a job, by outcome.",
            ["outcome"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "restore_job_queue_wait_seconds", "Time from submit to start.", buckets=DURATION_BUCKETS, registry=r
        )
        self.jobs_completed = Counter(
            "restore_jobs_completed_total",
            "Jobs ended, by outcome and whether DQR exited early.",
            ["outcome", "early_exit"],
            registry=r,
        )
        self.dqr_decisions = Counter(
            "restore_dqr_decisions_total", "DQR checkpoint decisions.", ["decision"], registry=r
        )
        self.sampler_steps = Histogram(
            "restore_sampler_steps", "Sampler steps run per succeeded job.", buckets=STEP_BUCKETS, registry=r
        )
        self.quality_score = Histogram(
            "restore_quality_score",
            "Final normalised judge score per succeeded job.",
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.model_load_seconds = Gauge(
            "restore_model_load_seconds", "Time this worker took to load prior and judge.", registry=r
        )
        self.gpu_memory_peak_bytes = Gauge(
            "restore_gpu_memory_peak_bytes", "Peak accelerator memory of the last job (0 on CPU).", registry=r
        )
        self.worker_busy = Gauge("restore_worker_busy", "1 while a job runs.", registry=r)
        self.batch_size = Gauge(
            "restore_worker_batch_size", "Jobs this worker is sampling together right now.", registry=r
        )
        for outcome in OUTCOMES:
            self.job_duration.labels(outcome=outcome)
            for early in ("true", "false"):
                self.jobs_completed.labels(outcome=outcome, early_exit=early)
        for decision in DECISIONS:
            self.dqr_decisions.labels(decision=decision)

    def serve(self, port: int) -> None:
        """Expose /metrics on `port` (raises OSError when the port is taken)."""
        start_http_server(port, registry=self.registry)
