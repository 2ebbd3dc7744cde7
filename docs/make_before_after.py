"""Make the README's before/after picture with the project itself (mini-ldm, default preset, blind).

    python docs/make_before_after.py --out docs/before_after.png

One row per degradation (the benchmark's seeded ones, `restorer.degradations`, on a Kodak24 centre crop):
degraded | restored | clean, with PSNR/SSIM printed to stdout. The restorer is given no task label: the same
preset runs every row.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import DEFAULT_DATA_ROOT, DEFAULT_WEIGHTS_ROOT  # noqa: E402
from restorer import Restorer, resolve_config  # noqa: E402
from restorer.compare import STRIP_GAP, reference_scores, side_by_side  # noqa: E402
from restorer.degradations import degrade  # noqa: E402
from restorer.images import centre_crop, load_image  # noqa: E402

SCALE = 2
"""Nearest-neighbour enlargement, so a 128² crop can be looked at."""


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=str(DEFAULT_WEIGHTS_ROOT / "mini-ldm"))
    p.add_argument("--image", default=str(DEFAULT_DATA_ROOT / "kodak24" / "kodim23.png"))
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--kinds", default="noise25,lowlight+noise,haze,clean")
    p.add_argument("--out", default="docs/before_after.png")
    args = p.parse_args()

    clean = centre_crop(load_image(args.image), args.size)
    restorer = Restorer.load(args.model, device="cpu", judge="piqe", perceptual="off")
    rows = []
    for kind in args.kinds.split(","):
        degraded, _ = degrade(clean, kind, Path(args.image).stem)
        result = restorer.restore(degraded, resolve_config(None, {"seed": 0}))
        before, after = reference_scores(degraded, clean), reference_scores(result.image, clean)
        print(
            f"{kind}: degraded {before['psnr']:.2f} dB / {before['ssim']:.3f} | restored {after['psnr']:.2f} dB / "
            f"{after['ssim']:.3f} ({result.steps_run} steps, {result.seconds:.0f} s)"
        )
        rows.append(np.asarray(side_by_side([degraded, result.image, clean], scale=SCALE)))
    gap = np.full((STRIP_GAP * SCALE, rows[0].shape[1], 3), 255, dtype=np.uint8)
    strip = np.concatenate([r for row in rows for r in (row, gap)][:-1], axis=0)
    Image.fromarray(strip).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
