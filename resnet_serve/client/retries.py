"""Trying a failed call again, with a backoff that doubles: what rides out a server restart.

A supervised embedded server is back a few seconds after a crash (`triton.supervisor`); a load
generator or a benchmark that retries its requests for that long completes instead of failing
on the first refused connection. Only our own ClientError is retried: a programming error or
an interrupt is never swallowed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from resnet_serve.errors import ClientError

__all__ = ["Retries"]

T = TypeVar("T")


@dataclass(frozen=True)
class Retries:
    """Up to `count` more tries of a failed call, the n-th after `first_backoff_s * 2**(n-1)`
    seconds (at most `max_backoff_s`)."""

    count: int = 0
    first_backoff_s: float = 0.1
    max_backoff_s: float = 2.0

    def __post_init__(self) -> None:
        if self.count < 0 or self.first_backoff_s < 0 or self.max_backoff_s < self.first_backoff_s:
            raise ClientError(
                "retries need a count ≥ 0 and 0 ≤ first backoff ≤ max backoff, got "
                f"{self.count}, {self.first_backoff_s:g} s and {self.max_backoff_s:g} s"
            )

    def backoff_s(self, attempt: int) -> float:
        """Seconds before the `attempt`-th retry (1 for the first)."""
        return min(self.first_backoff_s * 2 ** max(attempt - 1, 0), self.max_backoff_s)

    def call(
        self,
        function: Callable[[], T],
        *,
        stopping: threading.Event | None = None,
        before_retry: Callable[[], None] | None = None,
    ) -> T:
        """`function()`, tried again after each ClientError while retries are left; the last
        error is raised when they run out or `stopping` is set during a backoff."""
        stopping = stopping or threading.Event()
        attempt = 0
        while True:
            try:
                return function()
            except ClientError:
                attempt += 1
                if attempt > self.count or stopping.wait(self.backoff_s(attempt)):
                    raise
                if before_retry is not None:
                    before_retry()
