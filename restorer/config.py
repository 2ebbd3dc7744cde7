"""The sampler's options (every number of ALGORITHM.md is a default here, never a constant in code) and presets.

`RestoreConfig` is one typed, serialisable object; presets are named sets of overrides on it, and any
option can be overridden on top (`resolve_config("fast", {"steps": 30})`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError

DEFAULT_PRESET = "balanced"


class RestoreConfig(BaseModel):
    """All knobs of one restoration. Field docs say why each default is what it is."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- schedule ---------------------------------------------------------------------------------
    steps: int = Field(
        25,
        ge=1,
        le=1000,
        description="DDIM steps per round (paper: 1000). Guidance and φ's learning are scaled per unit of diffusion "
        "time, so fewer steps change the discretisation, not what the settings mean.",
    )
    checkpoint_every: int = Field(
        5, ge=1, description="Δ: DQR scores x̂0 every this many steps (paper: 100 of 1000, i.e. 10%; here 20%)."
    )
    seed: int = Field(0, ge=0, description="Seeds z_T, PCDM init and re-noise draws: same seed, same output.")
    max_pixels: int = Field(
        512 * 512, ge=64 * 64, description="Larger inputs are downscaled for sampling and resized back."
    )

    # --- guidance (section 3) ---------------------------------------------------------------------
    kappa: float = Field(
        30.0,
        ge=0.0,
        description="Guidance scale κ, in units that mean the same at any step count and image size: ẑ0 moves by "
        "−κ·h·N·∂J/∂ẑ0 per step, with h = 1/steps the share of the diffusion time the step covers and N the "
        "latent element count (N·∂J/∂ẑ0 is the per-element gradient of the summed loss). Over a t-range the "
        "total pull is κ·N·∂J/∂ẑ0·(share of T), whatever the schedule (the paper's Z=4000 was a per-step "
        "scale at 1000 steps and one size).",
    )
    guidance_start_t: int = Field(
        700, ge=0, le=1000, description="Warm-up: no guidance while t ≥ this (PCDM still trains)."
    )
    q_start_t: int = Field(1000, ge=0, le=1000, description="Q (exposure, colour) acts only for t < this.")
    clamp_percentile: float | None = Field(
        99.5, gt=0.0, le=100.0, description="Clamp |ẑ0| to this percentile (None: off). Clamp only, never divide."
    )
    guidance_rms_cap: float | None = Field(
        None,
        gt=0.0,
        description="Cap on the per-element RMS of the guidance rate κ·N·∂J/∂ẑ0 (None: off, as in the paper); "
        "a step moves ẑ0 by at most h times this. A guard against gradient spikes (uncentred GGD fits at the α "
        "clamp gave RMS ≈ 50 spikes that saturated x̂0 for the rest of the run).",
    )

    # --- loss weights (section 3.4 / 6) -----------------------------------------------------------
    lambda_deg: float = Field(
        0.0,
        ge=0.0,
        description="DegLoss weight λ1 (the paper's latent GGD KL). Off by default, by measurement: at 0.01 (centred "
        "fits) it cost 2.4 dB on low light and 4.6 dB on low light + noise (2 cbsd68_even crops, 12.67 → 10.28, "
        "14.26 → 9.71) and 0.1 dB on noise, and adds an encoder pass per step; the ablation table reports it on.",
    )
    lambda_mse: float = Field(1.0, ge=0.0, description="Pixel MSE weight λ2.")
    lambda_pse: float = Field(0.1, ge=0.0, description="Perceptual (VGG16 relu2_2) weight λ3.")
    lambda_adv: float = Field(0.01, ge=0.0, description="Adversarial weight λ4.")
    tone: Literal["curve", "learned"] = Field(
        "curve",
        description="curve: an under-exposed input (mean below `exposure_gate`) is first denoised (`dark_denoise`) "
        "and mapped by x ↦ ((x − b)/(w − b))^γ with mean = E (restorer/tone.py), then sampled as a well-exposed one. "
        "learned: the paper's way — φ's tone "
        "part learns the darkening while Q's exposure term brightens x̂0; measured to invent the scene (README).",
    )
    tone_black: float = Field(
        0.2,
        ge=0.0,
        description="Black level taken off before the curve, in units of the blindly estimated noise σ: Gaussian "
        "noise clipped at 0 lifts black to ≈ σ/√(2π) ≈ 0.4σ, which the curve would turn into a grey veil. 0.2 "
        "after denoising and the white stretch (32 dark tuning crops, `benchmarks.dark_targets`: 0.4 → 18.06, 0.2 → "
        "18.41 dB).",
    )
    dark_denoise: Literal["wavelet", "off"] = Field(
        "wavelet",
        description="wavelet: an input the exposure curve brightens is first denoised by blind wavelet BayesShrink "
        "(restorer/denoise.py), so the curve does not amplify its noise into what the sampler must match. off: the "
        "curve's input is the raw image.",
    )
    dark_denoise_shifts: int = Field(
        1,
        ge=0,
        le=7,
        description="Cycle spinning of the dark-input denoiser: averages (shifts + 1)² shifted passes (0: one pass), "
        "so the basis's block edges average out; the cost grows as the square.",
    )
    dark_denoise_wavelet: Literal["db1", "sym4"] = Field(
        "sym4",
        description="The dark-input denoiser's wavelet (PyWavelets name; db1 is Haar), at the same depth either way. "
        "32 dark tuning crops, target before sampling (`python -m benchmarks.dark_targets`), PSNR / SSIM: Haar with "
        "16 shifts 18.46 / 0.566, sym4 with 4 shifts 18.41 / 0.560 at a quarter of the passes — and in the pictures "
        "Haar left a staircase of 8–16-px blocks on the darkest inputs that the final detail step gave back; sym4 none.",
    )
    tone_white_percentile: float = Field(
        99.9,
        gt=50.0,
        le=100.0,
        description="Before the curve, the (denoised) input's white — this percentile of its brightest channel — "
        "is stretched to 1 (100: no stretch). Undoing the darkening's gain by a gain leaves γ a mild curvature: "
        "+2.5 dB on 32 dark tuning crops (target before sampling, `benchmarks.dark_targets`: 15.88 → 18.41 dB), "
        "colours no longer washed out by a γ near 0.1.",
    )
    tone_gamma_min: float = Field(0.1, gt=0.0, le=1.0, description="Strongest brightening the curve may apply (x^0.1).")
    lambda_exposure: float = Field(
        1.0,
        ge=0.0,
        description="Q's exposure term (mean patch brightness toward E). Gated by `exposure_gate`: it acts only on "
        "under-exposed inputs, since applied to every input it pulls well-exposed photos toward grey.",
    )
    lambda_color: float = Field(
        0.0,
        ge=0.0,
        description="Q's grey-world colour-constancy term. Off by default: its gradient was as large as the data "
        "term's and it pulls every photo's colours toward grey, whatever the input.",
    )
    exposure_gate: float = Field(
        0.22,
        ge=0.0,
        le=1.0,
        description="The exposure term, and φ's tone part, act when the input's mean brightness is below this (0: "
        "never, 1: always). Tuning crops: clean 0.27–0.82, low light 0.01–0.18 (mixed families included).",
    )
    exposure_patch: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Q's exposure patch side as a share of the image's shorter side (1: the whole image). A share, "
        "not pixels, so it means the same at any size; small patches flatten the lighting of the scene.",
    )
    lambda_haze: float = Field(
        0.0,
        ge=0.0,
        description="Q's haze term: the mean dark channel of x̂0 (He et al.'s prior: haze-free patches hold a "
        "near-black pixel). Gated by `haze_gate`; with it on, φ's tone part learns the veil. Off by default: on 3 "
        "hazy tuning crops it lost 3.7 dB at 0.03 and 4.9 at 0.1 (its gradient reaches only each patch's darkest "
        "pixel, and φ's tone part drifted) — haze is not restored by the default preset; see the README.",
    )
    haze_gate: float = Field(
        0.4,
        ge=0.0,
        le=1.0,
        description="The haze term, and φ's tone part, act when the input's mean dark channel is above this. Tuning "
        "crops: clean 0.11–0.33 but one bright-sky crop at 0.61; hazy 0.35–0.66 — 0.4 errs toward leaving a "
        "clean photo alone (a bright sky or snow scene above it is treated as hazy: say so, it is blind).",
    )
    haze_patch: float = Field(
        1 / 32,
        gt=0.0,
        le=1.0,
        description="Dark-channel patch side as a share of the shorter side (He: 15 px on ~500).",
    )
    dehaze: Literal["auto", "off"] = Field(
        "auto",
        description="auto: an input the haze gate flags is first dehazed with the dark channel prior at strength "
        "`dehaze_omega` (restorer/haze.py), then sampled. Blind, so a bright washed-out clean photo can be flagged "
        "(5% of 120 clean tuning crops); off: never.",
    )
    dehaze_gate_dark: float = Field(
        0.36,
        ge=0.0,
        le=1.0,
        description="Gate: median dark channel above this… Tuning crops (120 clean, 34 hazy): with "
        "`dehaze_gate_saturation` the pair flagging ≤ 5% of clean crops that catches the most hazy ones (85%).",
    )
    dehaze_gate_saturation: float = Field(
        0.23, ge=0.0, le=1.0, description="…and median saturation (max − min)/max below this (haze washes colour out)."
    )
    dehaze_gate_patch: float = Field(
        1 / 16, gt=0.0, le=1.0, description="Dark-channel window of the gate, as a share of the shorter side."
    )
    dehaze_omega: float = Field(
        0.6,
        gt=0.0,
        le=1.0,
        description="Share of the estimated veil removed (He et al.: 0.95). Tuning crops, gated (python -m "
        "benchmarks.haze_tradeoff): ω 0.5 → +3.2 dB over all hazy crops, wrongly flagged clean crops keep 22–30 dB; "
        "0.6 → +4.3 and 20–28; 0.95 → +6.0 and 13–18.",
    )
    dehaze_patch: float = Field(
        1 / 8,
        gt=0.0,
        le=1.0,
        description="Dark-channel window of the transmission estimate, as a share of the shorter side (1/8 beat 1/32 "
        "and 1/4 on hazy tuning crops at ω ≤ 0.8).",
    )
    dehaze_refine: float = Field(
        1 / 16,
        gt=0.0,
        le=1.0,
        description="Box filter smoothing the transmission (a cheap stand-in for soft matting), share of the side.",
    )
    dehaze_t_min: float = Field(0.1, gt=0.0, le=1.0, description="Lower bound on the transmission (He et al.).")
    dehaze_top_share: float = Field(
        0.001, gt=0.0, le=1.0, description="Airlight A: from the brightest share of dark-channel pixels (He: 0.1%)."
    )
    exposure_level: float = Field(0.45, gt=0.0, lt=1.0, description="Q: target mean brightness E.")
    perceptual: Literal["auto", "on", "off"] = Field(
        "auto", description="auto: on when VGG16 weights load, else off and reported; on: fail if absent."
    )

    # --- DegLoss / GGD (section 5) ----------------------------------------------------------------
    degloss: Literal["ggd", "l1"] = Field("ggd", description="ggd: latent GGD KL; l1: pixel L1 ablation.")
    degloss_direction: Literal["forward", "reverse", "symmetric"] = Field(
        "forward", description="forward: KL(GGD(E(ŷ)) ‖ GGD(E(x_lq))); reverse swaps; symmetric sums both."
    )
    ggd_center: bool = Field(
        True,
        description="Centre latents per channel before the fit. SD-style latents have channel means far from 0; "
        "uncentred fits sat at the α clamp where dα/dρ explodes and the KL's gradient pointed the wrong way "
        "(ALGORITHM.md §10); centred fits give α in 0.9–2.1.",
    )

    # --- PCDM (section 4) -------------------------------------------------------------------------
    pcdm: Literal["pcdm", "resblock"] = Field("pcdm", description="resblock: ablation without GGD input.")
    pcdm_lr: float = Field(
        1e-5,
        gt=0.0,
        description="Adam lr of φ's convolutions f1, f2 (spatial: fast ones learn to copy the image and absorb the "
        "fidelity terms). Paper: 1e-5 for all of φ, which leaves φ the identity in a short schedule.",
    )
    pcdm_global_lr: float = Field(
        2e-2,
        gt=0.0,
        description="Adam lr of φ's per-channel gain l(α0,σ0) and colour/affine map f3: darkening to k≈0.1 or a "
        "haze veil needs these to move by O(1) within `pcdm_updates` steps.",
    )
    pcdm_updates: int = Field(
        25,
        ge=1,
        description="Adam steps φ takes over the whole diffusion time, spread over the sampler's steps (two per "
        "step at 25 steps, one every 40 at 1000), so φ learns as much at any step count.",
    )
    pcdm_global_fit: Literal["stats", "fidelity"] = Field(
        "fidelity",
        description="What φ's global part (gain l, colour/affine f3) is trained on. stats: per-channel mean and "
        "std of φ(x̂0) vs x_lq after pooling (a distribution match, as DegLoss is); fidelity: J, as the paper "
        "trains all of φ. stats was tried against a φ free on every input: a smooth mid-schedule x̂0 has less "
        "contrast than x_lq, so φ learned a gain > 1 and darkened x̂0 (clean crop 15.9 dB); with the tone gate, "
        "fidelity works and is the paper's.",
    )
    pcdm_tone_pool: int = Field(
        4, ge=1, description="Pooling (pixels) before the tone statistics: keeps pixel noise out of the std."
    )
    pcdm_start_t: int = Field(
        500,
        ge=0,
        le=1000,
        description="φ trains only while t < this. Above it x̂0 is an unconditional sample unrelated to the input, "
        "and the best map from an unrelated image to x_lq is a contraction to x_lq's mean: trained there (the "
        "paper trains from the first step) φ learned to flatten its input and guidance lost its pull.",
    )
    pcdm_anchor: float = Field(
        0.0,
        ge=0.0,
        description="Weight of ‖φ(x̂0) − x̂0‖² in φ's training loss: φ stays the identity unless the fidelity "
        "terms ask for a degradation, so it cannot co-adapt with x̂0 (absorb what guidance should fix).",
    )
    pcdm_weight_decay: float = Field(1e-5, ge=0.0, description="Adam weight decay for φ (LD-RPS).")
    pcdm_init: Literal["identity", "random"] = Field(
        "identity", description="identity: φ starts as x ↦ x (works at short schedules); random: only f3 identity."
    )
    pcdm_width: int = Field(
        32,
        ge=4,
        description="f1/f2 base width (f2 goes width→2w→4w). Paper: 64, whose φ forward+backward costs 0.27 s at "
        "128² on 2 cores vs 0.08 s at 32 — more than the UNet call; the paper preset keeps 64.",
    )
    pcdm_fused: bool = Field(
        False,
        description="On guided steps, train φ from the same forward/backward as the guidance gradient (guidance "
        "then uses φ from before this step's update, a 1e-5-lr step apart) instead of a second pass through φ "
        "and the encoder. Off: the paper's order (train, then guide).",
    )
    disc_lr: float = Field(5e-4, gt=0.0, description="Adam lr for the patch discriminator.")

    # --- final pixel-space step (restorer/detail.py) -----------------------------------------------
    detail: Literal["wavelet", "wiener", "off"] = Field(
        "wavelet",
        description="Add back the residual x_lq − φ(x̂), shrunk against the blindly estimated noise level — returns "
        "what the autoencoder lost (its reconstruction caps a latent method below a σ=15 input on some crops) "
        "without the noise. wavelet: BayesShrink, cycle-spun; wiener: a local Wiener gain (0.6–1.6 dB below wavelet "
        "on noisy and clean tuning crops, restorer/detail.py); off: return D(ẑ0) as sampled.",
    )
    detail_shifts: int = Field(
        3,
        ge=0,
        le=7,
        description="Cycle spinning of the wavelet detail step: (shifts + 1)² shifted passes. 8 cbsd68_even crops: "
        "0 → 3 gave +0.7 dB on σ=15, +0.4 on σ=25, +1.7 on clean photos (same sampled estimates, final step swapped).",
    )
    detail_window: int = Field(5, ge=3, description="Local window (pixels, odd) of the `wiener` detail step.")

    # --- DQR (section 7) --------------------------------------------------------------------------
    dqr: Literal["on", "off"] = Field(
        "off",
        description="on: exit / refine / re-noise by the judge's score (the paper). Off by default: with the offline "
        "judge (PIQE) its picks have not been shown to save steps without losing quality (benchmarks/README).",
    )
    judge: str = Field("auto", description="pyiqa metric name, or auto (ARNIQA if its weights load, else PIQE).")
    eta: float = Field(0.01, ge=0.0, description="Exit when the score gain between checkpoints is below η.")
    max_rounds: int = Field(3, ge=1, le=10, description="Cap on re-noise rounds.")
    renoise_strength: float = Field(0.5, gt=0.0, lt=1.0, description="Re-noise to t' = strength·T.")
    min_guided_intervals: int = Field(
        5,
        ge=0,
        description="No exit (and no best-estimate pick) before guidance has acted for this many intervals Δ. "
        "Mid-schedule x̂0 are blurry and offline judges (PIQE) rate them well: with 1 interval, DQR exited at "
        "t≈500 and lost 3–8 dB on mini-ldm (measured); 5 keeps exits to the last ~20% of the schedule.",
    )

    @model_validator(mode="after")
    def _check_schedule(self) -> RestoreConfig:
        if self.checkpoint_every > self.steps:
            raise ValueError(f"checkpoint_every ({self.checkpoint_every}) must be ≤ steps ({self.steps})")
        return self


