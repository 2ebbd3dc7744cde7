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
    steps: int = Field(50, ge=1, le=1000, description="DDIM steps per round (paper: 1000).")
    checkpoint_every: int = Field(
        5, ge=1, description="Δ: DQR scores x̂0 every this many steps (paper: 100 of 1000, i.e. 10%)."
    )
    seed: int = Field(0, ge=0, description="Seeds z_T, PCDM init and re-noise draws: same seed, same output.")
    max_pixels: int = Field(
        512 * 512, ge=64 * 64, description="Larger inputs are downscaled for sampling and resized back."
    )

    # --- guidance (section 3) ---------------------------------------------------------------------
    kappa: float = Field(
        4000.0, ge=0.0, description="Guidance scale κ: the paper's Z=4000 read as a step size on ∂J/∂ẑ0."
    )
    guidance_start_t: int = Field(
        700, ge=0, le=1000, description="Warm-up: no guidance while t ≥ this (PCDM still trains)."
    )
    q_start_t: int = Field(150, ge=0, le=1000, description="Q (exposure + colour) acts only for t < this.")
    clamp_percentile: float | None = Field(
        99.5, gt=0.0, le=100.0, description="Clamp |ẑ0| to this percentile (None: off). Clamp only, never divide."
    )
    guidance_rms_cap: float | None = Field(
        0.1, gt=0.0,
        description="Safety cap on the per-element RMS of κ·∂J/∂ẑ0 in one step (None: off, as in the paper). "
        "Typical steps are ~1e-3; the GGD fit's gradient spikes where r(α) is flat (α→10) and one uncapped "
        "spike (measured RMS ≈ 50) saturates x̂0 for the rest of the run.",
    )

    # --- loss weights (section 3.4 / 6) -----------------------------------------------------------
    lambda_deg: float = Field(
        0.01, ge=0.0,
        description="DegLoss weight λ1. Its gradient per unit weight is ~300× the mean-reduced MSE's (measured), "
        "so 0.01 already makes it the larger term; 1.0 overwhelms the data term.",
    )
    lambda_mse: float = Field(1.0, ge=0.0, description="Pixel MSE weight λ2.")
    lambda_pse: float = Field(0.1, ge=0.0, description="Perceptual (VGG16 relu2_2) weight λ3.")
    lambda_adv: float = Field(0.01, ge=0.0, description="Adversarial weight λ4.")
    lambda_q: float = Field(0.1, ge=0.0, description="Quality term Q weight (exposure + colour constancy).")
    exposure_patch: int = Field(32, ge=1, description="Q: patch size P of the exposure loss.")
    exposure_level: float = Field(0.5, gt=0.0, lt=1.0, description="Q: target mean brightness E.")
    perceptual: Literal["auto", "on", "off"] = Field(
        "auto", description="auto: on when VGG16 weights load, else off and reported; on: fail if absent."
    )

    # --- DegLoss / GGD (section 5) ----------------------------------------------------------------
    degloss: Literal["ggd", "l1"] = Field("ggd", description="ggd: latent GGD KL; l1: pixel L1 ablation.")
    degloss_direction: Literal["forward", "reverse", "symmetric"] = Field(
        "forward", description="forward: KL(GGD(E(ŷ)) ‖ GGD(E(x_lq))); reverse swaps; symmetric sums both."
    )
    ggd_center: bool = Field(False, description="Centre latents per channel before the fit (default off).")

    # --- PCDM (section 4) -------------------------------------------------------------------------
    pcdm: Literal["pcdm", "resblock"] = Field("pcdm", description="resblock: ablation without GGD input.")
    pcdm_lr: float = Field(
        1e-5, gt=0.0,
        description="Adam lr for φ: the paper's 1e-5. Faster φ learns to absorb the fidelity terms: on a cbsd68 "
        "crop (σ=25, dqr=off) 5e-4 (LD-RPS) lost 5.4 dB and 1e-4 lost 4.3 dB (benchmarks/results/tune-cbsd68-128).",
    )
    pcdm_weight_decay: float = Field(1e-5, ge=0.0, description="Adam weight decay for φ (LD-RPS).")
    pcdm_init: Literal["identity", "random"] = Field(
        "identity", description="identity: φ starts as x ↦ x (works at short schedules); random: only f3 identity."
    )
    pcdm_width: int = Field(64, ge=4, description="f1/f2 base width (f2 goes width→2w→4w).")
    pcdm_fused: bool = Field(
        False,
        description="On guided steps, train φ from the same forward/backward as the guidance gradient (guidance "
        "then uses φ from before this step's update, a 1e-5-lr step apart) instead of a second pass through φ "
        "and the encoder. Off: the paper's order (train, then guide).",
    )
    disc_lr: float = Field(5e-4, gt=0.0, description="Adam lr for the patch discriminator.")

    # --- DQR (section 7) --------------------------------------------------------------------------
    dqr: Literal["on", "off"] = Field("on", description="off: fixed schedule, one round (ablation).")
    judge: str = Field(
        "auto", description="pyiqa metric name, or auto (ARNIQA if its weights load, else PIQE)."
    )
    eta: float = Field(0.01, ge=0.0, description="Exit when the score gain between checkpoints is below η.")
    max_rounds: int = Field(3, ge=1, le=10, description="Cap on re-noise rounds.")
    renoise_strength: float = Field(0.5, gt=0.0, lt=1.0, description="Re-noise to t' = strength·T.")
    min_guided_intervals: int = Field(
        5, ge=0,
        description="No exit (and no best-estimate pick) before guidance has acted for this many intervals Δ. "
        "Mid-schedule x̂0 are blurry and offline judges (PIQE) rate them well: with 1 interval, DQR exited at "
        "t≈500 and lost 3–8 dB on mini-ldm (measured); 5 keeps exits to the last ~20% of the schedule.",
    )

    @model_validator(mode="after")
    def _check_schedule(self) -> "RestoreConfig":
        if self.checkpoint_every > self.steps:
            raise ValueError(f"checkpoint_every ({self.checkpoint_every}) must be ≤ steps ({self.steps})")
        return self


PRESETS: dict[str, dict[str, Any]] = {
    # The faithful reference: the paper's schedule and Z=4000, every term on. Measured with mini-ldm it does
    # NOT restore: 13.46 dB on a cbsd68_even 128² crop at σ=25 (input 20.41; 1499 steps, 2 rounds,
    # benchmarks/results/presets-cbsd68-128), and quality falls steadily with schedule length (50 steps 23.08,
    # 100: 22.8, 200: 21.7; results/tune-cbsd68-128-steps). Likely cause: φ takes one Adam step per sampler
    # step, so 1000 steps train it 20× more than 50 — the regime where a faster φ absorbs the degradation
    # (pcdm_lr 1e-4 lost 4.3 dB at 50 steps). Kept as the paper states it; not a recommended setting.
    "paper": {"steps": 1000, "checkpoint_every": 100, "kappa": 4000.0},
    # Default: 50 steps, checkpoints every 10% of the schedule. κ tuned on the tuning set (3 cbsd68_even
    # 128² crops, σ=25, DQR off; benchmarks/results/tune-cbsd68-128-kappa): κ=2000 22.39 dB, 4000 23.69,
    # 8000 24.37, ≥16000 23.75 (the per-step RMS cap binds).
    "balanced": {"steps": 50, "checkpoint_every": 5, "kappa": 8000.0},
    # Fewest steps that still restore; checkpoints every 20% of the schedule.
    "fast": {"steps": 30, "checkpoint_every": 6, "kappa": 4000.0, "min_guided_intervals": 2},
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
