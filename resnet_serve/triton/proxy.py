"""The repository the embedded server loads: the user's entries, with python-backend proxies.

The embedded tritonserver (nvidia-pytriton wheel) has only the python backend, while a
repository written for the official container names `onnxruntime_onnx` and `openvino` entries.
`build_proxy_repository` mirrors a repository into another folder without writing a byte into
the original:

- python-backend and ensemble entries are mirrored as they are;
- `onnxruntime_onnx` and `openvino` entries become python-backend proxies with the same name,
  version folders, inputs, outputs, labels, batching, instance count, parameters, warmup and
  version policy. The template `python_model/model.py` runs the entry's own model file in
  onnxruntime or OpenVINO, with the settings the official backend reads from the same config;
- entries this server cannot run (a TensorRT plan, another backend) are skipped with a reason,
  and so is every ensemble with a skipped step, so the server serves the rest.

Mirroring makes real folders and links every file, so whatever the server writes (the python
backend's `__pycache__`) lands in the mirror, never in the user's repository. The mirror is a
snapshot: entries exported after it was built are served by the next server start.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from resnet_serve.errors import RepositoryError
from resnet_serve.triton.config import parse_model_config
from resnet_serve.triton.repository import CONFIG_FILENAME, writer_folder

__all__ = [
    "MODEL_FILE_PARAMETER",
    "RUNTIME_PARAMETER",
    "ProxyRepository",
    "ServedEntry",
    "SkippedEntry",
    "build_proxy_repository",
]

# The parameters that tell the template which runtime runs which file (python_model/model.py
# reads the same keys).
RUNTIME_PARAMETER = "proxy_runtime"
MODEL_FILE_PARAMETER = "proxy_model_file"

PYTHON_MODEL_FILENAME = "model.py"
# The official OpenVINO backend's settings for models with a fixed batch size, which the proxy
# does not implement.
_IGNORED_OPENVINO_PARAMETERS = ("ENABLE_BATCH_PADDING", "SKIP_OV_DYNAMIC_BATCHSIZE")
# What the official backends load when the config has no default_model_filename.
_DEFAULT_MODEL_FILES = {"onnxruntime": "model.onnx", "openvino": "model.xml"}

# Fields a proxy keeps as they are: the python backend and Triton's core handle them.
_KEPT_FIELDS = frozenset({
    "name", "version_policy", "max_batch_size", "input", "output", "dynamic_batching",
    "instance_group", "parameters", "model_warmup", "response_cache",
})
# Fields that say how the official backend finds and runs the file; the proxy replaces them.
_REPLACED_FIELDS = frozenset({
    "platform", "backend", "runtime", "default_model_filename", "cc_model_filenames",
})

ServedAs = Literal["mirror", "proxy"]


@dataclass(frozen=True)
class ServedEntry:
    """An entry the embedded server loads.

    `runtime` is what runs it: `python` and `ensemble` for mirrored entries, `onnxruntime` or
    `openvino` for proxies. `versions` are the version folders in the repository (the entry's
    version policy picks the ones served). `notes` name the config fields the proxy dropped or
    changed.
    """

    name: str
    served_as: ServedAs
    runtime: str
    versions: tuple[int, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class SkippedEntry:
    """A folder of the repository the embedded server does not load, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class ProxyRepository:
    """The served copy of a repository: where it is, what it serves and what it skipped."""

    path: Path
    served: tuple[ServedEntry, ...]
    skipped: tuple[SkippedEntry, ...]

    @property
    def served_names(self) -> tuple[str, ...]:
        return tuple(entry.name for entry in self.served)


@dataclass(frozen=True)
class _Plan:
    """What to do with one entry folder: how to serve it, or why not."""

    folder: Path
    config: model_config_pb2.ModelConfig | None
    runtime: str = ""
    skip_reason: str = ""


def _template() -> Path:
    template = resources.files("resnet_serve.triton").joinpath("python_model", PYTHON_MODEL_FILENAME)
    return Path(str(template))


def _runtime_of(config: model_config_pb2.ModelConfig) -> tuple[str, str]:
    """(runtime, "") for an entry the embedded server can load, ("", why not) otherwise."""
    if config.backend == "python":
        return "python", ""
    if config.platform == "ensemble":
        return "ensemble", ""
    if config.platform == "onnxruntime_onnx" or config.backend == "onnxruntime":
        return "onnxruntime", ""
    if config.backend == "openvino":
        return "openvino", ""
    if config.platform == "tensorrt_plan" or config.backend == "tensorrt":
        return "", ("a TensorRT plan needs Triton's tensorrt backend and the GPU it was built for; "
                    "the embedded server has neither (serve it in the official container)")
    named = config.backend or config.platform
    if not named:
        return "", "its config names no backend or platform"
    return "", (f"the embedded server cannot run {named!r} entries "
                "(it runs python, ensemble, onnxruntime and openvino ones)")


