"""The benchmark harnesses: seeded degradations behave as named; quality and speed run end to end on the
tiny prior and write their files; a quality rerun resumes instead of duplicating rows. No timings are checked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from restorer.degradations import DEGRADATIONS, degrade, to_array


def _clean(size: int = 48, seed: int = 0) -> Image.Image:
    """A smooth mid-tone test picture with some texture (gradients + seeded noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([0.3 + 0.4 * xx, 0.3 + 0.4 * yy, 0.5 + 0.2 * np.sin(6 * xx)], -1)
    arr = np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1)
    return Image.fromarray((arr * 255).astype(np.uint8), "RGB")


@pytest.mark.parametrize("name", sorted(set(DEGRADATIONS) - {"clean"}))
def test_degradation_is_deterministic_and_in_range(name: str) -> None:
    clean = _clean()
    a, c = degrade(clean, name, "img0")
    b, _ = degrade(clean, name, "img0")
    other, _ = degrade(clean, name, "img1")
    assert a.size == clean.size and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b)), "same key and name must give the same image"
    assert not np.array_equal(np.asarray(a), np.asarray(other)), "another image key draws other parameters"
    assert np.array_equal(np.asarray(c), np.asarray(clean))
    x = to_array(a)
    assert x.min() >= 0.0 and x.max() <= 1.0


def test_lowlight_is_darker_and_haze_is_brighter_with_less_contrast() -> None:
    clean = to_array(_clean())
    for key in ("a", "b", "c"):
        low = to_array(degrade(_clean(), "lowlight", key)[0])
        assert low.mean() < 0.5 * clean.mean()
        hazy = to_array(degrade(_clean(), "haze", key)[0])
        assert hazy.mean() > clean.mean()
        assert hazy.std() < clean.std()
        mixed = to_array(degrade(_clean(), "lowlight+haze+noise", key)[0])
        assert mixed.mean() < clean.mean()


def test_noise_levels_match_sigma() -> None:
    flat = Image.fromarray(np.full((64, 64, 3), 128, np.uint8), "RGB")
    for sigma in (15, 25, 50):
        noisy = np.asarray(degrade(flat, f"noise{sigma}", "k")[0], dtype=np.float64)
        assert abs(noisy.std() - sigma) < 0.1 * sigma


def _fake_data_root(tmp_path: Path) -> Path:
    folder = tmp_path / "data" / "fake"
    folder.mkdir(parents=True)
    for i in range(2):
        _clean(40, seed=i).save(folder / f"im{i}.png")
    return tmp_path / "data"


def test_quality_runs_end_to_end_and_resumes(tiny_ldm_dir: Path, tmp_path: Path) -> None:
    from benchmarks import quality

    out = tmp_path / "q"
    argv = [
        "--model",
        str(tiny_ldm_dir),
        "--data-root",
        str(_fake_data_root(tmp_path)),
        "--data",
        "fake",
        "--size",
        "32",
        "--images",
        "2",
        "--degradations",
        "noise25",
        "--methods",
        "input,full,dqr=off;kappa=100",
        "--set",
        "steps=2,checkpoint_every=1",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert quality.main(argv) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 3
    assert {r["method"] for r in rows} == {"input", "full", "dqr=off;kappa=100"}
    for r in rows:
        assert r["psnr"] is not None and 0 < r["ssim"] <= 1
        if r["method"] != "input":
            assert r["steps_run"] == 2 and r["rounds"] == 1
    md = (out / "summary.md").read_text()
    assert "| noise25 | input | 2 |" in md and "| noise25 | full | 2 |" in md
    assert "steps=2,checkpoint_every=1" in md  # the command line is in the header
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["table"]) == 3

    # A rerun finds every row and restores nothing: no duplicate rows.
    before = (out / "results.jsonl").read_text()
    assert quality.main(argv) == 0
    assert (out / "results.jsonl").read_text() == before

    # A cut-short file (last row lost) is completed, not duplicated.
    (out / "results.jsonl").write_text("".join(before.splitlines(keepends=True)[:-1]))
    assert quality.main(argv) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    keys = [(r["image"], r["method"]) for r in rows]
    assert len(keys) == 6 and len(set(keys)) == 6


def test_quality_rejects_unknown_method(tmp_path: Path) -> None:
    from benchmarks import quality

    with pytest.raises(SystemExit):
        quality.main(
            [
                "--model",
                "x",
                "--data-root",
                str(_fake_data_root(tmp_path)),
                "--data",
                "fake",
                "--methods",
                "bogus",
                "--out",
                str(tmp_path / "q"),
            ]
        )


def test_speed_runs_on_tiny_model(tiny_ldm_dir: Path, tmp_path: Path) -> None:
    from benchmarks import speed

    out = tmp_path / "s"
    assert (
        speed.main(
            [
                "--model",
                str(tiny_ldm_dir),
                "--size",
                "32",
                "--presets",
                "fast",
                "--set",
                "steps=2,checkpoint_every=1",
                "--concurrent",
                "1,2",
                "--batch",
                "2",
                "--out",
                str(out),
                "--data-root",
                str(tmp_path / "nodata"),
            ]
        )
        == 0
    )
    data = json.loads((out / "speed.json").read_text())
    assert [(r["preset"], r["mode"], r["concurrent"]) for r in data["rows"]] == [
        ("fast", "threads", 1),
        ("fast", "threads", 2),
        ("fast", "batch", 2),
    ]
    for r in data["rows"]:
        assert r["steps_run"] == 2 and r["ms_per_step"] > 0 and r["images_per_min"] > 0
    assert "random" not in data["weights"]
    assert "| fast | batch | 2 |" in (out / "speed.md").read_text()


