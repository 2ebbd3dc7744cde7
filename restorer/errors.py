"""Exceptions the library raises; callers (CLI, worker) map them to messages and statuses."""

from __future__ import annotations


class RestorerError(Exception):
    """Base class: anything the library reports as a clean, user-facing failure."""


class ConfigError(RestorerError, ValueError):
    """An option, preset or override is unknown or out of range."""


class ImageError(RestorerError, ValueError):
    """The input image cannot be read, is empty, or is not usable."""


class ModelLoadError(RestorerError):
    """The prior (or a metric's weights) could not be loaded; the message says how to provide it."""


class JudgeUnavailableError(ModelLoadError):
    """The requested no-reference quality judge cannot be loaded (e.g. ARNIQA weights offline)."""


class RestoreCanceled(RestorerError):
    """The caller's cancel check returned True; the sampler stopped at the next step."""

    def __init__(self, steps_run: int) -> None:
        super().__init__(f"restoration canceled after {steps_run} steps")
        self.steps_run = steps_run
