"""Quality harness: does the sampler restore, and does each part of the method pay for itself?

    python -m benchmarks.quality --model ../shared/weights/mini-ldm --data kodak24 --size 128 --images 3 \
        --degradations noise25,lowlight+haze+noise \
        --methods input,full,pcdm=resblock,degloss=l1,dqr=off,ldrps,preset:fast --out benchmarks/results/quality-x

Writes `results.jsonl` (one row per image × degradation × method; a rerun skips rows already there),
`summary.json` and `summary.md` (means per degradation × method). `--lol` scores real low-light inputs
with no-reference metrics (PIQE, NIQE) instead of synthetic degradations with ground truth.

Methods: `input` (the degraded image itself) · `full` (default preset) · `ldrps` (LD-RPS-like: no DegLoss,
no GGD input to φ, no DQR) · `preset:NAME` · any `key=value[;key=value]` override set on the default
preset. `--set k=v,...` is applied on top of every method (e.g. `steps=2,checkpoint_every=1` for tests).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from restorer.degradations import degrade, to_array, to_pil
from restorer.images import centre_crop

from .baselines import BASELINES
from .common import (
    DEFAULT_DATA_ROOT,
    DEFAULT_WEIGHTS_ROOT,
    command_line,
    fmt,
    header_md,
    machine,
    parse_set,
    write_json,
)

LDRPS = {"lambda_deg": "0", "pcdm": "resblock", "dqr": "off", "pcdm_anchor": "1.0"}
"""LD-RPS-like, as read from its paper: no DegLoss (λ1=0), φ a plain residual block without the GGD input, a fixed
schedule (no DQR), and φ anchored by a content term against x̂0 (‖φ(x̂0) − x̂0‖²) beside its adversarial term against
x_lq. Our reading, not its code."""

FR_METRICS = ("psnr", "ssim", "lpips")
NR_METRICS = ("piqe", "niqe")


# --- methods ------------------------------------------------------------------------------------------
AE_CEILING = "ae"
"""The prior's autoencoder applied to the *clean* crop: what a pure latent method can reach at best."""


def direction_arrow(metric: str) -> str:
    """↓ or ↑ as pyiqa records the metric's direction (its `lower_better` fact), never retyped here."""
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    facts = DEFAULT_CONFIGS.get(metric)
    if facts is None:
        return ""
    return "↓" if facts.get("lower_better") else "↑"


def method_config(method: str) -> tuple[str | None, dict[str, str]] | None:
    """Method spec → (preset, overrides); None for `input`, `ae` and the baselines (no sampler)."""
    if method in ("input", AE_CEILING) or method in BASELINES:
        return None
    if method == "full":
        return None, {}
    if method == "ldrps":
        return None, dict(LDRPS)
    if method.startswith("preset:"):
        return method.split(":", 1)[1], {}
    if "=" in method:
        return None, parse_set(method)
    raise SystemExit(f"unknown method {method!r} (input, full, ldrps, preset:NAME or key=value[;key=value])")


# --- data ---------------------------------------------------------------------------------------------
def fit_longer_side(img: Image.Image, size: int) -> Image.Image:
    img = img.convert("RGB")
    w, h = img.size
    s = size / max(w, h)
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)


def list_images(folder: Path, n: int) -> list[Path]:
    files = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
    )
    if not files:
        raise SystemExit(f"no images in {folder}")
    return files[:n]


# --- metrics ------------------------------------------------------------------------------------------
def to_tensor(img: Image.Image):
    import torch

    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


class Metrics:
    """pyiqa metrics created once; any that cannot load (e.g. LPIPS weights offline) is reported n/a."""

    def __init__(self, names: tuple[str, ...], niqe_params: Path | None = None) -> None:
        import pyiqa

        self.names = list(names)
        self.metrics: dict[str, Any] = {}
        self.unavailable: dict[str, str] = {}
        for name in names:
            kwargs: dict[str, Any] = {}
            if name == "niqe" and niqe_params is not None and niqe_params.exists():
                kwargs["pretrained_model_path"] = str(niqe_params)
            try:
                self.metrics[name] = pyiqa.create_metric(name, device="cpu", **kwargs)
            except Exception as exc:  # offline / missing weights: report instead of failing the run
                self.unavailable[name] = f"{type(exc).__name__}: {str(exc)[:160]}"

    def score(self, out: Image.Image, ref: Image.Image | None) -> dict[str, float | None]:
        import torch

        res: dict[str, float | None] = {}
        x = to_tensor(out)
        y = to_tensor(ref) if ref is not None else None
        with torch.no_grad():
            for name in self.metrics_names():
                m = self.metrics.get(name)
                if m is None:
                    res[name] = None
                    continue
                try:
                    v = float(m(x, y) if y is not None else m(x))
                    res[name] = v if math.isfinite(v) else None
                except Exception:
                    res[name] = None
        return res

    def metrics_names(self) -> list[str]:
        return list(self.names)


