"""The UP-ZeroIR sampling loop: guided DDIM (η=0) with PCDM, DegLoss and DQR (ALGORITHM.md §3, §7).

Per step: predict ε, form ẑ0, decode x̂0 with grad, train φ once, take the guidance gradient through the
decoder, DDIM step + g. Every Δ steps the judge scores x̂0 and DQR decides exit / refine / re-noise.
Callbacks: `on_step(StepEvent)` each step and `on_checkpoint(Checkpoint)` each checkpoint; `should_cancel()`
is polled every step.

One restoration is a `SamplerRun` (its latent, schedule position, φ, DQR state). `BatchSampler.step` advances
every active run by one step, sharing the UNet call and the decoder pass (with its backward) among runs of
the same latent shape, while everything per-image (φ, its optimiser, J, the RMS cap, DQR, seeds) stays per
run — so a run's result does not depend on who it was batched with. Runs may join between steps (continuous
batching) and leave when they finish, fail or are canceled; one image is a batch of one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .config import RestoreConfig
from .dqr import DQRPolicy
from .errors import RestoreCanceled
from .events import Checkpoint, Decision, StepEvent
from .guidance import DegradationGuidance
from .judge import QualityJudge
from .prior import Prior

StepCallback = Callable[[StepEvent], None]
CheckpointCallback = Callable[[Checkpoint], None]
CancelCheck = Callable[[], bool]

RMS_EPS = 1e-12
"""Keeps the RMS cap finite when the gradient is exactly zero."""

PHASE_PREFIX = "upzir."
"""Profiler labels of the step's parts: unet, decode, pcdm_train, guidance_loss, guidance_backward, judge."""

RENOISE_SEED_OFFSET = 7919
"""Re-noise draws use their own generator stream, offset from the seed of z_T."""


@dataclass
class SampleOutput:
    chosen: Checkpoint  # the returned estimate: best eligible score (DQR on) or the last checkpoint
    checkpoints: list[Checkpoint]
    steps_run: int
    rounds: int
    early_exit: bool


def phase(name: str) -> torch.profiler.record_function:
    """Label a part of the step for torch.profiler (benchmarks/profile_step.py); near-free when not profiling."""
    return torch.profiler.record_function(f"{PHASE_PREFIX}{name}")


