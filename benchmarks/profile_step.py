"""Where one sampler step's time goes: torch.profiler over a few guided steps, split by the sampler's phases.

    python -m benchmarks.profile_step --model ../shared/weights/mini-ldm --size 128 --device cpu \
        --out benchmarks/results/profile-minildm-128-cpu
    python -m benchmarks.profile_step --arch sd21 --size 512 --device cuda --dtype bf16 --batch 1,4 \
        --out benchmarks/results/profile-sd21-512-gpu

The sampler labels its phases (`restorer.sampler.phase`: unet, decode, pcdm_train, guidance_loss,
guidance_backward, judge); this harness runs warm-up steps unprofiled, then `--steps` guided steps under the
profiler (warm-up off so every profiled step is guided), and reports each phase's share of the step in
wall-clock time (CPU time of the labelled range; on CUDA the device time of the kernels it launched).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .common import DEFAULT_DATA_ROOT, command_line, fmt, header_md, machine, write_json
from .speed import ARCHS, build_sd_arch, test_image

PHASES = ("unet", "decode", "pcdm_train", "guidance_loss", "guidance_backward", "judge")


def profile_batch(restorer: Any, image: Any, n: int, steps: int, warmup: int, device: str) -> dict[str, Any]:
    """Run `warmup` then `steps` batched steps of n jobs; per-phase ms per step (whole batch) and shares."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from restorer import resolve_config
    from restorer.sampler import PHASE_PREFIX

    # every step guided, no checkpoint inside the profiled window except one judge call at the end
    def cfg(i: int):
        return resolve_config(
            "fast",
            {
                "steps": warmup + steps,
                "checkpoint_every": warmup + steps,
                "guidance_start_t": 1000,
                "dqr": "off",
                "seed": i,
            },
        )

    batch = restorer.batch(n)
    prepared = [restorer.prepare(image, cfg(i)) for i in range(n)]
    for p in prepared:
        batch.add(p.run)
    cuda = device.startswith("cuda")
    for _ in range(warmup):
        batch.step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        while batch.active:
            batch.step()
        if cuda:
            torch.cuda.synchronize()
    wall_ms = 1000 * (time.perf_counter() - t0) / steps
    for p in prepared:
        p.result()  # raises if a run failed
    totals: dict[str, float] = {}
    for ev in prof.key_averages():
        if ev.key.startswith(PHASE_PREFIX):
            name = ev.key.removeprefix(PHASE_PREFIX)
            us = ev.device_time_total if cuda and ev.device_time_total > 0 else ev.cpu_time_total
            totals[name] = totals.get(name, 0.0) + us / 1000 / steps
    covered = sum(totals.values())
    return {
        "batch": n,
        "wall_ms_per_step": wall_ms,
        "wall_ms_per_image_step": wall_ms / n,
        "phase_ms_per_step": {k: totals.get(k, 0.0) for k in PHASES},
        "phase_share": {k: totals.get(k, 0.0) / covered if covered else 0.0 for k in PHASES},
        "unlabelled_ms_per_step": max(0.0, wall_ms - covered),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_step", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="diffusers LDM folder or hub id")
    src.add_argument("--arch", choices=sorted(ARCHS), help="Stable Diffusion architecture with random weights")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--batch", default="1", help="comma-separated batch sizes")
    p.add_argument("--steps", type=int, default=4, help="profiled (guided) steps")
    p.add_argument("--warmup", type=int, default=2, help="unprofiled steps first")
    p.add_argument("--judge", default="piqe")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    p.add_argument("--out", type=Path, required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    import tempfile

    from restorer import Restorer

    args = build_parser().parse_args(argv)
    cmd = command_line() if argv is None else "python -m benchmarks.profile_step " + " ".join(argv)
    if args.arch:
        model = str(build_sd_arch(args.arch, Path(tempfile.gettempdir()) / f"upzir-bench-{args.arch}-random"))
        weights = "random weights"
    else:
        model, weights = args.model, "trained weights (as loaded from --model)"
    restorer = Restorer.load(model, device=args.device, dtype=args.dtype, judge=args.judge, perceptual="off")
    image, image_desc = test_image(args.size, args.data_root)
    rows = []
    for n in [int(b) for b in args.batch.split(",") if b.strip()]:
        print(f"profiling batch {n} ...", file=sys.stderr, flush=True)
        rows.append(profile_batch(restorer, image, n, args.steps, args.warmup, args.device))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    info = machine(args.device)
    meta = {
        "model": args.arch or args.model,
        "weights": weights,
        "size": args.size,
        "dtype": args.dtype,
        "input": image_desc,
        "steps_profiled": args.steps,
        "perceptual": "off",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "profile.json", {"machine": info, "command": cmd, **meta, "rows": rows})
    md = [header_md("Step profile", info, cmd)] + [f"- {k}: {v}" for k, v in meta.items()]
    md += [
        "",
        "| batch | ms/step | ms/image-step | " + " | ".join(PHASES) + " | unlabelled ms |",
        "|---|---|---|" + "---|" * len(PHASES) + "---|",
    ]
    for r in rows:
        cells = [f"{fmt(r['phase_ms_per_step'][k], 0)} ({100 * r['phase_share'][k]:.0f}%)" for k in PHASES]
        md.append(
            f"| {r['batch']} | {fmt(r['wall_ms_per_step'], 0)} | {fmt(r['wall_ms_per_image_step'], 0)} | "
            + " | ".join(cells)
            + f" | {fmt(r['unlabelled_ms_per_step'], 0)} |"
        )
    (args.out / "profile.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