def psnr_of(estimate: Any, clean: Image.Image) -> float:
    """PSNR (dB, RGB) of a (1, 3, H, W) [0, 1] estimate against the clean crop."""
    ref = to_tensor(clean)
    est = estimate.float().clamp(0, 1)
    if est.shape[-2:] != ref.shape[-2:]:
        import torch.nn.functional as F

        est = F.interpolate(est, size=ref.shape[-2:], mode="bicubic").clamp(0, 1)
    return float(10 * np.log10(1.0 / max(float(((est - ref) ** 2).mean()), 1e-12)))


def ae_reconstruction(restorer: Any, clean: Image.Image) -> Image.Image:
    """D(E(clean)): the ceiling of a pure latent method on this crop."""
    import torch

    from restorer.images import tensor_to_pil

    with torch.no_grad():
        x = to_tensor(clean).to(restorer.prior.device)
        return tensor_to_pil(restorer.prior.decode(restorer.prior.encode(x)).clamp(0, 1))


# --- resume -------------------------------------------------------------------------------------------
def row_key(row: dict[str, Any]) -> tuple:
    """Rows match only under the same sampler config, so a resumed run never mixes in stale defaults."""
    return (
        row["dataset"],
        row["image"],
        row["size"],
        row["degradation"],
        row["method"],
        row.get("set", ""),
        row.get("config_hash", ""),
    )


LATER_FIELDS = ("pcdm_fused",)
"""Options added after results were committed: left out of the fingerprint while at their default (they do not
change what the sampler does then), so rows made before they existed still match."""


def config_hash(cfg: Any) -> str:
    """Short fingerprint of a resolved RestoreConfig ('' for the degraded input itself)."""
    if cfg is None:
        return ""
    import hashlib

    values = cfg.model_dump()
    for name in LATER_FIELDS:
        if values.get(name) == type(cfg).model_fields[name].default:
            values.pop(name, None)
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


def read_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill: redo it
                continue
    return rows


# --- summary ------------------------------------------------------------------------------------------
def summarise(
    rows: list[dict[str, Any]],
    methods: list[str],
    degradations: list[str],
    metric_names: list[str],
    info: dict[str, Any],
    cmd: str,
    meta: dict[str, Any],
) -> tuple[dict[str, Any], str]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["degradation"], r["method"])].append(r)
    table = []
    numeric = [*metric_names, "seconds", "steps_run", "rounds", "psnr_pick", "psnr_last", "psnr_best"]
    for deg in degradations:
        for method in methods:
            rs = groups.get((deg, method), [])
            if not rs:
                continue
            entry: dict[str, Any] = {"degradation": deg, "method": method, "n": len(rs)}
            for k in numeric:
                vals = [r[k] for r in rs if r.get(k) is not None]
                entry[k] = float(np.mean(vals)) if vals else None
            spread = [r["psnr"] for r in rs if r.get("psnr") is not None]
            entry["psnr_std"] = float(np.std(spread)) if len(spread) > 1 else None
            entry["psnr_min"] = float(np.min(spread)) if spread else None
            ee = [r["early_exit"] for r in rs if r.get("early_exit") is not None]
            entry["early_exit_rate"] = float(np.mean(ee)) if ee else None
            table.append(entry)
    summary = {"machine": info, "command": cmd, **meta, "metrics": metric_names, "table": table}

    cols = [f"{m.upper()} {direction_arrow(m)}".strip() for m in metric_names]
    md = [header_md("Quality benchmark", info, cmd)]
    for k, v in meta.items():
        md.append(f"- {k}: {v}")
    md += [
        "",
        "Means per degradation × method (PSNR ± its spread over images, then the worst image). `input` is "
        "the degraded image itself; `ae` the prior's autoencoder on the clean crop (a latent method's ceiling); "
        "s/img, steps, rounds and early exit are per restoration; pick / last / best are the PSNR of DQR's "
        "returned x̂0, of the last checkpoint and of the best checkpoint in hindsight (before the detail step).",
        "",
        "| degradation | method | n | " + " | ".join(cols) + " | PSNR ± | PSNR min | s/img | steps | rounds | "
        "early exit | pick / last / best |",
        "|---|---|---|" + "---|" * (len(cols) + 7),
    ]
    for e in table:
        digits = {"psnr": 2, "ssim": 4, "lpips": 4, "piqe": 2, "niqe": 3}
        md.append(
            f"| {e['degradation']} | {e['method']} | {e['n']} | "
            + " | ".join(fmt(e[m], digits.get(m, 3)) for m in metric_names)
            + f" | {fmt(e['psnr_std'])} | {fmt(e['psnr_min'])}"
            + f" | {fmt(e['seconds'], 1)} | {fmt(e['steps_run'], 1)} | {fmt(e['rounds'], 2)} | "
            + (f"{e['early_exit_rate']:.0%}" if e["early_exit_rate"] is not None else "n/a")
            + f" | {fmt(e['psnr_pick'])} / {fmt(e['psnr_last'])} / {fmt(e['psnr_best'])} |"
        )
    md += pivot_md(table, methods, degradations)
    return summary, "\n".join(md) + "\n"