def _plan(folder: Path) -> _Plan:
    if folder.name.startswith("."):
        written = writer_folder(folder)
        reason = written.describe() if written else "a hidden folder (an interrupted or running export?)"
        return _Plan(folder, None, skip_reason=reason)
    config_path = folder / CONFIG_FILENAME
    if not config_path.is_file():
        return _Plan(folder, None, skip_reason=f"no {CONFIG_FILENAME}")
    # One broken entry must not keep the others from being served: Triton in the official
    # container, with explicit model control, would not even read an entry it was not told to load.
    try:
        config = parse_model_config(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        return _Plan(folder, None, skip_reason=f"cannot read {CONFIG_FILENAME}: {error}")
    except RepositoryError as error:
        return _Plan(folder, None, skip_reason=f"{CONFIG_FILENAME}: {error}")
    runtime, reason = _runtime_of(config)
    return _Plan(folder, config, runtime=runtime, skip_reason=reason)


def _skip_ensembles_of_skipped(plans: dict[str, _Plan]) -> None:
    """Skip every ensemble one of whose steps is skipped, until none is left to skip."""
    changed = True
    while changed:
        changed = False
        for name, plan in plans.items():
            if plan.runtime != "ensemble" or plan.config is None:
                continue
            for step in plan.config.ensemble_scheduling.step:
                step_plan = plans.get(step.model_name)
                if step_plan is not None and step_plan.skip_reason:
                    plans[name] = _Plan(plan.folder, plan.config,
                                        skip_reason=f"its step {step.model_name!r} is skipped")
                    changed = True
                    break


def _mirror_tree(source: Path, destination: Path, *, leave_out: Iterable[str] = (),
                 walked: frozenset[Path] = frozenset()) -> None:
    """Real folders, one link per file; `leave_out` names files of the top folder left out.

    Linked folders are walked too, so that every folder of the copy is the copy's own and
    nothing written into it reaches the user's files.
    """
    real = source.resolve()
    if real in walked:
        raise RepositoryError(f"{source} links back to a folder that contains it")
    left_out = set(leave_out)
    destination.mkdir()
    for item in sorted(source.iterdir()):
        if item.name in left_out:
            continue
        if item.is_dir():
            _mirror_tree(item, destination / item.name, walked=walked | {real})
        elif item.exists():
            os.symlink(item.resolve(), destination / item.name)


def _versions(folder: Path) -> tuple[int, ...]:
    return tuple(sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()))


def _proxy_config(
    config: model_config_pb2.ModelConfig, runtime: str
) -> tuple[model_config_pb2.ModelConfig, list[str]]:
    """The python-backend config that runs `config`'s model file in `runtime`, and its notes."""
    proxy = model_config_pb2.ModelConfig()
    proxy.CopyFrom(config)
    notes: list[str] = []
    for field, _ in config.ListFields():
        if field.name in _KEPT_FIELDS or field.name in _REPLACED_FIELDS:
            continue
        proxy.ClearField(field.name)
        if field.name == "optimization":
            # The graph optimisation level is onnxruntime's own setting, which the template reads.
            kept = {"graph"} if runtime == "onnxruntime" else set()
            if "graph" in kept and config.optimization.HasField("graph"):
                proxy.optimization.graph.CopyFrom(config.optimization.graph)
            dropped = [f"optimization.{f.name}" for f, _ in config.optimization.ListFields() if f.name not in kept]
        else:
            dropped = [field.name]
        if dropped:
            notes.append(f"dropped {', '.join(dropped)}: only the official backend implements it")
    if runtime == "openvino":
        ignored = sorted(key for key in _IGNORED_OPENVINO_PARAMETERS if key in config.parameters)
        if ignored:
            notes.append(f"ignores {', '.join(ignored)}: the proxy runs each batch at its real size")
    model_file = config.default_model_filename or _DEFAULT_MODEL_FILES[runtime]
    for field in _REPLACED_FIELDS:
        proxy.ClearField(field)
    proxy.backend = "python"
    proxy.parameters[RUNTIME_PARAMETER].string_value = runtime
    proxy.parameters[MODEL_FILE_PARAMETER].string_value = model_file
    for group in proxy.instance_group:
        if group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU:
            notes.append("instance_group kind KIND_GPU runs on the CPU here")
        # The python stub runs the model on the CPU; KIND_AUTO would mean the same here.
        group.kind = model_config_pb2.ModelInstanceGroup.KIND_CPU
        group.ClearField("gpus")
    return proxy, notes


def build_proxy_repository(*, source: Path, destination: Path) -> ProxyRepository:
    """Mirror `source` into the empty folder `destination`, with proxies where needed.

    Raises:
        RepositoryError: `source` is not a folder, or an entry's config.pbtxt does not parse.
    """
    if not source.is_dir():
        raise RepositoryError(f"model repository {source} does not exist")
    plans = {folder.name: _plan(folder) for folder in sorted(source.iterdir()) if folder.is_dir()}
    _skip_ensembles_of_skipped(plans)
    template = _template()
    served: list[ServedEntry] = []
    skipped: list[SkippedEntry] = []
    try:
        for name, plan in plans.items():
            if plan.skip_reason or plan.config is None:
                skipped.append(SkippedEntry(name=name, reason=plan.skip_reason))
                continue
            target = destination / name
            versions = _versions(plan.folder)
            if plan.runtime in ("python", "ensemble"):
                _mirror_tree(plan.folder, target)
                served.append(ServedEntry(name=name, served_as="mirror", runtime=plan.runtime,
                                          versions=versions))
                continue
            config, notes = _proxy_config(plan.config, plan.runtime)
            _mirror_tree(plan.folder, target, leave_out=[CONFIG_FILENAME])
            # Written before tritonserver starts: no reader can see it half-written.
            (target / CONFIG_FILENAME).write_text(text_format.MessageToString(config), encoding="utf-8")
            for version in versions:
                link = target / str(version) / PYTHON_MODEL_FILENAME
                # A model.py beside an ONNX or IR file is not this entry's code; the proxy's is.
                link.unlink(missing_ok=True)
                os.symlink(template, link)
            served.append(ServedEntry(name=name, served_as="proxy", runtime=plan.runtime,
                                      versions=versions, notes=tuple(notes)))
    except OSError as error:
        raise RepositoryError(f"cannot build the served copy of {source} in {destination}: {error}") \
            from None
    return ProxyRepository(path=destination, served=tuple(served), skipped=tuple(skipped))
