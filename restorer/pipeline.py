"""`Restorer`: the library's front door. Loads the prior, judge and perceptual net once; restores images.

Callers (CLI, worker) hold one `Restorer` and call `restore()` per image; nothing here knows about HTTP or
queues.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from PIL import Image

from . import images
from .config import RestoreConfig, resolve_config
from .errors import ConfigError
from .events import RestoreResult
from .guidance import DegradationGuidance
from .judge import QualityJudge, load_judge
from .losses import PerceptualLoss, load_perceptual
from .prior import DEFAULT_MODEL, Dtype, Prior, load_prior
from .sampler import CancelCheck, CheckpointCallback, StepCallback, sample_upzir


class Restorer:
    """A loaded prior + quality judge(s) + optional perceptual net, ready to restore many images."""

    def __init__(self, prior: Prior, judge: QualityJudge, perceptual: PerceptualLoss | None) -> None:
        self.prior = prior
        self.perceptual = perceptual
        self.judge = judge
        self._judges: dict[str, QualityJudge] = {judge.name: judge}

    @classmethod
    def load(cls, model: str = DEFAULT_MODEL, device: str | None = "auto", dtype: Dtype = "fp32",
             judge: str = "auto", perceptual: str = "auto") -> "Restorer":
        """Load everything once (the worker calls this at start, never per job)."""
        prior = load_prior(model, device, dtype)
        return cls(prior, load_judge(judge, prior.device), load_perceptual(perceptual, prior.device))

    def judge_for(self, spec: str) -> QualityJudge:
        """The judge a config asks for (`auto`: the one loaded at start); others load on first use and stay."""
        if spec == "auto":
            return self.judge
        if spec not in self._judges:
            self._judges[spec] = load_judge(spec, self.prior.device)
        return self._judges[spec]

    def describe(self) -> dict[str, Any]:
        return {
            **self.prior.describe(),
            "judge": self.judge.name,
            "perceptual": self.perceptual is not None,
        }

    def restore(
        self,
        image: Image.Image,
        config: RestoreConfig | None = None,
        *,
        on_checkpoint: CheckpointCallback | None = None,
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> RestoreResult:
        """Restore one image; the output has exactly the input's size. Raises RestoreCanceled on cancel."""
        cfg = config or resolve_config()
        if cfg.perceptual == "on" and self.perceptual is None:
            raise ConfigError("perceptual=on but VGG16 weights were not loaded (see the worker log)")
        perceptual = None if cfg.perceptual == "off" else self.perceptual
        judge = self.judge_for(cfg.judge)
        start = time.perf_counter()
        if self.prior.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.prior.device)

        geom = images.plan_geometry(image.size, cfg.max_pixels, self.prior.pad_multiple)
        x_lq = images.prepare(image, geom).to(self.prior.device)
        guidance = DegradationGuidance(self.prior, x_lq, cfg, perceptual)
        out = sample_upzir(self.prior, guidance, judge, cfg, geom.crop, on_step, on_checkpoint, should_cancel)

        peak = torch.cuda.max_memory_allocated(self.prior.device) if self.prior.device.type == "cuda" else None
        return RestoreResult(
            image=images.finish(out.chosen.estimate, geom),
            steps_run=out.steps_run,
            rounds=out.rounds,
            early_exit=out.early_exit,
            final_score=out.chosen.score,
            judge=judge.name,
            terms=guidance.active_terms,
            checkpoints=out.checkpoints,
            seconds=time.perf_counter() - start,
            config=cfg.model_dump(),
            input_size=geom.input_size,
            sampled_size=geom.sampled_size,
            peak_memory_bytes=peak,
        )
