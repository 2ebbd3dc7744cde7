"""Can a blind restorer undo haze without damaging clean photos? The measurement behind the README's answer.

    python -m benchmarks.haze_tradeoff --out benchmarks/results/haze-tradeoff-128

Two questions on 128² centre crops, tuning images only (`cbsd68_even` hazed with the benchmark's seeded haze;
clean crops from `bsds500_clean/train`):
1. Gate: do simple blind statistics (median dark channel, median saturation) tell a hazy crop from a clean
   one? For each threshold pair, the share of clean crops wrongly flagged and of hazy crops caught.
2. No gate: the dark channel prior at reduced strength ω on every input: PSNR gained on haze against PSNR
   kept on clean crops (mean, 5th percentile, worst).
3. The restorer's way: the default gate, then the DCP at strength ω on flagged inputs only (the restorer's
   own window sizes): haze gain over all hazy crops, and what the wrongly flagged clean crops keep.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from restorer.config import RestoreConfig
from restorer.degradations import degrade, to_array
from restorer.haze import HazeStats, haze_stats
from restorer.images import centre_crop

from .baselines import dark_channel_prior
from .quality import DEFAULT_DATA_ROOT, list_images

GATE_PATCH_SHARE = RestoreConfig.model_fields["dehaze_gate_patch"].default
"""Dark-channel window of the gate statistics, the restorer's own default (8 px at 128²)."""
CLEAN_FALSE_POSITIVE_BUDGET = (0.01, 0.05)
"""Gates are ranked by hazy crops caught among those flagging at most this share of clean crops."""
OMEGAS = (0.2, 0.35, 0.5, 0.6, 0.65, 0.95)
PATCH_SHARES = (1 / 32, 1 / 8, 1 / 4)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / max(float(np.mean((a - b) ** 2)), 1e-10)))


def gate_stats(x: np.ndarray) -> HazeStats:
    """(median dark channel, median saturation), exactly as the restorer's gate computes them."""
    return haze_stats(torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].float(), GATE_PATCH_SHARE)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--hazy", type=int, default=34, help="cbsd68_even images to haze")
    p.add_argument("--clean", type=int, default=120, help="bsds500_clean/train images")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    clean = [
        to_array(centre_crop(Image.open(f), args.size))
        for f in list_images(args.data_root / "bsds500_clean" / "train", args.clean)
    ]
    hazy = []
    for f in list_images(args.data_root / "cbsd68_even", args.hazy):
        c = centre_crop(Image.open(f), args.size)
        hazy.append((to_array(degrade(c, "haze", f.stem)[0]), to_array(c)))

    clean_stats = [gate_stats(x) for x in clean]
    hazy_stats = [gate_stats(x) for x, _ in hazy]
    cs = np.array([(st.dark, st.saturation) for st in clean_stats])
    hs = np.array([(st.dark, st.saturation) for st in hazy_stats])
    gates = []
    for dark_min in np.arange(0.1, 0.7, 0.02):
        for sat_max in np.arange(0.05, 0.6, 0.02):
            fp = float(((cs[:, 0] > dark_min) & (cs[:, 1] < sat_max)).mean())
            tp = float(((hs[:, 0] > dark_min) & (hs[:, 1] < sat_max)).mean())
            gates.append(
                {
                    "dark_min": round(float(dark_min), 2),
                    "sat_max": round(float(sat_max), 2),
                    "clean_flagged": fp,
                    "hazy_caught": tp,
                }
            )
    best_gates = {
        str(b): max((g for g in gates if g["clean_flagged"] <= b), key=lambda g: g["hazy_caught"])
        for b in CLEAN_FALSE_POSITIVE_BUDGET
    }

    haze_in = np.array([psnr(x, c) for x, c in hazy])
    strengths = []
    for omega in OMEGAS:
        for share in PATCH_SHARES:
            cp = np.array([psnr(dark_channel_prior(x, omega, share), x) for x in clean])
            hp = np.array([psnr(dark_channel_prior(x, omega, share), c) for x, c in hazy])
            strengths.append(
                {
                    "omega": omega,
                    "patch_share": round(share, 4),
                    "haze_gain_db": float((hp - haze_in).mean()),
                    "clean_mean_db": float(cp.mean()),
                    "clean_p5_db": float(np.percentile(cp, 5)),
                    "clean_min_db": float(cp.min()),
                }
            )

    cfg = RestoreConfig()
    gate = (cfg.dehaze_gate_dark, cfg.dehaze_gate_saturation)
    flag_c = [st.hazy(*gate) for st in clean_stats]
    flag_h = [st.hazy(*gate) for st in hazy_stats]
    gated = []
    for omega in OMEGAS:
        gain = [
            psnr(dark_channel_prior(x, omega, cfg.dehaze_patch), c) - psnr(x, c) if f else 0.0
            for (x, c), f in zip(hazy, flag_h)
        ]
        kept = [psnr(dark_channel_prior(x, omega, cfg.dehaze_patch), x) for x, f in zip(clean, flag_c) if f]
        gated.append(
            {"omega": omega, "haze_gain_db": float(np.mean(gain)), "flagged_clean_db": [round(v, 1) for v in kept]}
        )

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps(
            {"haze_input_db": float(haze_in.mean()), "best_gates": best_gates, "strengths": strengths, "gated": gated},
            indent=2,
        )
    )
    lines = [
        f"# Haze: gate or strength (tuning crops, {args.size}²)",
        "",
        f"Hazy crops: {len(hazy)} (cbsd68_even, input {haze_in.mean():.2f} dB); clean crops: {len(clean)} "
        "(bsds500_clean/train).",
        "",
        "## Best blind gate for a clean-photo false-positive budget",
        "",
        "| clean flagged ≤ | dark channel > | saturation < | clean flagged | hazy caught |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {b} | {g['dark_min']} | {g['sat_max']} | {g['clean_flagged']:.1%} | {g['hazy_caught']:.1%} |"
        for b, g in best_gates.items()
    ]
    lines += [
        "",
        "## The dark channel prior at strength ω on every input",
        "",
        "| ω | patch | haze gain dB | clean PSNR mean / p5 / worst |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {s['omega']} | {s['patch_share']} | {s['haze_gain_db']:+.2f} | {s['clean_mean_db']:.1f} / "
        f"{s['clean_p5_db']:.1f} / {s['clean_min_db']:.1f} |"
        for s in strengths
    ]
    lines += [
        "",
        f"## The default gate, then the DCP at strength ω (window {cfg.dehaze_patch:.3f} of the side)",
        "",
        f"Flagged: {sum(flag_h)} of {len(hazy)} hazy, {sum(flag_c)} of {len(clean)} clean crops.",
        "",
        "| ω | haze gain dB (all hazy crops) | flagged clean crops keep (dB) |",
        "|---|---|---|",
    ]
    lines += [
        f"| {g['omega']} | {g['haze_gain_db']:+.2f} | {', '.join(map(str, g['flagged_clean_db']))} |" for g in gated
    ]
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
