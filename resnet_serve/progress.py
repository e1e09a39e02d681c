"""How long-running library code reports progress without printing: the CLI supplies a Reporter."""

from __future__ import annotations

from typing import Protocol


class Reporter(Protocol):
    """Receives progress from library code; the CLI renders it (rich bars), tests ignore it."""

    def start(self, description: str, total: int | None = None) -> None:
        """Begin a task of ``total`` steps (None when unknown)."""

    def advance(self, steps: int = 1, **fields: float | str) -> None:
        """Move the current task on, with fields to show beside it (loss, accuracy, ...)."""

    def finish(self) -> None:
        """End the current task."""

    def message(self, text: str) -> None:
        """A one-line status message."""


class SilentReporter:
    """A Reporter that shows nothing."""

    def start(self, description: str, total: int | None = None) -> None:
        pass

    def advance(self, steps: int = 1, **fields: float | str) -> None:
        pass

    def finish(self) -> None:
        pass

    def message(self, text: str) -> None:
        pass
