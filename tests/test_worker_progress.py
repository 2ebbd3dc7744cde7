"""Checkpoint previews and the progress writer against real Redis."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import torch
from conftest import image_bytes
from PIL import Image

from jobs.settings import Settings
from jobs.store import JobStore
from restorer.events import Checkpoint, Decision
from worker.metrics import WorkerMetrics
from worker.progress import ProgressWriter, preview_png


def test_preview_keeps_aspect_and_caps_the_longest_side():
    estimate = torch.rand(1, 3, 300, 600)
    img = Image.open(io.BytesIO(preview_png(estimate, 256)))
    assert img.format == "PNG" and img.size == (256, 128)
    small = Image.open(io.BytesIO(preview_png(torch.rand(1, 3, 20, 30), 256)))
    assert small.size == (30, 20)  # never upscaled


def test_checkpoints_become_progress_events_previews_and_metrics(redis_client, redis_url):
    store = JobStore(Settings(redis_url=redis_url))
    job_id = store.submit(image=image_bytes(), filename=None, width=40, height=32, params={})[0].id
    store.start(job_id, 1, "w")
    metrics = WorkerMetrics()
    writer = ProgressWriter(store, job_id, 1, metrics, store.settings)
    writer.on_step(SimpleNamespace(round=1, step=1, total_steps=4, steps_run=1))
    cp = Checkpoint(
        round=1,
        step=2,
        total_steps=4,
        steps_run=2,
        t=500,
        score=0.4,
        raw_score=60.0,
        decision=Decision.REFINE,
        elapsed_s=0.1,
        estimate=torch.rand(1, 3, 32, 40),
    )
    writer.on_checkpoint(cp)
    job = store.get(job_id)
    assert job.progress.step == 2 and job.progress.last_score == 0.4
    [entry] = job.progress.checkpoints
    assert entry["decision"] == "refine" and entry["preview_url"] == f"/jobs/{job_id}/checkpoints/0/preview"
    assert Image.open(io.BytesIO(store.preview(job_id, 0))).size == (40, 32)
    last = store.redis.xrange(store.keys.events(job_id))[-1][1]
    assert last[b"event"] == b"checkpoint" and json.loads(last[b"data"])["index"] == 0
    assert metrics.registry.get_sample_value("restore_dqr_decisions_total", {"decision": "refine"}) == 1
    assert not writer.lost
    store.requeue(job_id, 1, "test")
    writer.on_step(SimpleNamespace(round=1, step=3, total_steps=4, steps_run=3))
    assert writer.lost  # the job is no longer this attempt's: the sampler will be told to stop
