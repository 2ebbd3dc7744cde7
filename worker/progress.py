"""Progress writer: turns the sampler's step ticks and DQR checkpoints into job progress, events and previews.

Progress is best effort: a Redis blip loses a progress line, never the job. A write that finds the job is
no longer ours (reaped, re-queued, expired) sets `lost`, and the job stops at its next step.
"""

from __future__ import annotations

import io
import logging
import time
from typing import Any

from PIL import Image
from redis.exceptions import RedisError

from jobs.record import EventType, iso
from jobs.settings import Settings
from jobs.store import JobStore

from .metrics import WorkerMetrics

log = logging.getLogger("upzir.progress")


def preview_png(estimate: Any, max_side: int) -> bytes:
    """(1, 3, H, W) tensor in [0, 1] → PNG bytes with the longest side ≤ max_side."""
    arr = (estimate[0].detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    img = Image.fromarray(arr, "RGB")
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=False)
    return out.getvalue()


class ProgressWriter:
    def __init__(self, store: JobStore, job_id: str, attempt: int, metrics: WorkerMetrics, settings: Settings) -> None:
        self.store = store
        self.job_id = job_id
        self.attempt = attempt
        self.metrics = metrics
        self.settings = settings
        self.checkpoints: list[dict[str, Any]] = []
        self.last_score: float | None = None
        self.lost = False
        self._warned = False

    def _write(
        self,
        fields: dict[str, Any],
        event: tuple[EventType, dict[str, Any]] | None = None,
        checkpoint: dict[str, Any] | None = None,
    ) -> None:
        try:
            if not self.store.write_progress(self.job_id, self.attempt, fields, event, checkpoint):
                self.lost = True
        except RedisError as exc:
            if not self._warned:
                log.warning("job %s: progress not written (%s); the job goes on", self.job_id, exc)
                self._warned = True

    def on_step(self, ev: Any) -> None:
        """Each sampler step: position only (cheap; no event)."""
        self._write({"round": ev.round, "step": ev.step, "total_steps": ev.total_steps, "steps_run": ev.steps_run})

    def on_checkpoint(self, cp: Any) -> None:
        """A DQR checkpoint: preview, progress, a `checkpoint` event and the decision metric."""
        n = len(self.checkpoints)
        self.metrics.dqr_decisions.labels(decision=cp.decision.value).inc()
        entry: dict[str, Any] = {"index": n, **cp.to_dict(), "preview_url": None}
        if cp.estimate is not None:
            try:
                self.store.save_preview(self.job_id, n, preview_png(cp.estimate, self.settings.preview_max_side))
                entry["preview_url"] = self.store.preview_url(self.job_id, n)
            except RedisError as exc:
                log.warning("job %s: preview %d not stored (%s)", self.job_id, n, exc)
        self.checkpoints.append(entry)
        self.last_score = cp.score
        self._write(
            {
                "round": cp.round,
                "step": cp.step,
                "total_steps": cp.total_steps,
                "steps_run": cp.steps_run,
                "last_score": cp.score,
            },
            (EventType.CHECKPOINT, {**entry, "at": iso(time.time())}),
            checkpoint=entry,
        )

    def cancel_requested(self) -> bool:
        try:
            return self.store.cancel_requested(self.job_id)
        except RedisError:
            return False