def pivot_md(table: list[dict[str, Any]], methods: list[str], degradations: list[str]) -> list[str]:
    """The same means as one grid: a row per degradation, a column per method, 'PSNR / SSIM' in each cell."""
    cell = {(e["degradation"], e["method"]): e for e in table}
    shown = [m for m in methods if any((d, m) in cell for d in degradations)]
    lines = [
        "",
        "PSNR dB / SSIM, mean over images:",
        "",
        "| degradation | " + " | ".join(shown) + " |",
        "|---|" + "---|" * len(shown),
    ]
    for d in degradations:
        row = []
        for m in shown:
            e = cell.get((d, m))
            row.append("–" if e is None or e.get("psnr") is None else f"{e['psnr']:.2f} / {fmt(e.get('ssim'), 3)}")
        lines.append(f"| {d} | " + " | ".join(row) + " |")
    return lines


# --- main ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="diffusers LDM folder or hub id (e.g. ../shared/weights/mini-ldm)")
    p.add_argument("--data", default="kodak24", help="data set folder name under --data-root (or a path)")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    p.add_argument("--size", type=int, default=128, help="centre-crop size (LOL: longer side resized to this)")
    p.add_argument("--images", type=int, default=3, help="first N images, sorted by name")
    p.add_argument(
        "--degradations", default="clean,noise15,noise25,noise50,lowlight,haze,lowlight+noise,lowlight+haze+noise"
    )
    p.add_argument(
        "--methods",
        default="input,ae,full,bm3d,gamma,dcp,gamma+bm3d",
        help="comma-separated; an override set uses ';' between its keys (e.g. 'dqr=off;kappa=1000')",
    )
    p.add_argument("--set", dest="set_", default="", help="overrides applied to every method: k=v,k=v")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (degradation seeds derive from image names)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--judge", default="piqe", help="DQR judge (pyiqa name, or auto)")
    p.add_argument("--perceptual", default="off", choices=["auto", "on", "off"])
    p.add_argument("--lol", action="store_true", help="real low-light inputs, no-reference scores (PIQE, NIQE)")
    p.add_argument(
        "--niqe-params", type=Path, default=DEFAULT_WEIGHTS_ROOT / "niqe_matlab_release" / "modelparameters.mat"
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--summary-only",
        action="store_true",
        help="restore nothing: rewrite summary.json/summary.md from the rows already in results.jsonl",
    )
    return p


