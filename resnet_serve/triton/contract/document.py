"""The contract as a page of the docs: ``docs/backend-contract.md`` is this function's output
(``make docs-pages`` writes it; a test fails when the page and the rules differ)."""

from __future__ import annotations

from resnet_serve.triton.contract import RULES
from resnet_serve.triton.contract.facts import EMBEDDED_TRITON_VERSION

__all__ = ["contract_markdown"]

_BACKENDS = {
    "core": "Triton core (every backend)",
    "ensemble": "Ensembles (core)",
    "onnxruntime": "onnxruntime backend",
    "openvino": "OpenVINO backend",
    "tensorrt": "TensorRT backend",
    "python": "python backend",
}

_INTRODUCTION = f"""# The backend contract

What Triton's core and its official backends refuse, read in their sources
(github.com/triton-inference-server: core, onnxruntime_backend, openvino_backend,
tensorrt_backend, python_backend, backend) at release r24.10 (Triton {EMBEDDED_TRITON_VERSION},
the embedded server) and at the newest release branch each had when read (r26.06 to r26.08).

One table in the code, `resnet_serve/triton/contract/`, drives three things:

- **`serve`**: an entry that breaks a *load* rule is skipped with the rule's line, as the
  official container would fail to load it; the python-backend proxies answer requests as the
  backend does (the *request* rules), so the embedded server is exactly as strict as the
  official container on a host without a GPU;
- **`resnet-serve repo check`**: one line per violation, naming the rule (`--host` says which
  host the container runs on; a warning loads and answers but fails some requests);
- **the tests**: one refused configuration per rule (`tests/unit/test_backend_contract.py`),
  and the request rules on the real server (`tests/integration/test_openvino_contract.py`).

The export writes nothing that breaks an error rule: the staged entry is checked before it is
swapped in. This page is generated from the rules (`make docs-pages`).
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def contract_markdown() -> str:
    """The page: an introduction, then one table per backend."""
    lines = [_INTRODUCTION]
    for backend, title in _BACKENDS.items():
        rules = [rule for rule in RULES if rule.backend == backend]
        lines += [f"\n## {title}\n", "| rule | when | what is refused | the official answer | source |",
                  "|---|---|---|---|---|"]
        for rule in rules:
            when = rule.when + (" (warning)" if rule.severity == "warning" else "")
            sources = "<br>".join(f"[{source}]({source.url})" for source in rule.sources)
            lines.append(f"| `{rule.id}` | {when} | {_cell(rule.statement)} | `{_cell(rule.error)}` | {sources} |")
    return "\n".join(lines) + "\n"