def predict_z0(prior: Prior, z: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
    """ẑ0 = (z_t − √(1−ᾱ_t)·ε) / √ᾱ_t."""
    a = prior.alpha_bar(t)
    return (z - (1 - a) ** 0.5 * eps) / a**0.5


def clamp_outliers(z0: torch.Tensor, percentile: float | None) -> torch.Tensor:
    """Clamp |ẑ0| to its given percentile (clamp only; never rescale)."""
    if percentile is None or percentile >= 100:
        return z0
    bound = torch.quantile(z0.detach().abs().flatten().float(), percentile / 100.0)
    return z0.clamp(-bound, bound)


def ddim_step(prior: Prior, z0: torch.Tensor, eps: torch.Tensor, t_prev: int) -> torch.Tensor:
    """Deterministic DDIM (η=0): z_{t−1} = √ᾱ_prev·ẑ0 + √(1−ᾱ_prev)·ε."""
    a = prior.alpha_bar(t_prev)
    return a**0.5 * z0 + (1 - a) ** 0.5 * eps


def guidance_step(grad: torch.Tensor, kappa: float, rms_cap: float | None, step_fraction: float) -> torch.Tensor:
    """δ = −κ·h·N·∂J/∂ẑ0: the correction to ẑ0 for one step covering a fraction h of the diffusion time.

    Why this form (ALGORITHM.md §10, invariance): J's terms are means over pixels or latent elements, so
    ∂J/∂ẑ0 per element shrinks as 1/N with N = ẑ0's element count; N·∂J/∂ẑ0 is the per-element gradient of
    the *summed* loss, the same for the same content at any size. Guidance is a gradient flow on ẑ0 run
    alongside the denoiser, dẑ0/ds = −κ·N·∂J/∂ẑ0 per unit s of diffusion time; a DDIM step covers h = 1/steps
    of it (the schedule's spacing over T), so the total pull over any t-range is the same at 25 or 1000
    steps. The RMS cap bounds the flow's *rate* (a guard against gradient spikes), hence also invariant.
    """
    rate = -kappa * grad.shape[1:].numel() * grad
    if rms_cap is not None:
        rms = rate.pow(2).mean().sqrt()
        rate = rate * torch.clamp(rms_cap / (rms + RMS_EPS), max=1.0)
    return step_fraction * rate


def renoise(prior: Prior, z0: torch.Tensor, t: int, generator: torch.Generator) -> torch.Tensor:
    """z_t' = √ᾱ_t'·ẑ0 + √(1−ᾱ_t')·ε: start a new posterior-sampling round from the current estimate."""
    a = prior.alpha_bar(t)
    noise = torch.randn(z0.shape, generator=generator, dtype=torch.float32).to(z0.device)
    return a**0.5 * z0 + (1 - a) ** 0.5 * noise


class SamplerRun:
    """The sampling state of one restoration, advanced one step at a time by a `BatchSampler`."""

    def __init__(
        self,
        prior: Prior,
        guidance: DegradationGuidance,
        judge: QualityJudge,
        cfg: RestoreConfig,
        crop: Callable[[torch.Tensor], torch.Tensor],
        on_step: StepCallback | None = None,
        on_checkpoint: CheckpointCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> None:
        self.prior, self.guidance, self.judge, self.cfg, self.crop = prior, guidance, judge, cfg, crop
        self.on_step, self.on_checkpoint, self.should_cancel = on_step, on_checkpoint, should_cancel
        self.start = time.perf_counter()
        self.guide_below = cfg.guidance_start_t * prior.num_train_timesteps / 1000  # warm-up: no guidance above
        self.train_below = cfg.pcdm_start_t * prior.num_train_timesteps / 1000  # φ learns only below this
        x_lq = guidance.x_lq
        h, w = x_lq.shape[-2] // prior.vae_factor, x_lq.shape[-1] // prior.vae_factor
        gen = torch.Generator().manual_seed(cfg.seed)
        self.z = torch.randn((1, prior.latent_channels, h, w), generator=gen).to(prior.device)
        self.renoise_gen = torch.Generator().manual_seed(cfg.seed + RENOISE_SEED_OFFSET)
        self.policy = DQRPolicy(
            cfg.dqr == "on", cfg.eta, cfg.max_rounds, cfg.min_guided_intervals * cfg.checkpoint_every
        )
        self.full_schedule = prior.timesteps(cfg.steps)
        self.schedule, self.i, self.round, self.steps_run, self.guided_steps = self.full_schedule, 0, 1, 0, 0
        self.checkpoints: list[Checkpoint] = []
        self.output: SampleOutput | None = None
        self.error: BaseException | None = None
        self._eps: torch.Tensor | None = None
        self._z0: torch.Tensor | None = None

    # -- state seen by the batcher ---------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.output is not None or self.error is not None

    @property
    def t(self) -> int:
        return self.schedule[self.i]

    @property
    def guided(self) -> bool:
        return self.t < self.guide_below

    @property
    def step_fraction(self) -> float:
        """h: the share of the diffusion time one step covers (uniform DDIM spacing: 1/steps)."""
        return 1.0 / self.cfg.steps

    def fail(self, exc: BaseException) -> None:
        """End this run with `exc` (raised to its caller); other runs in the batch go on."""
        self.error = exc

    def poll_cancel(self) -> None:
        try:
            if self.should_cancel is not None and self.should_cancel():
                self.fail(RestoreCanceled(self.steps_run))
        except Exception as exc:  # a broken cancel check ends this run, not the batch
            self.fail(exc)

    def result(self) -> SampleOutput:
        """The output of a finished run; re-raises what ended it otherwise (RestoreCanceled, an error)."""
        if self.error is not None:
            raise self.error
        if self.output is None:
            raise RuntimeError("the run has not finished; advance it with BatchSampler.step()")
        return self.output

    # -- one step, in three parts around the shared UNet call and decoder pass --------------------
    def begin(self, eps: torch.Tensor) -> torch.Tensor:
        """Step 1 after the UNet: ẑ0 from z_t and ε, latent outliers clamped."""
        self._eps = eps
        self._z0 = clamp_outliers(predict_z0(self.prior, self.z, eps, self.t), self.cfg.clamp_percentile)
        return self._z0

    def objective(self, x0: torch.Tensor) -> torch.Tensor | None:
        """Step 3: one PCDM update on detached x̂0; then J on x̂0 (graph back to ẑ0) when guidance acts.

        With `pcdm_fused` on a guided step, only J: φ's update then comes from the shared backward.
        """
        iters = self.guidance.schedule_updates(self.step_fraction) if self.t < self.train_below else 0
        if self.fused:
            with phase("guidance_loss"):
                return self.guidance.fused_loss(x0, self.t, update_phi=iters > 0)
        with phase("pcdm_train"):
            for _ in range(iters):
                self.guidance.train_step(x0)
        if not self.guided:
            return None
        with phase("guidance_loss"):
            return self.guidance.guidance_loss(x0, self.t)

    @property
    def fused(self) -> bool:
        """φ trains from the guidance backward this step (guided steps with `pcdm_fused`)."""
        return self.cfg.pcdm_fused and self.guided

    def finish(self, x0: torch.Tensor, grad: torch.Tensor | None) -> None:
        """Steps 4–5: z_{t−1} = DDIM(z_t, ε) + g; then the step callback and, every Δ, a DQR checkpoint."""
        cfg, t = self.cfg, self.t
        t_prev = self.schedule[self.i + 1] if self.i + 1 < len(self.schedule) else -1
        z0 = self._z0.detach()
        if grad is not None:  # the correction moves ẑ0; DDIM carries it into z_{t−1} with √ᾱ_{t−1}
            z0 = z0 + guidance_step(grad, cfg.kappa, cfg.guidance_rms_cap, self.step_fraction)
            self.guided_steps += 1
        self.z = ddim_step(self.prior, z0, self._eps, t_prev).detach()
        self.steps_run += 1
        self.i += 1
        if self.on_step is not None:
            self.on_step(StepEvent(self.round, self.i, len(self.schedule), self.steps_run, t, self._elapsed()))
        round_end = self.i == len(self.schedule)
        if self.i % cfg.checkpoint_every and not round_end:
            return
        decision = self._checkpoint(x0, t, round_end)
        if decision is Decision.EXIT:
            self.output = SampleOutput(
                self.checkpoints[self.policy.best_index], self.checkpoints, self.steps_run, self.round, not round_end
            )
        elif decision is Decision.RENOISE:
            self._renoise()
        elif round_end:
            chosen = self.checkpoints[self.policy.best_index] if self.policy.enabled else self.checkpoints[-1]
            self.output = SampleOutput(chosen, self.checkpoints, self.steps_run, self.round, False)

    def _checkpoint(self, x0: torch.Tensor, t: int, round_end: bool) -> Decision:
        """The judge scores x̂0; DQR decides exit / refine / re-noise."""
        estimate = self.crop(x0.detach().clamp(0, 1))
        with phase("judge"):
            score, raw = self.judge.score(estimate)
        decision = self.policy.decide(score, round_end=round_end, round=self.round, guided_steps=self.guided_steps)
        cp = Checkpoint(
            self.round,
            self.i,
            len(self.schedule),
            self.steps_run,
            t,
            score,
            raw,
            decision,
            self._elapsed(),
            estimate.cpu(),
        )
        self.checkpoints.append(cp)
        if self.on_checkpoint is not None:
            self.on_checkpoint(cp)
        return decision

    def _renoise(self) -> None:
        """A new round from the last ẑ0, started at the schedule's first t ≤ strength·T."""
        t_restart = round(self.cfg.renoise_strength * self.prior.num_train_timesteps)
        self.schedule = [t for t in self.full_schedule if t <= t_restart] or self.full_schedule[-1:]
        self.z = renoise(self.prior, self._z0.detach(), self.schedule[0], self.renoise_gen)
        self.i, self.guided_steps = 0, 0
        self.round += 1
        self.policy.new_round()

    def _elapsed(self) -> float:
        return time.perf_counter() - self.start


class BatchSampler:
    """Advances many `SamplerRun`s together; runs of one latent shape share UNet and decoder calls."""

    def __init__(self, prior: Prior, max_batch: int = 1) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be ≥ 1, got {max_batch}")
        self.prior, self.max_batch = prior, max_batch
        self.runs: list[SamplerRun] = []

    def add(self, run: SamplerRun) -> None:
        """Join between steps; the run's next step is batched with the others."""
        self.runs.append(run)

    @property
    def active(self) -> int:
        return len(self.runs)

    def step(self) -> list[SamplerRun]:
        """One step for every active run; returns the runs that ended in it (finished, failed or canceled)."""
        for run in self.runs:
            run.poll_cancel()
        for group in self._groups([r for r in self.runs if not r.done]):
            try:
                self._step_group(group)
            except Exception as exc:  # a shared call failed (e.g. out of memory): every run in it fails
                for run in group:
                    if not run.done:
                        run.fail(exc)
        ended = [r for r in self.runs if r.done]
        self.runs = [r for r in self.runs if not r.done]
        return ended

    def run_until_done(self) -> None:
        while self.runs:
            self.step()

    def _groups(self, runs: list[SamplerRun]) -> Iterator[list[SamplerRun]]:
        by_shape: dict[tuple[int, ...], list[SamplerRun]] = {}
        for run in runs:
            by_shape.setdefault(tuple(run.z.shape), []).append(run)
        for same in by_shape.values():
            for k in range(0, len(same), self.max_batch):
                yield same[k : k + self.max_batch]

    def _step_group(self, group: list[SamplerRun]) -> None:
        # 1. ε = UNet(z_t, t, c) for the whole group (each run at its own t)
        with phase("unet"):
            eps = self.prior.predict_noise(torch.cat([r.z for r in group]), [r.t for r in group])
        z0 = [r.begin(e) for r, e in zip(group, eps.split(1))]
        # 2–5 per sub-batch: guided runs decode with grad (one backward for all), the others without
        flags = [r.guided for r in group]  # fixed before any run advances
        for guided in (True, False):
            idx = [k for k, flag in enumerate(flags) if flag is guided]
            if idx:
                self._decode_and_finish([group[k] for k in idx], torch.cat([z0[k] for k in idx]), guided)

    @staticmethod
    def _decode_and_finish(runs: list[SamplerRun], z0: torch.Tensor, guided: bool) -> None:
        z0 = z0.detach().requires_grad_(guided)
        with torch.set_grad_enabled(guided), phase("decode"):
            x0 = runs[0].prior.decode(z0)
        objectives: dict[int, torch.Tensor] = {}
        for k, run in enumerate(runs):
            try:
                loss = run.objective(x0[k : k + 1])  # φ trains with autograd on, whether or not guidance acts
                if loss is not None:
                    objectives[k] = loss
            except Exception as exc:  # this image's terms failed: only this run ends
                run.fail(exc)
        grads = None
        if objectives:  # J of each run depends only on its own slice: one backward gives every ∂J_k/∂ẑ0_k
            fused = [runs[k] for k in objectives if runs[k].fused]
            phi_params = [p for run in fused for p in run.guidance.phi_params]
            with phase("guidance_backward"):
                grads, *phi_grads = torch.autograd.grad(
                    torch.stack(list(objectives.values())).sum(), [z0, *phi_params], allow_unused=True
                )
            with phase("pcdm_train"):
                for run in fused:  # pcdm_fused: the same backward gave ∂J/∂φ
                    n = len(run.guidance.phi_params)
                    run.guidance.apply_phi_grads(tuple(phi_grads[:n]))
                    phi_grads = phi_grads[n:]
        for k, run in enumerate(runs):
            if run.done:
                continue
            try:
                run.finish(x0[k : k + 1].detach(), grads[k : k + 1] if k in objectives else None)
            except Exception as exc:  # judge or callback failed: only this run ends
                run.fail(exc)
