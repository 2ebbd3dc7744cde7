"""Make the README's before/after picture with the project itself (mini-ldm, default preset, blind).

    python docs/make_before_after.py --out docs/before_after.png

One row per degradation (the benchmark's seeded ones, on a Kodak24 centre crop): degraded | restored | clean,
with PSNR printed to stdout. The restorer is given no task label: the same preset runs every row.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from restorer.degradations import degrade  # noqa: E402
from restorer.images import centre_crop  # noqa: E402
from restorer import Restorer, resolve_config  # noqa: E402
from restorer.images import pil_to_tensor  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
GAP = 4
"""Pixels of white between tiles."""


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean().clamp_min(1e-10)))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=str(SHARED / "weights" / "mini-ldm"))
    p.add_argument("--image", default=str(SHARED / "data" / "kodak24" / "kodim23.png"))
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--kinds", default="noise25,lowlight+noise,clean")
    p.add_argument("--out", default="docs/before_after.png")
    args = p.parse_args()

    clean = centre_crop(Image.open(args.image), args.size)
    restorer = Restorer.load(args.model, device="cpu", judge="piqe", perceptual="off")
    rows = []
    for kind in args.kinds.split(","):
        degraded, _ = degrade(clean, kind, Path(args.image).stem)
        result = restorer.restore(degraded, resolve_config(None, {"seed": 0}))
        x = pil_to_tensor(clean)
        print(f"{kind}: degraded {psnr(pil_to_tensor(degraded), x):.2f} dB | restored "
              f"{psnr(pil_to_tensor(result.image), x):.2f} dB ({result.steps_run} steps, {result.seconds:.0f} s)")
        tiles = [np.asarray(im) for im in (degraded, result.image, clean)]
        rows.append(np.concatenate([np.pad(t, ((0, GAP), (0, GAP), (0, 0)), constant_values=255) for t in tiles], 1))
    strip = np.concatenate(rows, axis=0)
    Image.fromarray(strip).resize((strip.shape[1] * 2, strip.shape[0] * 2), Image.Resampling.NEAREST).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
