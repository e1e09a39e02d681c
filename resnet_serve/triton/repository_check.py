"""Would each entry of a repository load in a given Triton image? (`resnet-serve repo check`)

Checked per entry, against the facts of `resnet_serve.triton.images`:
- its backend (or platform) is in the image;
- a python-backend model's imports (read with `ast`, in every .py file of its version folders)
  are in the image's python backend, the standard library, or the version folder itself;
- an ONNX file agrees with the config (tensor names, dims, data types), and each labelled
  output has as many class names as classes;
- a TensorRT plan's sidecar names the image's TensorRT version and a GPU it supports;
- an ensemble's steps name entries that exist, with tensors those entries have.

Every problem is one line; none means the entry should load.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from resnet_serve.errors import ExportError, ResnetServeError
from resnet_serve.triton.config import ENSEMBLE_PLATFORM, ModelConfig
from resnet_serve.triton.images import OfficialImage
from resnet_serve.triton.repository import (
    CONFIG_FILENAME,
    backend_of,
    label_count_mismatches,
    model_filename,
    onnx_config_mismatches,
    read_model_entry,
    writer_folder,
)

__all__ = ["Problem", "check_repository", "python_imports"]

# Provided by the python backend's stub process itself.
_STUB_MODULES = frozenset({"triton_python_backend_utils"})


@dataclass(frozen=True)
class Problem:
    """One reason an entry would not load (or not serve correctly) in the image."""

    entry: str
    message: str

    def __str__(self) -> str:
        return f"{self.entry}: {self.message}"


def python_imports(source: str) -> set[str]:
    """Top-level names of the modules a python file imports (relative imports excluded)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names - {"__future__"}


def check_repository(*, repository: Path, image: OfficialImage) -> list[Problem]:
    """Every problem that would keep an entry of `repository` from loading in `image`."""
    if not repository.is_dir():
        return [Problem(str(repository), "no such model repository")]
    configs: dict[str, ModelConfig] = {}
    problems: list[Problem] = []
    folders = sorted(p for p in repository.iterdir() if p.is_dir())
    for folder in folders:
        if folder.name.startswith("."):
            written = writer_folder(folder)
            what = written.describe() if written else "a hidden folder"
            problems.append(Problem(folder.name, f"{what}, which Triton would try to load as a model"))
        elif not (folder / CONFIG_FILENAME).is_file():
            problems.append(Problem(folder.name, f"no {CONFIG_FILENAME}"))
        else:
            try:
                configs[folder.name] = read_model_entry(repository=repository, name=folder.name).config
            except ResnetServeError as error:
                problems.append(Problem(folder.name, str(error)))
    for name, config in configs.items():
        problems += [Problem(name, message) for message in _entry_problems(repository / name, config, image, configs)]
    return problems


def _entry_problems(
    folder: Path, config: ModelConfig, image: OfficialImage, configs: dict[str, ModelConfig]
) -> Iterator[str]:
    backend = backend_of(config)
    if backend not in image.backends:
        yield f"backend {backend!r} is not in {image.reference}"
    yield from label_count_mismatches(folder, config)
    if config.platform == ENSEMBLE_PLATFORM:
        yield from _ensemble_problems(config, configs)
        return
    filename = model_filename(config)
    versions = sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
    for version in versions:
        version_folder = folder / str(version)
        model_path = version_folder / filename if filename else None
        if model_path is not None and not model_path.is_file():
            yield f"version {version} has no {filename}"
            continue
        if backend == "python":
            yield from _import_problems(version_folder, image)
        if model_path is not None and model_path.suffix == ".onnx":
            yield from (f"version {version}: {m}" for m in onnx_config_mismatches(model_path, config))
        if model_path is not None and model_path.suffix == ".plan":
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


def _ensemble_problems(config: ModelConfig, configs: dict[str, ModelConfig]) -> Iterator[str]:
    for step in config.ensemble_steps:
        model = configs.get(step.model_name)
        if model is None:
            yield f"ensemble step {step.model_name!r} is not an entry of this repository"
            continue
        for kind, mapping, tensors in (("input", step.input_map, model.inputs),
                                       ("output", step.output_map, model.outputs)):
            names = {t.name for t in tensors}
            for tensor in sorted(set(mapping) - names):
                yield f"ensemble step {step.model_name!r} maps {kind} {tensor!r}, which that model does not have"
