"""UP-ZeroIR zero-shot image restoration as a library (no web code).

from restorer import Restorer, resolve_config
r = Restorer.load("path/to/ldm-or-hub-id", device="cuda", dtype="bf16")
result = r.restore(image, resolve_config("balanced", {"seed": 1}), on_checkpoint=print)
"""

from .config import DEFAULT_PRESET, PRESETS, RestoreConfig, parse_overrides, resolve_config
from .errors import (
    ConfigError,
    ImageError,
    JudgeUnavailableError,
    ModelLoadError,
    RestoreCanceled,
    RestorerError,
)
from .events import Checkpoint, Decision, RestoreResult, StepEvent

_LAZY = {"Restorer": "pipeline", "Prior": "prior", "load_prior": "prior", "DEFAULT_MODEL": "prior"}
"""Heavy names (torch, diffusers) load on first use, so `restorer.config` stays cheap for the API process."""


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_PRESET",
    "PRESETS",
    "Checkpoint",
    "ConfigError",
    "Decision",
    "ImageError",
    "JudgeUnavailableError",
    "ModelLoadError",
    "Prior",
    "RestoreCanceled",
    "RestoreConfig",
    "RestoreResult",
    "Restorer",
    "RestorerError",
    "StepEvent",
    "load_prior",
    "parse_overrides",
    "resolve_config",
]
