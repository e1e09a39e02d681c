"""What Triton's core and official backends accept in a model repository: one table of rules,
each with the source it was read from.

The table drives three things, so that they cannot drift apart:

- `serve`: an entry that breaks a load rule is skipped with the rule's line, as the official
  container would fail to load it; the proxies answer requests as the backend does (the
  request rules, in ``python_model/model.py``);
- `repo check`: one line per violation, errors and warnings;
- the docs (``docs/backend-contract.md`` is generated from ``RULES``) and the tests (one refused
  configuration per rule).

Rules are read at the releases their sources name: r24.10 (Triton 2.51.0, the embedded server)
and the newest release branch each repository had when read (r26.06 to r26.08).
"""

from __future__ import annotations

from resnet_serve.triton.contract.core import CORE_RULES
from resnet_serve.triton.contract.ensemble import ENSEMBLE_RULES, ensemble_cycle
from resnet_serve.triton.contract.facts import (
    EMBEDDED_TRITON_VERSION,
    EntryFacts,
    Host,
    entry_host,
    read_version_number,
)
from resnet_serve.triton.contract.onnxruntime import ONNXRUNTIME_RULES, TENSORRT_ACCELERATOR_KEYS
from resnet_serve.triton.contract.openvino import OPENVINO_RULES, batch_padding, openvino_flag
from resnet_serve.triton.contract.python import PYTHON_RULES
from resnet_serve.triton.contract.rules import Rule, Severity, Source, Violation, When
from resnet_serve.triton.contract.tensorrt import TENSORRT_RULES

__all__ = [
    "EMBEDDED_TRITON_VERSION",
    "RULES",
    "TENSORRT_ACCELERATOR_KEYS",
    "EntryFacts",
    "Host",
    "Rule",
    "Severity",
    "Source",
    "Violation",
    "When",
    "batch_padding",
    "ensemble_cycle",
    "entry_host",
    "entry_violations",
    "find_rule",
    "openvino_flag",
    "read_version_number",
]

RULES: tuple[Rule, ...] = (
    *CORE_RULES, *ENSEMBLE_RULES, *ONNXRUNTIME_RULES, *OPENVINO_RULES, *TENSORRT_RULES, *PYTHON_RULES,
)


def find_rule(rule_id: str) -> Rule:
    return next(rule for rule in RULES if rule.id == rule_id)


def entry_violations(facts: EntryFacts) -> list[Violation]:
    """Every rule ``facts`` breaks (a backend's rules judge only that backend's entries)."""
    return [violation for rule in RULES for violation in rule.violations(facts)]
