"""The package's import graph has no cycle: data flows one way through the pipeline's modules.

Every import in every module counts, wherever it stands (a function-level import that dodges a
cycle at load time is still a cycle of the design), relative imports resolved. Importing
``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first, so it depends on those packages too,
unless they are the importer's own packages, which ran before it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import resnet_serve

PACKAGE = Path(resnet_serve.__file__).parent


def module_names() -> dict[str, Path]:
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        # Only real packages: the python backend's model template is copied out, not imported.
        if all((PACKAGE.parent.joinpath(*parts[:i]) / "__init__.py").is_file() for i in range(1, len(parts))):
            names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports, with the packages each import runs on the way."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            targets.add(source)
            # `from package import module` imports that module; `from module import name` does not.
            targets.update(f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in known)
    # The packages an import runs on the way, except the importer's own: those ran before it.
    own = {".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")))}
    found = set(targets)
    for target in targets:
        parts = target.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts)))
    found -= own - targets
    return (found & known) - {name}


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    known = set(modules)
    return {name: imported_modules(name, path, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for successor in sorted(graph[node]):
            if state.get(successor) == "open":
                return [*stack[stack.index(successor):], successor]
            if successor not in state and (cycle := visit(successor)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert {"resnet_serve.parity", "resnet_serve.runtimes", "resnet_serve.verify", "resnet_serve.cli"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_parity_is_a_leaf_and_runtimes_make_no_files() -> None:
    graph = import_graph()
    assert graph["resnet_serve.parity"] <= {"resnet_serve", "resnet_serve.errors"}
    below_runtimes = {"resnet_serve.export", "resnet_serve.fold", "resnet_serve.artifacts", "resnet_serve.verify"}
    assert not {m for m in graph["resnet_serve.runtimes"] if m.startswith(tuple(below_runtimes))}


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    # The circle the package had: export.onnx imported verify inside a function.
    known = {"p", "p.export", "p.export.onnx", "p.verify", "p.runtimes"}
    sources = {
        "p/__init__.py": "",
        "p/export/__init__.py": "from p.export.onnx import export_onnx\n",
        "p/export/onnx.py": "def simplify():\n    from p.verify import check\n",
        "p/verify.py": "from .runtimes import Runtime\n",
        "p/runtimes.py": "from p.export import export_onnx\n",
    }
    graph = {}
    for relative, text in sources.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        name = relative.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        graph[name] = imported_modules(name, path, known)

    assert graph["p.verify"] == {"p.runtimes"}
    assert graph["p.runtimes"] == {"p.export"}
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1]
    assert {"p.export.onnx", "p.verify", "p.runtimes"} <= set(cycle)
    graph["p.export.onnx"] = set()  # the function-level import gone
    assert find_cycle(graph) is None


# The pipeline's floors, lowest first (DESIGN.md: models → fold/export → triton repository →
# serve → client). A module imports from its own floor or below, never from above: a floor can
# be read, and tested, without the ones over it.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("foundations", frozenset({"resnet_serve", "errors", "files", "progress", "official_image", "machine",
                               "preprocessing", "parity"})),
    ("models and data", frozenset({"models", "datasets", "checkpoints", "selection", "samples", "runtimes"})),
    ("training and conversion", frozenset({"training", "experiments", "fold", "export", "artifacts", "verify"})),
    ("serving", frozenset({"triton"})),
    ("client", frozenset({"client"})),
    ("orchestration", frozenset({"pipeline", "tuning", "report", "demo"})),
    ("interface", frozenset({"cli", "rich_progress", "__main__"})),
)


def floor_of(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else parts[0]
    return next(index for index, (_, members) in enumerate(LAYERS) if top in members)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{module} ({LAYERS[floor_of(module)][0]}) imports {target} ({LAYERS[floor_of(target)][0]})"
        for module, targets in graph.items() for target in targets if floor_of(target) > floor_of(module)
    )


def test_every_module_has_a_floor_and_no_import_runs_up_the_floors() -> None:
    graph = import_graph()
    tops = {name.split(".")[1] if "." in name else name for name in graph}
    assert tops <= set().union(*(members for _, members in LAYERS)), "modules without a floor"
    assert upward_imports(graph) == []


def test_an_import_up_the_floors_is_found() -> None:
    # The one the package had: the TensorRT exporter took the container tag from triton/.
    graph = {"resnet_serve.export.tensorrt": {"resnet_serve.triton.images", "resnet_serve.errors"}}
    assert upward_imports(graph) == [
        "resnet_serve.export.tensorrt (training and conversion) imports resnet_serve.triton.images (serving)"
    ]


def test_the_split_packages_keep_modules_short() -> None:
    # One concern per module: the repository writer and the CLI were one file each of ~950 lines,
    # the training loop one of 744.
    for package in ("cli", "triton/repository", "training"):
        for path in sorted((PACKAGE / package).glob("*.py")):
            lines = len(path.read_text(encoding="utf-8").splitlines())
            assert lines <= 300, f"{path.relative_to(PACKAGE)} has {lines} lines"
