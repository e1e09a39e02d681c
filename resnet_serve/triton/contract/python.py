"""What Triton's python backend refuses (triton-inference-server/python_backend, read at r24.10
and r26.07). It checks neither shapes nor data types against anything: the model's own code
answers for them."""

from __future__ import annotations

from collections.abc import Iterator

from resnet_serve.triton.contract.facts import EntryFacts
from resnet_serve.triton.contract.rules import Rule, Source
from resnet_serve.triton.entry_files import file_problem

__all__ = ["PYTHON_RULES"]

_REPO = "python_backend"
_PYTHON = frozenset({"python"})


def _model_file(facts: EntryFacts) -> Iterator[str]:
    for version in facts.versions:
        path = facts.version_path(version) / facts.model_filename
        if not path.exists():
            yield f"version {version}: Python model file not found in '{path}'"
        elif problem := file_problem(path):
            yield f"version {version}: {problem}"


def _parameters(facts: EntryFacts) -> Iterator[str]:
    value = facts.parameters.get("FORCE_CPU_ONLY_INPUT_TENSORS")
    if value is not None and value not in ("yes", "no"):
        yield f"Incorrect value for FORCE_CPU_ONLY_INPUT_TENSORS: {value}'"


PYTHON_RULES: tuple[Rule, ...] = (
    Rule("python.model-file", "python", "load",
         "Each loaded version holds `default_model_filename` (model.py).",
         "Python model file not found in '<path>'",
         (Source(_REPO, "src/stub_launcher.cc", "87-98", checked="r26.07"),), _model_file, _PYTHON),
    Rule("python.parameters", "python", "load",
         "FORCE_CPU_ONLY_INPUT_TENSORS, when given, is exactly yes or no.",
         "Incorrect value for FORCE_CPU_ONLY_INPUT_TENSORS: <value>'",
         (Source(_REPO, "src/python_be.cc", "1832-1860", checked="r26.07 (2094-2146)"),), _parameters, _PYTHON),
)