PRESETS: dict[str, dict[str, Any]] = {
    # The paper's schedule and components: 1000 DDIM steps, Δ=100, DQR on, φ of width 64. κ, φ's updates and Q
    # are per unit of diffusion time, so the same values mean the same pull as in `balanced` (ALGORITHM.md §10).
    # DQR keeps the default `min_guided_intervals` (5): allowed to exit after 1 guided interval it left at step
    # 550 of 1000 with a blurry x̂0, 2.3 dB below `balanced` on 2 tuning crops.
    "paper": {"steps": 1000, "checkpoint_every": 100, "dqr": "on", "pcdm_width": 64},
    # Default: 25 steps, one φ update per step, fixed schedule (see the README's tables for its figures).
    "balanced": {},
    # Lowest latency: 15 steps (each now covers more of the diffusion time, the settings keep their meaning).
    "fast": {"steps": 15, "checkpoint_every": 5},
}


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn CLI-style `key=value` strings into a dict; values are validated later by the model."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r} is not of the form key=value")
        key = key.strip()
        if key not in RestoreConfig.model_fields:
            raise ConfigError(f"unknown option {key!r}; known: {', '.join(sorted(RestoreConfig.model_fields))}")
        value = value.strip()
        out[key] = None if value.lower() in {"none", "null"} else value
    return out


def resolve_config(preset: str | None = None, overrides: dict[str, Any] | None = None) -> RestoreConfig:
    """Preset (default `balanced`) + overrides → validated config; ConfigError with a readable message."""
    name = preset or DEFAULT_PRESET
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    values = {**PRESETS[name], **(overrides or {})}
    unknown = sorted(set(values) - set(RestoreConfig.model_fields))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}")
    try:
        return RestoreConfig(**values)
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(msgs) from None
