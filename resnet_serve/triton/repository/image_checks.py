"""What an official image holds, against what a repository's entries need of it: its backends,
its python backend's packages (the imports of python-backend models), the TensorRT version a
plan was built with and the GPUs the image runs (facts from ``resnet_serve.triton.images``)."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

from resnet_serve.errors import ExportError
from resnet_serve.triton.contract import EntryFacts
from resnet_serve.triton.images import OfficialImage

__all__ = ["image_problems", "python_imports"]

# Provided by the python backend's stub process itself.
_STUB_MODULES = frozenset({"triton_python_backend_utils"})


def python_imports(source: str) -> set[str]:
    """Top-level names of the modules a python file imports (relative imports excluded)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names - {"__future__"}


def image_problems(facts: EntryFacts, image: OfficialImage) -> Iterator[str]:
    if facts.backend and facts.backend not in image.backends:
        yield f"backend {facts.backend!r} is not in {image.reference}"
    for version in facts.versions:
        version_folder = facts.version_path(version)
        if facts.backend == "python" and version_folder.is_dir():
            yield from _import_problems(version_folder, image)
        model_path = version_folder / facts.model_filename
        if facts.backend == "tensorrt" and model_path.is_file():
            yield from (f"version {version}: {m}" for m in _plan_problems(model_path, image))


def _import_problems(version_folder: Path, image: OfficialImage) -> Iterator[str]:
    # Modules and packages shipped in the version folder itself (copied code) are importable.
    local = {p.stem for p in version_folder.glob("*.py")} | {
        p.name for p in version_folder.iterdir() if p.is_dir() and (p / "__init__.py").is_file()
    }
    available = set(sys.stdlib_module_names) | image.python_packages | _STUB_MODULES | local
    for path in sorted(version_folder.rglob("*.py")):
        try:
            imports = python_imports(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, ValueError) as error:
            yield f"{path.relative_to(version_folder.parent)} cannot be read as python ({error})"
            continue
        for module in sorted(imports - available):
            yield (
                f"{path.relative_to(version_folder.parent)} imports {module}, which the python backend "
                f"of {image.reference} does not have"
            )


def _plan_problems(plan: Path, image: OfficialImage) -> Iterator[str]:
    # Imported here: the export package pulls in torch, which no other check needs.
    from resnet_serve.export.tensorrt import EngineSidecar, sidecar_path

    try:
        sidecar = EngineSidecar.read(sidecar_path(plan))
    except ExportError as error:
        yield f"{error}; without it the TensorRT version that built the plan is unknown"
        return
    if image.tensorrt_version is None:
        yield (
            f"{plan.name} was built with TensorRT {sidecar.tensorrt_version}, and a plan loads only in that "
            f"version; the TensorRT version of {image.reference} is not recorded, so this cannot be confirmed: "
            "build the plan inside that image"
        )
    elif not _same_tensorrt(sidecar.tensorrt_version, image.tensorrt_version):
        yield (
            f"{plan.name} was built with TensorRT {sidecar.tensorrt_version}, {image.reference} has "
            f"{image.tensorrt_version}: rebuild it there"
        )
    if image.min_compute_capability is not None and _version(sidecar.compute_capability) < _version(
        image.min_compute_capability
    ):
        yield (
            f"{plan.name} was built for a GPU of compute capability {sidecar.compute_capability} "
            f"({sidecar.gpu_name}); {image.reference} supports {image.min_compute_capability} and later"
        )


def _same_tensorrt(built_with: str, image_has: str) -> bool:
    """Whether a plan's TensorRT is the image's. The build number counts (a plan built by
    8.6.1.6 is refused by 8.6.1.2), but pip's wheels before 10.8 report only major.minor.patch,
    so the parts the sidecar records are compared."""
    recorded = built_with.split(".")
    return recorded == image_has.split(".")[: len(recorded)]


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        return ()
