"""`Restorer`: the library's front door. Loads the prior, judge and perceptual net once; restores images.

Callers (CLI, worker) hold one `Restorer` and call `restore()` per image; nothing here knows about HTTP or
queues.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from . import denoise, haze, images, tone
from .config import RestoreConfig, resolve_config
from .denoise import noise_sigma
from .detail import restore_detail, restore_detail_wavelet
from .errors import ConfigError
from .events import RestoreResult
from .guidance import DegradationGuidance
from .judge import QualityJudge, load_judge
from .losses import PerceptualLoss, load_perceptual
from .prior import DEFAULT_MODEL, Dtype, Prior, load_prior
from .sampler import BatchSampler, CancelCheck, CheckpointCallback, SamplerRun, StepCallback


class Restorer:
    """A loaded prior + quality judge(s) + optional perceptual net, ready to restore many images."""

    def __init__(self, prior: Prior, judge: QualityJudge, perceptual: PerceptualLoss | None) -> None:
        self.prior = prior
        self.perceptual = perceptual
        self.judge = judge
        self._judges: dict[str, QualityJudge] = {judge.name: judge}

    @classmethod
    def load(
        cls,
        model: str = DEFAULT_MODEL,
        device: str | None = "auto",
        dtype: Dtype = "fp32",
        judge: str = "auto",
        perceptual: str = "auto",
    ) -> Restorer:
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

    def prepare(
        self,
        image: Image.Image,
        config: RestoreConfig | None = None,
        *,
        on_checkpoint: CheckpointCallback | None = None,
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> PreparedRestore:
        """Set up one restoration (geometry, x_lq, φ, z_T) for a `BatchSampler`; nothing is sampled yet."""
        cfg = config or resolve_config()
        if cfg.perceptual == "on" and self.perceptual is None:
            raise ConfigError("perceptual=on but VGG16 weights were not loaded (see the worker log)")
        perceptual = None if cfg.perceptual == "off" else self.perceptual
        judge = self.judge_for(cfg.judge)
        start = time.perf_counter()
        image = images.upright(image)
        geom = self.canvas(image.size, cfg)
        x_lq = images.prepare(image, geom).to(self.prior.device)
        pre = correct_before_sampling(x_lq, cfg)
        guidance = DegradationGuidance(self.prior, pre.image, cfg, perceptual)
        run = SamplerRun(self.prior, guidance, judge, cfg, geom.crop, on_step, on_checkpoint, should_cancel)
        return PreparedRestore(run, geom, guidance, judge.name, cfg, start, pre)

    def canvas(self, size: tuple[int, int], config: RestoreConfig) -> images.Geometry:
        """Where an image of `size` is sampled: jobs with the same padded canvas can share a batch."""
        return images.plan_geometry(size, config.max_pixels, self.prior.pad_multiple)

    def batch(self, max_batch: int) -> BatchSampler:
        """A batcher over this prior: `add(prepared.run)`, `step()`, then `prepared.result()` per job."""
        return BatchSampler(self.prior, max_batch)

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
        return self.restore_many(
            [(image, config)], on_checkpoint=on_checkpoint, on_step=on_step, should_cancel=should_cancel
        )[0].unwrap()

    def restore_many(
        self,
        jobs: list[tuple[Image.Image, RestoreConfig | None]],
        max_batch: int | None = None,
        *,
        on_checkpoint: CheckpointCallback | None = None,
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> list[Outcome]:
        """Restore several images in shared batches (all at once by default); one outcome per job, in order.

        A failure or cancel ends only its own job. Callbacks, when given, are shared by every job.
        """
        reset_peak_memory(self.prior.device)
        slots: list[PreparedRestore | Outcome] = []
        for img, cfg in jobs:
            try:
                slots.append(
                    self.prepare(img, cfg, on_checkpoint=on_checkpoint, on_step=on_step, should_cancel=should_cancel)
                )
            except Exception as exc:  # bad config or image: this job's outcome, the others still run
                slots.append(Outcome(None, exc))
        batch = self.batch(max_batch or max(1, len(jobs)))
        for slot in slots:
            if isinstance(slot, PreparedRestore):
                batch.add(slot.run)
        batch.run_until_done()
        return [Outcome.of(s) if isinstance(s, PreparedRestore) else s for s in slots]


@dataclass(frozen=True)
class Corrected:
    """The sampler's target after the gated corrections, and what each did (for the result's report)."""

    image: torch.Tensor
    tone_gamma: float = 1.0  # the exposure curve x ↦ ((x − b)/(w − b))^γ: its γ ...
    tone_white: float | None = None  # ... and its white w (None: not under-exposed, neither denoising nor curve ran)
    dehaze_transmission: float | None = None  # mean t of the dehaze step (None: the haze gate did not flag the input)


def correct_before_sampling(x_lq: torch.Tensor, cfg: RestoreConfig) -> Corrected:
    """Undo what a global or smooth correction can, each step gated by the input's own statistics (a well-exposed,
    clear photo passes untouched): under-exposed → denoise, then the exposure curve; hazy → dark-channel dehaze."""
    gamma, white, transmission = 1.0, None, None
    if cfg.tone == "curve" and float(x_lq.mean()) < cfg.exposure_gate:
        # clipped sensor noise lifts the blacks by ~σ/√(2π): take that floor off before the curve
        black = min(cfg.tone_black * float(noise_sigma(x_lq).mean()), float(x_lq.mean()) / 2)
        if cfg.dark_denoise == "wavelet":  # before the curve, whose slope would amplify the noise
            x_lq = denoise.shrink_noise(x_lq, cfg.dark_denoise_shifts, cfg.dark_denoise_wavelet)
        white = tone.white_level(x_lq, cfg.tone_white_percentile, black, cfg.exposure_level)
        gamma = tone.exposure_gamma(
            tone.correct_exposure(x_lq, 1.0, black, white), cfg.exposure_level, cfg.tone_gamma_min
        )
        x_lq = tone.correct_exposure(x_lq, gamma, black, white)
    if cfg.dehaze == "auto" and haze.haze_stats(x_lq, cfg.dehaze_gate_patch).hazy(
        cfg.dehaze_gate_dark, cfg.dehaze_gate_saturation
    ):
        x_lq, transmission = haze.dehaze(
            x_lq, cfg.dehaze_omega, cfg.dehaze_patch, cfg.dehaze_refine, cfg.dehaze_t_min, cfg.dehaze_top_share
        )
    return Corrected(x_lq, gamma, white, transmission)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> int | None:
    """Peak allocated bytes on a CUDA device since the last reset (the process's, batch members share it)."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


@dataclass
class PreparedRestore:
    """One restoration set up for sampling: its `SamplerRun` plus what turns the run's output into a result."""

    run: SamplerRun
    geom: images.Geometry
    guidance: DegradationGuidance
    judge: str
    cfg: RestoreConfig
    start: float
    corrected: Corrected  # what the gated corrections before sampling did (its image is guidance.x_lq)

    def result(self) -> RestoreResult:
        """The finished job's result; raises what ended the run otherwise (RestoreCanceled, an error)."""
        out = self.run.result()
        return RestoreResult(
            image=images.finish(self.final_estimate(out.chosen.estimate), self.geom),
            steps_run=out.steps_run,
            rounds=out.rounds,
            early_exit=out.early_exit,
            final_score=out.chosen.score,
            judge=self.judge,
            terms=self.guidance.active_terms,
            checkpoints=out.checkpoints,
            seconds=time.perf_counter() - self.start,
            config=self.cfg.model_dump(),
            input_size=self.geom.input_size,
            sampled_size=self.geom.sampled_size,
            peak_memory_bytes=peak_memory(self.run.prior.device),
            chosen_checkpoint=next(i for i, c in enumerate(out.checkpoints) if c is out.chosen),
            tone_gamma=self.corrected.tone_gamma,
            tone_white=self.corrected.tone_white,
            dehaze_transmission=self.corrected.dehaze_transmission,
        )

    def final_estimate(self, estimate: torch.Tensor) -> torch.Tensor:
        """The chosen x̂0 (cropped, CPU), with what the autoencoder lost given back (restorer/detail.py)."""
        if self.cfg.detail == "off" or self.guidance.tone_on or self.corrected.tone_white is not None:
            # where φ darkens, r lives in the dark domain and its tone mismatch, mapped back through φ's small
            # slope, was amplified: measured on 2 low-light tuning crops 10.28 → 4.34 dB. After the exposure curve
            # the target's leftover noise is amplified most in the shadows, where one blind σ cannot tell it from
            # detail: turned on there, the step raised the means (6 dark tuning crops, low light 20.41 → 22.08 dB)
            # but gave the noise back as colour speckle on some photos (kodim05 low light 16.26 → 15.83 dB, in the
            # picture a speckled field). Kept for inputs that no curve touched.
            return estimate
        with torch.no_grad():
            predicted = self.guidance.degrade(estimate.to(self.guidance.x_lq.device)).cpu()
        # The sampler's target x_lq (dehazed, if the gate flagged the input) is the domain φ maps x̂0 into and where
        # the shrinkage measures the residual's noise.
        x_lq = self.geom.crop(self.guidance.x_lq).cpu()
        if self.cfg.detail == "wiener":
            return restore_detail(estimate, x_lq, predicted, self.cfg.detail_window)
        return restore_detail_wavelet(estimate, x_lq, predicted, self.cfg.detail_shifts)


@dataclass
class Outcome:
    """A job's result or the exception that ended it."""

    result: RestoreResult | None
    error: BaseException | None

    @classmethod
    def of(cls, prepared: PreparedRestore) -> Outcome:
        try:
            return cls(prepared.result(), None)
        except Exception as exc:
            return cls(None, exc)

    def unwrap(self) -> RestoreResult:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result
