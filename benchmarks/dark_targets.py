"""What the sampler is asked to match on a dark input: the target after the gated corrections, against the clean crop.

    python -m benchmarks.dark_targets --out benchmarks/results/dark-targets-128

The corrections before sampling (`restorer.pipeline.correct_before_sampling`: denoise, black/white/γ curve,
dehaze gate) need no prior, so their settings can be compared over many tuning crops in seconds: each variant is a
set of `RestoreConfig` overrides on the default preset, scored by PSNR / SSIM of the target itself on the dark
families of `cbsd68_even` and `bsds500_clean/test` 128² centre crops (tuning images only). The sampler and the
final detail step then work from this target; `benchmarks.quality` measures the whole restorer.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from restorer import resolve_config
from restorer.degradations import degrade, to_array
from restorer.images import centre_crop
from restorer.pipeline import correct_before_sampling

from .common import command_line, header_md, machine, parse_set, write_json
from .quality import DEFAULT_DATA_ROOT, list_images, to_tensor

DARK_FAMILIES = ("lowlight", "lowlight+noise", "lowlight+haze+noise")
VARIANTS = (
    "default",
    "dark_denoise=off",
    "tone_white_percentile=100",
    "dark_denoise=off;tone_white_percentile=100;tone_black=0.4",  # the defaults before this step existed
    "dark_denoise_wavelet=db1;dark_denoise_shifts=3",
    "tone_black=0.4",
)


def score(variant: str, crops: list[tuple[str, torch.Tensor, np.ndarray]]) -> dict[str, tuple[float, float]]:
    """Mean PSNR / SSIM of the corrected target per family for one set of overrides."""
    cfg = resolve_config(None, {} if variant == "default" else parse_set(variant))
    per: dict[str, list[tuple[float, float]]] = {}
    for family, x, clean in crops:
        out = correct_before_sampling(x, cfg).image[0].permute(1, 2, 0).double().numpy()
        per.setdefault(family, []).append(
            (
                peak_signal_noise_ratio(clean, out, data_range=1),
                structural_similarity(clean, out, data_range=1, channel_axis=-1),
            )
        )
    return {f: tuple(np.mean(v, axis=0).tolist()) for f, v in per.items()}  # type: ignore[misc]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    p.add_argument("--images", type=int, default=16, help="first N images of each tuning set")
    p.add_argument("--size", type=int, default=128)
    p.add_argument(
        "--variants", default=" ".join(VARIANTS), help="space-separated override sets (k=v;k=v), or 'default'"
    )
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    files = list_images(args.data_root / "cbsd68_even", args.images)
    files += list_images(args.data_root / "bsds500_clean" / "test", args.images)
    crops = []
    for f in files:
        for family in DARK_FAMILIES:
            lq, clean = degrade(centre_crop(Image.open(f), args.size), family, f.stem)
            crops.append((family, to_tensor(lq), to_array(clean)))

    rows: list[dict[str, Any]] = []
    for variant in args.variants.split():
        res = score(variant, crops)
        rows.append(
            {
                "variant": variant,
                **{f: {"psnr": v[0], "ssim": v[1]} for f, v in res.items()},
                "mean_psnr": float(np.mean([v[0] for v in res.values()])),
                "mean_ssim": float(np.mean([v[1] for v in res.values()])),
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    cmd = command_line() if argv is None else "python -m benchmarks.dark_targets " + " ".join(argv)
    write_json(args.out / "summary.json", {"images": [f.stem for f in files], "size": args.size, "rows": rows})
    lines = [
        header_md("Dark targets before sampling", machine("cpu"), cmd),
        f"{len(files)} tuning crops ({args.size}²) × {', '.join(DARK_FAMILIES)}; PSNR dB / SSIM of the target "
        "the sampler is asked to match, mean over crops.",
        "",
        "| variant | " + " | ".join(DARK_FAMILIES) + " | mean |",
        "|---" * (len(DARK_FAMILIES) + 2) + "|",
    ]
    for r in rows:
        cells = [f"{r[f]['psnr']:.2f} / {r[f]['ssim']:.3f}" for f in DARK_FAMILIES]
        lines.append(f"| `{r['variant']}` | " + " | ".join(cells) + f" | {r['mean_psnr']:.2f} / {r['mean_ssim']:.3f} |")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
