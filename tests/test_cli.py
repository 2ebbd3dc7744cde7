"""`upzir restore` and `upzir degrade` as a user runs them: a real subprocess, one-line errors, a report."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from restorer_helpers import random_image


def upzir(*args: str, timeout: float = 300):
    return subprocess.run(
        [sys.executable, "-m", "restorer.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "in.png"
    random_image(30, 22).save(path)
    return path


def test_restore_writes_image_and_report(tiny_ldm_dir, photo, tmp_path):
    out, report = tmp_path / "out.png", tmp_path / "report.json"
    proc = upzir(
        "restore",
        str(photo),
        "-o",
        str(out),
        "--model",
        str(tiny_ldm_dir),
        "--preset",
        "fast",
        "--steps",
        "4",
        "--seed",
        "3",
        "--device",
        "cpu",
        "--judge",
        "piqe",
        "--set",
        "checkpoint_every=2",
        "--report",
        str(report),
    )
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).size == (30, 22)
    data = json.loads(report.read_text())
    assert data["steps_run"] <= 4 and data["rounds"] >= 1 and isinstance(data["early_exit"], bool)
    assert data["judge"] == "piqe" and data["config"]["seed"] == 3 and data["seconds"] > 0
    assert [c["step"] for c in data["checkpoints"]][:1] == [2]
    assert "round" in proc.stderr  # the progress bar
    assert "reference" not in data


def test_degrade_then_restore_against_the_reference(tiny_ldm_dir, tmp_path):
    """The try-it-yourself loop: degrade a clean photo, restore it, score both against the clean crop."""
    photo, dark, clean = tmp_path / "photo.png", tmp_path / "dark.png", tmp_path / "clean.png"
    random_image(40, 30, seed=5).save(photo)
    proc = upzir(
        "degrade", str(photo), "--kind", "lowlight+noise", "--crop", "24", "-o", str(dark), "--clean-output", str(clean)
    )
    assert proc.returncode == 0, proc.stderr
    assert Image.open(dark).size == Image.open(clean).size == (24, 24)
    assert np.asarray(Image.open(dark)).mean() < np.asarray(Image.open(clean)).mean() / 2  # it is darker
    again = tmp_path / "again.png"
    assert upzir("degrade", str(photo), "--kind", "lowlight+noise", "--crop", "24", "-o", str(again)).returncode == 0
    assert again.read_bytes() == dark.read_bytes()  # seeded by file name and kind

    out, report = tmp_path / "out.png", tmp_path / "report.json"
    proc = upzir(
        "restore",
        str(dark),
        "-o",
        str(out),
        "--model",
        str(tiny_ldm_dir),
        "--steps",
        "2",
        "--set",
        "checkpoint_every=1",
        "--device",
        "cpu",
        "--judge",
        "piqe",
        "--reference",
        str(clean),
        "--report",
        str(report),
    )
    assert proc.returncode == 0, proc.stderr
    ref = json.loads(report.read_text())["reference"]
    assert ref["path"] == str(clean)
    for side in ("input", "output"):
        assert 0 < ref[side]["psnr"] < 100 and -1 <= ref[side]["ssim"] <= 1
    assert "against" in proc.stderr and "PSNR" in proc.stderr


def test_reference_scores_match_the_definition():
    from restorer.compare import reference_scores

    a = random_image(32, 32, seed=1)
    noisy = Image.fromarray(np.clip(np.asarray(a, dtype=np.float64) + 10, 0, 255).astype(np.uint8))
    mse = ((np.asarray(noisy, dtype=np.float64) - np.asarray(a, dtype=np.float64)) / 255) ** 2
    scores = reference_scores(noisy, a)
    assert scores["psnr"] == pytest.approx(10 * np.log10(1 / mse.mean()), abs=0.01)
    assert reference_scores(a, a)["ssim"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (["restore", "MISSING.png", "-o", "x.png"], "no such file"),
        (["restore", "BAD", "-o", "x.png"], "not a readable image"),
        (["restore", "IN", "-o", "x.png", "--set", "nope=1"], "unknown option 'nope'"),
        (["restore", "IN", "-o", "x.png", "--set", "steps=abc"], "steps"),
        (["restore", "IN", "-o", "x.png", "--preset", "turbo"], "invalid choice"),
        (["restore", "IN", "-o", "NOFOLDER/x.png"], "does not exist"),
        (["restore", "IN", "-o", "x.txt"], "unknown output format"),
        (["restore", "IN", "-o", "x.png", "--model", "EMPTY"], "not a diffusers LDM folder"),
        (["restore", "IN", "-o", "x.png", "--model", "nobody/no-such-model"], "HF_HOME"),
        (["restore", "IN", "-o", "x.png", "--reference", "SMALL"], "must have the same size"),
        (["restore", "IN", "-o", "x.png", "--reference", "MISSING.png"], "no such file"),
        (["degrade", "IN", "-o", "x.png", "--kind", "fog"], "invalid choice"),
        (["degrade", "IN", "-o", "x.png"], "--kind"),
        (["degrade", "MISSING.png", "-o", "x.png", "--kind", "haze"], "no such file"),
        (["degrade", "IN", "-o", "x.txt", "--kind", "haze"], "unknown output format"),
        (["degrade", "IN", "-o", "x.png", "--kind", "haze", "--crop", "2"], "at least 8"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_user_errors_are_one_line_without_traceback(args, message, photo, tmp_path, tiny_ldm_dir):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"definitely not an image")
    (tmp_path / "empty").mkdir()
    random_image(10, 10).save(tmp_path / "small.png")
    subst = {
        "IN": str(photo),
        "BAD": str(bad),
        "MISSING.png": str(tmp_path / "missing.png"),
        "x.png": str(tmp_path / "x.png"),
        "x.txt": str(tmp_path / "x.txt"),
        "NOFOLDER/x.png": str(tmp_path / "nofolder" / "x.png"),
        "EMPTY": str(tmp_path / "empty"),
        "SMALL": str(tmp_path / "small.png"),
    }
    argv = [subst.get(a, a) for a in args]
    if "--model" not in argv and argv[0] == "restore":
        argv += ["--model", str(tiny_ldm_dir)]
    proc = upzir(*argv, "--device", "cpu") if argv[0] == "restore" else upzir(*argv)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("upzir: error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
