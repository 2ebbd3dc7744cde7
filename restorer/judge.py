"""The DQR quality judge: a no-reference IQA metric from pyiqa, normalised so higher is better in [0, 1].

Paper: ARNIQA (needs downloaded weights). Offline: PIQE (no weights) or NIQE with a local parameter file
(`niqe@/path/modelparameters.mat`). `auto` = ARNIQA if its weights load, else PIQE; every result records
which judge ran.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from .errors import JudgeUnavailableError

log = logging.getLogger(__name__)

AUTO = "auto"
AUTO_CHAIN = ("arniqa", "piqe")
"""`auto` tries the paper's judge first, then the weight-free one."""

MIN_SIDE = 32
"""Block-based metrics (PIQE 16 px, NIQE patches) fail on tiny images: smaller inputs are upsampled first."""

UNBOUNDED_SPAN = 100.0
"""For metrics whose range is open ('~0, ~100'), raw scores are clipped to [low, low + span] first."""


def _parse_range(text: str) -> tuple[float, float]:
    """pyiqa writes ranges like '0, 1' or '~0, ~100' ('~' = soft bound)."""
    low, high = (float(p.strip().lstrip("~")) for p in text.split(","))
    return low, high


@dataclass
class QualityJudge:
    """A pyiqa metric with its direction and range, scoring [0, 1] RGB tensors without grad."""

    name: str
    metric: torch.nn.Module
    lower_better: bool
    low: float
    high: float

    @torch.no_grad()
    def raw(self, x: torch.Tensor) -> float:
        x = x.float().clamp(0, 1)
        if min(x.shape[-2:]) < MIN_SIDE:
            scale = MIN_SIDE / min(x.shape[-2:])
            size = (max(MIN_SIDE, round(x.shape[-2] * scale)), max(MIN_SIDE, round(x.shape[-1] * scale)))
            x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return float(self.metric(x).mean())

    def normalise(self, raw: float) -> float:
        """Map the metric's own value to 'higher is better' in [0, 1]."""
        if not math.isfinite(raw):
            return 0.0
        s = (min(max(raw, self.low), self.high) - self.low) / (self.high - self.low)
        return 1.0 - s if self.lower_better else s

    def score(self, x: torch.Tensor) -> tuple[float, float]:
        """(normalised score, raw score)."""
        r = self.raw(x)
        return self.normalise(r), r


def load_judge(spec: str, device: torch.device | str = "cpu") -> QualityJudge:
    """Load a judge by pyiqa name (`piqe`, `arniqa`, …), `name@weights_path`, or `auto`."""
    if spec == AUTO:
        errors = []
        for name in AUTO_CHAIN:
            try:
                return load_judge(name, device)
            except JudgeUnavailableError as exc:
                log.warning("judge %s unavailable, trying the next: %s", name, exc)
                errors.append(str(exc))
        raise JudgeUnavailableError("no judge in the auto chain could load: " + " | ".join(errors))

    import pyiqa
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    name, _, weights = spec.partition("@")
    facts = DEFAULT_CONFIGS.get(name)
    if facts is None or facts.get("metric_mode") != "NR":
        raise JudgeUnavailableError(f"judge {name!r} is not a no-reference pyiqa metric")
    kwargs = {"pretrained_model_path": weights} if weights else {}
    try:
        metric = pyiqa.create_metric(name, device=torch.device(device), as_loss=False, **kwargs)
    except Exception as exc:  # pyiqa raises URLError/OSError/RuntimeError when weights cannot be had
        raise JudgeUnavailableError(
            f"judge {name!r} cannot load ({type(exc).__name__}: {str(exc)[:160]}); "
            "its weights must be in pyiqa's cache offline, or choose judge=piqe"
        ) from exc
    low, high = _parse_range(facts.get("score_range", "0, 1"))
    if high <= low:
        high = low + UNBOUNDED_SPAN
    return QualityJudge(spec, metric, bool(facts.get("lower_better", False)), low, high)
