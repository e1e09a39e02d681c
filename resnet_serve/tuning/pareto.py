"""The arithmetic of choosing a serving configuration: points in, indices out.

A leaf like ``resnet_serve.parity``: each point is one measured candidate's throughput and p99
latency. A point is on the Pareto front when no other point is at least as fast with a p99 at
least as low and better in one of them. The best point under a p99 budget is the fastest one
within it (the lower p99 breaks a tie); it is always on the front. Search order (quick mode)
uses ``rank``, which also orders points that miss the budget: nearer the budget first.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["best_within", "pareto_front", "rank"]

Point = tuple[float, float]  # (throughput, p99 ms)


def pareto_front(points: Sequence[Point]) -> list[int]:
    """Indices of the points no other point dominates, by descending throughput."""
    front = [
        i for i, (throughput, p99) in enumerate(points)
        if not any(
            other_throughput >= throughput and other_p99 <= p99 and (other_throughput, other_p99) != (throughput, p99)
            for other_throughput, other_p99 in points
        )
    ]
    return sorted(front, key=lambda i: (-points[i][0], points[i][1], i))


def rank(point: Point, budget_ms: float | None) -> tuple[int, float, float]:
    """A sort key, smallest best: points within the budget by descending throughput, then the
    others by ascending p99."""
    throughput, p99 = point
    if budget_ms is None or p99 <= budget_ms:
        return (0, -throughput, p99)
    return (1, p99, -throughput)


def best_within(points: Sequence[Point], budget_ms: float | None) -> int | None:
    """The index of the fastest point whose p99 is within the budget (None budget: any), or
    None when no point is."""
    within = [i for i, (_, p99) in enumerate(points) if budget_ms is None or p99 <= budget_ms]
    return min(within, key=lambda i: (rank(points[i], budget_ms), i)) if within else None