def test_quality_lol_no_reference(tiny_ldm_dir: Path, tmp_path: Path) -> None:
    from benchmarks import quality

    low = tmp_path / "data" / "lol_v1_eval15_lowonly_cropped" / "low"
    low.mkdir(parents=True)
    Image.fromarray((np.asarray(_clean(48)) * 0.2).astype(np.uint8), "RGB").save(low / "1.png")
    out = tmp_path / "lol"
    assert (
        quality.main(
            [
                "--model",
                str(tiny_ldm_dir),
                "--data-root",
                str(tmp_path / "data"),
                "--lol",
                "--size",
                "48",
                "--images",
                "1",
                "--methods",
                "input,full",
                "--set",
                "steps=2,checkpoint_every=1",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["method"] for r in rows] == ["input", "full"]
    assert all(r["degradation"] == "real-lowlight" and r["piqe"] is not None for r in rows)
    assert "PIQE" in (out / "summary.md").read_text()


def test_baselines_ceiling_and_dqr_columns(tiny_ldm_dir: Path, tmp_path: Path) -> None:
    """The user's alternatives and the autoencoder ceiling run beside the sampler; rows carry DQR's pick."""
    from benchmarks import quality

    out = tmp_path / "b"
    argv = [
        "--model",
        str(tiny_ldm_dir),
        "--data-root",
        str(_fake_data_root(tmp_path)),
        "--data",
        "fake",
        "--size",
        "32",
        "--images",
        "1",
        "--degradations",
        "clean,lowlight",
        "--methods",
        "input,ae,gamma,dcp,full",
        "--set",
        "steps=4,checkpoint_every=2",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert quality.main(argv) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {(r["degradation"], r["method"]) for r in rows} == {
        (d, m) for d in ("clean", "lowlight") for m in ("input", "ae", "gamma", "dcp", "full")
    }
    clean_input = next(r for r in rows if r["degradation"] == "clean" and r["method"] == "input")
    assert clean_input["psnr"] is None or clean_input["psnr"] > 60  # 'clean' is the crop itself
    full = [r for r in rows if r["method"] == "full"]
    for r in full:
        assert len(r["checkpoint_psnr"]) == 2 and r["psnr_best"] == max(r["checkpoint_psnr"])
        assert r["psnr_last"] == r["checkpoint_psnr"][-1] and r["psnr_pick"] in r["checkpoint_psnr"]
    md = (out / "summary.md").read_text()
    assert "| lowlight | gamma | 1 |" in md and "pick / last / best" in md


def test_baselines_do_what_they_are_for() -> None:
    from benchmarks.baselines import BASELINES, estimate_sigma
    from restorer.degradations import DEGRADATIONS

    rng = np.random.default_rng(0)
    x = np.asarray(_clean(64, seed=3), dtype=np.float64) / 255.0
    psnr = lambda a: 10 * np.log10(1 / np.mean((a - x) ** 2))  # noqa: E731
    dark = DEGRADATIONS["lowlight"](x, rng)
    assert psnr(BASELINES["gamma"](dark)) > psnr(dark) + 3
    assert abs(BASELINES["gamma"](dark).mean() - 0.45) < 0.1
    hazy = DEGRADATIONS["haze"](x, rng)
    assert BASELINES["dcp"](hazy).mean() < hazy.mean()  # the veil is taken off
    noisy = DEGRADATIONS["noise25"](x, rng)
    assert abs(estimate_sigma(noisy) - 25 / 255) < 5 / 255
    assert psnr(BASELINES["bm3d"](noisy)) > psnr(noisy) + 2


def test_haze_tradeoff_reports_gate_and_strength(tmp_path: Path) -> None:
    """The haze trade-off script on a fake data root (2 images to haze, 3 clean): every table is written."""
    from benchmarks import haze_tradeoff

    root = tmp_path / "data"
    for folder, n in (("cbsd68_even", 2), ("bsds500_clean/train", 3)):
        (root / folder).mkdir(parents=True)
        for i in range(n):
            _clean(48, seed=10 * n + i).save(root / folder / f"im{i}.png")
    out = tmp_path / "haze"
    assert (
        haze_tradeoff.main(["--data-root", str(root), "--size", "48", "--hazy", "2", "--clean", "3", "--out", str(out)])
        == 0
    )
    data = json.loads((out / "results.json").read_text())
    assert {g["omega"] for g in data["gated"]} == set(haze_tradeoff.OMEGAS)
    assert all(0.0 <= g["clean_flagged"] <= 1.0 for g in data["best_gates"].values())
    assert len(data["strengths"]) == len(haze_tradeoff.OMEGAS) * len(haze_tradeoff.PATCH_SHARES)
    assert "default gate" in (out / "summary.md").read_text()


def test_dark_targets_scores_every_variant(tmp_path: Path) -> None:
    """The dark-target study on a fake data root: a row per variant, and denoising beats the raw curve on noise."""
    from benchmarks import dark_targets

    root = tmp_path / "data"
    for folder in ("cbsd68_even", "bsds500_clean/test"):
        (root / folder).mkdir(parents=True)
        for i in range(2):
            _clean(64, seed=20 + i).save(root / folder / f"im{i}.png")
    out = tmp_path / "dark"
    assert (
        dark_targets.main(
            [
                "--data-root",
                str(root),
                "--size",
                "64",
                "--images",
                "2",
                "--variants",
                "default dark_denoise=off",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = {r["variant"]: r for r in json.loads((out / "summary.json").read_text())["rows"]}
    assert set(rows) == {"default", "dark_denoise=off"}
    assert rows["default"]["lowlight+noise"]["psnr"] > rows["dark_denoise=off"]["lowlight+noise"]["psnr"]
    assert "`dark_denoise=off`" in (out / "summary.md").read_text()
