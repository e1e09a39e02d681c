"""The shape of the contract: a rule, where it comes from, and what a check may look at."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from resnet_serve.triton.contract.facts import EntryFacts

__all__ = [
    "Backend",
    "Check",
    "Rule",
    "Severity",
    "Source",
    "Violation",
    "When",
]

Backend = Literal["core", "ensemble", "onnxruntime", "openvino", "tensorrt", "python"]
When = Literal["load", "request"]
# An error keeps the entry from loading, or fails every request it is bound to get; a warning
# loads and answers, but fails some requests the backend could be sent.
Severity = Literal["error", "warning"]

_GITHUB = "https://github.com/triton-inference-server"


@dataclass(frozen=True)
class Source:
    """Where a rule is written: a file of one of Triton's repositories, its lines at ``ref``.

    ``checked`` names the other releases the same code was read at, with its lines there where
    they moved (empty: only ``ref``).
    """

    repository: str
    path: str
    lines: str
    ref: str = "r24.10"
    checked: str = ""

    @property
    def url(self) -> str:
        first, _, last = self.lines.partition("-")
        anchor = f"#L{first}" + (f"-L{last}" if last else "")
        return f"{_GITHUB}/{self.repository}/blob/{self.ref}/{self.path}{anchor}"

    def __str__(self) -> str:
        also = f", also {self.checked}" if self.checked else ""
        return f"{self.repository} {self.path}:{self.lines} @ {self.ref}{also}"


@dataclass(frozen=True)
class Violation:
    """One way an entry breaks one rule, in one line."""

    rule: str
    message: str
    severity: Severity = "error"
    when: When = "load"

    def __str__(self) -> str:
        return f"{'warning: ' if self.severity == 'warning' else ''}{self.message} [{self.rule}]"


Check = Callable[[EntryFacts], Iterable[str]]


@dataclass(frozen=True)
class Rule:
    """One thing an official backend (or core, for every backend) refuses.

    ``statement`` says the rule; ``error`` quotes what the official server answers (with
    ``<...>`` for what varies); ``check`` yields one line per violation in an entry, for the
    rules that can be read off a repository (a request rule's check says which configurations
    are bound to hit it). ``applies_to`` is the backends whose entries it checks.
    """

    id: str
    backend: Backend
    when: When
    statement: str
    error: str
    sources: tuple[Source, ...]
    check: Check
    applies_to: frozenset[str] = frozenset()
    severity: Severity = "error"

    def violations(self, facts: EntryFacts) -> Iterator[Violation]:
        if self.applies_to and facts.backend not in self.applies_to:
            return
        for message in self.check(facts):
            yield Violation(self.id, message, self.severity, self.when)
