"""Helpers shared by the quality and speed harnesses: machine description, override parsing, paths."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
"""The evaluation images and weights live beside the checkout, never in it."""


class SharedRoots(BaseSettings):
    """Where evaluation data and local weights are: `UPZIR_DATA_ROOT`, `UPZIR_WEIGHTS_ROOT` (default ../shared)."""

    model_config = SettingsConfigDict(env_prefix="UPZIR_", extra="ignore", frozen=True)

    data_root: Path = Field(SHARED / "data", description="Kodak24, CBSD68, BSDS500, LOL (with a MANIFEST).")
    weights_root: Path = Field(SHARED / "weights", description="mini-ldm and NIQE parameters.")


ROOTS = SharedRoots()
DEFAULT_DATA_ROOT = ROOTS.data_root
DEFAULT_WEIGHTS_ROOT = ROOTS.weights_root


def parse_set(text: str | None) -> dict[str, str]:
    """`key=value[,key=value][;key=value]` → dict (values validated later by RestoreConfig)."""
    out: dict[str, str] = {}
    if not text:
        return out
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"override {part!r} is not of the form key=value")
        out[key.strip()] = value.strip()
    return out


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, "-m", _module_name(), *sys.argv[1:]])


def _module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None and spec.name else Path(sys.argv[0]).name


def machine(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def header_md(title: str, info: dict[str, Any], cmd: str) -> str:
    lines = [
        f"# {title}",
        "",
        f"- date: {info['date']}",
        f"- machine: {info['platform']}, {info['cpu_count']} CPUs, torch {info['torch']} "
        f"({info['torch_threads']} threads), device {info['device']}" + (f" ({info['gpu']})" if "gpu" in info else ""),
        f"- command: `{cmd}`",
        "",
    ]
    return "\n".join(lines)


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")
