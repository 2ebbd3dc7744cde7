"""Make the README's before/after picture with the project itself (mini-ldm, default preset).

    python docs/make_before_after.py --model ../shared/weights/mini-ldm --out docs/before_after.png

Kodak24 kodim23 centre crop, synthetic Gaussian noise σ=25 (seed 0), restored with the default preset;
the picture is noisy | restored | clean with PSNR in the caption printed to stdout.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from restorer import Restorer, resolve_config
from restorer.images import pil_to_tensor, tensor_to_pil

SHARED = Path(__file__).resolve().parents[2] / "shared"


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=str(SHARED / "weights" / "mini-ldm"))
    p.add_argument("--image", default=str(SHARED / "data" / "kodak24" / "kodim23.png"))
    p.add_argument("--size", type=int, default=192)
    p.add_argument("--sigma", type=float, default=25.0)
    p.add_argument("--out", default="docs/before_after.png")
    args = p.parse_args()

    img = Image.open(args.image).convert("RGB")
    w, h, s = *img.size, args.size
    clean = pil_to_tensor(img.crop(((w - s) // 2, (h - s) // 2, (w + s) // 2, (h + s) // 2)))
    noisy = (clean + args.sigma / 255 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    noisy_img = tensor_to_pil(noisy)
    restorer = Restorer.load(args.model, device="cpu", judge="piqe", perceptual="off")
    result = restorer.restore(noisy_img, resolve_config(None, {"seed": 0}))
    out = pil_to_tensor(result.image)
    strip = np.concatenate([np.asarray(noisy_img), np.asarray(result.image), np.asarray(tensor_to_pil(clean))], axis=1)
    Image.fromarray(strip).resize((strip.shape[1] * 2, strip.shape[0] * 2), Image.Resampling.NEAREST).save(args.out)
    print(f"{args.out}: noisy {psnr(pil_to_tensor(noisy_img), clean):.2f} dB | restored {psnr(out, clean):.2f} dB "
          f"({result.steps_run} steps, {result.rounds} round(s), early exit {result.early_exit}, {result.seconds:.0f} s)")


if __name__ == "__main__":
    main()