def split_methods(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tqdm import tqdm

    from restorer import Restorer, resolve_config

    cmd = command_line() if argv is None else "python -m benchmarks.quality " + " ".join(argv)
    methods = split_methods(args.methods)
    global_set = parse_set(args.set_)
    if args.lol:
        folder = args.data_root / "lol_v1_eval15_lowonly_cropped" / "low"
        dataset, degradations, metric_names = "lol_v1_eval15_low", ["real-lowlight"], list(NR_METRICS)
    else:
        folder = Path(args.data) if Path(args.data).is_dir() else args.data_root / args.data
        dataset, degradations, metric_names = Path(args.data).name, split_methods(args.degradations), list(FR_METRICS)
    files = list_images(folder, args.images)

    # Validate every method's config before loading anything.
    configs: dict[str, Any] = {}
    for m in methods:
        spec = method_config(m)
        if spec is not None:
            preset, overrides = spec
            configs[m] = resolve_config(preset, {**overrides, **global_set, "seed": args.seed})

    args.out.mkdir(parents=True, exist_ok=True)
    jsonl = args.out / "results.jsonl"
    rows = read_rows(jsonl)
    done = {row_key(r) for r in rows}
    set_str = ",".join(f"{k}={v}" for k, v in global_set.items())

    metrics = Metrics(tuple(metric_names), args.niqe_params)
    restorer = None
    if (configs or AE_CEILING in methods) and not args.summary_only:
        restorer = Restorer.load(
            args.model, device=args.device, dtype=args.dtype, judge=args.judge, perceptual=args.perceptual
        )

    jobs = [(f, d, m) for f in files for d in degradations for m in methods]
    hashes = {m: config_hash(configs.get(m)) for m in methods}
    todo = [j for j in jobs if (dataset, j[0].stem, args.size, j[1], j[2], set_str, hashes[j[2]]) not in done]
    if args.summary_only:
        todo = []
    print(f"{len(jobs)} rows, {len(jobs) - len(todo)} already in {jsonl}, {len(todo)} to run", file=sys.stderr)
    with open(jsonl, "a") as fh:
        for f, deg, method in tqdm(todo, disable=args.no_progress, desc="quality"):
            src = Image.open(f)
            if args.lol:
                lq, clean = fit_longer_side(src, args.size), None
            else:
                lq, clean = degrade(centre_crop(src, args.size), deg, f.stem)
            row: dict[str, Any] = {
                "dataset": dataset,
                "image": f.stem,
                "size": args.size,
                "degradation": deg,
                "method": method,
                "set": set_str,
                "config_hash": hashes[method],
            }
            if method == "input":
                out = lq
                row.update(steps_run=None, rounds=None, early_exit=None, seconds=None, final_score=None)
            elif method in BASELINES or method == AE_CEILING:
                t0 = time.perf_counter()
                out = (
                    ae_reconstruction(restorer, clean)
                    if method == AE_CEILING
                    else to_pil(BASELINES[method](to_array(lq)))
                )
                row.update(
                    steps_run=None,
                    rounds=None,
                    early_exit=None,
                    final_score=None,
                    seconds=round(time.perf_counter() - t0, 3),
                )
            else:
                t0 = time.perf_counter()
                res = restorer.restore(lq, configs[method])
                out = res.image
                row.update(
                    steps_run=res.steps_run,
                    rounds=res.rounds,
                    early_exit=res.early_exit,
                    seconds=round(time.perf_counter() - t0, 3),
                    final_score=res.final_score,
                    terms=res.terms,
                    judge=res.judge,
                    config=res.config,
                    tone_gamma=res.tone_gamma,
                    tone_white=res.tone_white,
                    dehaze_transmission=res.dehaze_transmission,
                )
                if clean is not None:  # DQR's pick vs the last and the best checkpoint in hindsight (raw x̂0)
                    ck = [psnr_of(c.estimate, clean) for c in res.checkpoints]
                    row.update(
                        checkpoint_psnr=ck, psnr_pick=ck[res.chosen_checkpoint], psnr_last=ck[-1], psnr_best=max(ck)
                    )
            row.update(metrics.score(out, clean))
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            rows.append(row)

    info = machine(args.device)
    meta = {
        "model": args.model,
        "dataset": dataset,
        "size": args.size,
        "images": [f.stem for f in files],
        "degradations": degradations,
        "methods": methods,
        "set": set_str,
        "seed": args.seed,
        "judge": args.judge,
        "perceptual": args.perceptual,
        "metric_notes": "pyiqa defaults: PSNR on RGB, SSIM on the Y channel"
        if not args.lol
        else "pyiqa PIQE; NIQE with the MATLAB release parameters (lower is better for both)",
        "unavailable_metrics": metrics.unavailable or "none",
    }
    if restorer is not None:
        meta["restorer"] = restorer.describe()
    wanted = {(dataset, f.stem, args.size, d, m, set_str, hashes[m]) for f, d, m in jobs}
    current = [r for r in rows if row_key(r) in wanted]
    missing = len(wanted - {row_key(r) for r in current})
    if missing:
        meta["incomplete"] = f"{missing} of {len(wanted)} rows not run yet (rerun the command to resume)"
    summary, md = summarise(current, methods, degradations, metrics.metrics_names(), info, cmd, meta)
    write_json(args.out / "summary.json", summary)
    (args.out / "summary.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
