"""Admission control for accelerator memory: a job starts, or joins a batch, only if its estimate fits.

A job that cannot fit even alone fails at once with a message that says how much it needs and what to send
instead, rather than crashing the worker with an out-of-memory error mid-schedule. The per-pixel estimate
starts from `Settings.job_bytes_per_pixel`; on CUDA it rises with every larger per-step peak measured and,
once a job has run its whole schedule, becomes the largest measured.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from jobs.settings import Settings

if TYPE_CHECKING:  # torch loads with the model, not with this module
    import torch

MIB = 2**20
GIB = 2**30


class JobTooLarge(Exception):
    """The job's estimated memory exceeds what this worker has for jobs."""


class MemoryBudget:
    def __init__(self, capacity_bytes: int | None, bytes_per_pixel: float, device: torch.device) -> None:
        import torch

        self.capacity, self.bytes_per_pixel, self.device = capacity_bytes, bytes_per_pixel, device
        self.observed = 0.0  # largest measured bytes per pixel of one step
        self.baseline = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0

    @classmethod
    def for_device(cls, device: torch.device, settings: Settings) -> MemoryBudget:
        """Capacity from the setting, else (CUDA) the device's share minus what the model holds, else none."""
        import torch

        if settings.memory_budget_mb is not None:
            capacity: int | None = settings.memory_budget_mb * MIB
        elif device.type == "cuda":
            total = torch.cuda.get_device_properties(device).total_memory
            capacity = int(total * settings.gpu_memory_fraction) - torch.cuda.memory_allocated(device)
        else:
            capacity = None
        return cls(capacity, settings.job_bytes_per_pixel, device)

    def need(self, pixels: int) -> int:
        return math.ceil(self.bytes_per_pixel * pixels)

    def fits(self, pixels_in_use: int, pixels: int) -> bool:
        return self.capacity is None or self.need(pixels_in_use + pixels) <= self.capacity

    def check_alone(self, size: tuple[int, int]) -> None:
        """JobTooLarge (with what would fit) when a canvas of `size` cannot run even as the only job."""
        w, h = size
        if self.fits(0, w * h):
            return
        assert self.capacity is not None
        max_pixels = int(self.capacity / self.bytes_per_pixel)
        raise JobTooLarge(
            f"does not fit in this worker's memory: a {w}x{h} canvas needs about {self.need(w * h) / GIB:.2f} GiB, "
            f"the worker has {self.capacity / GIB:.2f} GiB for jobs; send a smaller image or max_pixels "
            f"≤ {max_pixels} (about {math.isqrt(max_pixels)}² pixels)"
        )

    def begin_step(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def end_step(self, pixels: int) -> int | None:
        """Peak bytes of the step just run (CUDA; None on the CPU); the estimate never falls below it."""
        if self.device.type != "cuda" or pixels <= 0:
            return None
        import torch

        peak = torch.cuda.max_memory_allocated(self.device)
        self.observed = max(self.observed, max(0, peak - self.baseline) / pixels)
        self.bytes_per_pixel = max(self.bytes_per_pixel, self.observed)
        return peak

    def job_completed(self) -> None:
        """After a whole schedule (warm-up and guided steps) the measured peak replaces the starting guess."""
        if self.observed > 0:
            self.bytes_per_pixel = self.observed
