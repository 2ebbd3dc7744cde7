"""`upzir restore` as a user runs it: a real subprocess, one-line errors, a report."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from restorer_helpers import random_image


def upzir(*args: str, timeout: float = 300):
    return subprocess.run([sys.executable, "-m", "restorer.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "in.png"
    random_image(30, 22).save(path)
    return path


def test_restore_writes_image_and_report(tiny_ldm_dir, photo, tmp_path):
    out, report = tmp_path / "out.png", tmp_path / "report.json"
    proc = upzir("restore", str(photo), "-o", str(out), "--model", str(tiny_ldm_dir), "--preset", "fast",
                 "--steps", "4", "--seed", "3", "--device", "cpu", "--judge", "piqe", "--set", "checkpoint_every=2",
                 "--report", str(report))
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).size == (30, 22)
    data = json.loads(report.read_text())
    assert data["steps_run"] <= 4 and data["rounds"] >= 1 and isinstance(data["early_exit"], bool)
    assert data["judge"] == "piqe" and data["config"]["seed"] == 3 and data["seconds"] > 0
    assert [c["step"] for c in data["checkpoints"]][:1] == [2]
    assert "round" in proc.stderr  # the progress bar


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
        (["frobnicate"], "invalid choice"),
    ],
)
def test_user_errors_are_one_line_without_traceback(args, message, photo, tmp_path, tiny_ldm_dir):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"definitely not an image")
    (tmp_path / "empty").mkdir()
    subst = {"IN": str(photo), "BAD": str(bad), "MISSING.png": str(tmp_path / "missing.png"),
             "x.png": str(tmp_path / "x.png"), "x.txt": str(tmp_path / "x.txt"),
             "NOFOLDER/x.png": str(tmp_path / "nofolder" / "x.png"), "EMPTY": str(tmp_path / "empty")}
    argv = [subst.get(a, a) for a in args]
    if "--model" not in argv and argv[0] == "restore":
        argv += ["--model", str(tiny_ldm_dir)]
    proc = upzir(*argv, "--device", "cpu") if argv[0] == "restore" else upzir(*argv)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("upzir: error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
