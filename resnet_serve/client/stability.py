"""perf_analyzer's rule for a measurement you can trust, as plain arithmetic over windows.

A level is measured in consecutive windows of equal length until the last three agree: the
ratio of the largest to the smallest throughput, and of the largest to the smallest p99
latency, are both within the stability percentage (perf_analyzer's "max / min of the recent 3
measurements"). A level that has not settled after ``max_trials`` windows is reported as
unstable, never averaged into a number that looks trustworthy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from resnet_serve.errors import ClientError


class UnstableMeasurementError(ClientError):
    """No run of consecutive windows agreed within the stability percentage."""


class WindowFigures(Protocol):
    @property
    def inferences_per_second(self) -> float: ...

    @property
    def p99_ms(self) -> float: ...


W = TypeVar("W", bound=WindowFigures)


@dataclass(frozen=True)
class StabilityRule:
    """perf_analyzer's defaults: 3 windows within 10%, at most 10 windows."""

    percentage: float = 10.0
    windows: int = 3
    max_trials: int = 10

    def __post_init__(self) -> None:
        if self.percentage <= 0 or self.windows < 1 or self.max_trials < self.windows:
            raise ClientError(
                f"a stability rule needs a percentage > 0 and max trials ≥ {self.windows} windows, "
                f"got {self.percentage:g}% and {self.max_trials}"
            )

    def holds(self, windows: Sequence[WindowFigures]) -> bool:
        """Whether the last ``self.windows`` windows agree in throughput and p99 latency."""
        if len(windows) < self.windows:
            return False
        recent = windows[-self.windows :]
        return all(
            _within(values, self.percentage)
            for values in ([w.inferences_per_second for w in recent], [w.p99_ms for w in recent])
        )


def _within(values: list[float], percentage: float) -> bool:
    low, high = min(values), max(values)
    if not all(math.isfinite(v) for v in values) or low <= 0:
        return False
    return high / low <= 1 + percentage / 100


def measure_until_stable(next_window: Callable[[], W], *, rule: StabilityRule, label: str) -> list[W]:
    """Take windows from ``next_window`` until ``rule`` holds; return the agreeing windows.

    Raises UnstableMeasurementError naming ``label`` and every window's figures otherwise.
    """
    windows: list[W] = []
    while len(windows) < rule.max_trials:
        windows.append(next_window())
        if rule.holds(windows):
            return windows[-rule.windows :]
    figures = ", ".join(f"{w.inferences_per_second:.0f}/s p99 {w.p99_ms:.2f} ms" for w in windows)
    raise UnstableMeasurementError(
        f"{label}: no {rule.windows} consecutive windows within ±{rule.percentage:g}% in "
        f"{rule.max_trials} windows ({figures}); lengthen the windows (--measurement-interval), allow more "
        "of them (--max-trials) or a larger spread (--stability-percentage), or quiet the machine"
    )
