"""The repository the embedded server loads: the user's entries, with python-backend proxies.

The embedded tritonserver (nvidia-pytriton wheel) has only the python backend, while a
repository written for the official container names `onnxruntime_onnx` and `openvino` entries.
`build_proxy_repository` mirrors a repository into another folder without writing a byte into
the original:

- every entry is first checked as `repo check` checks it (``repository.check_entries``,
  the backend contract on a host without a GPU): an entry the official container would refuse
  is skipped with the rule it breaks, so the embedded server is exactly as strict as the
  official one, and one bad entry never stops the others;
- python-backend and ensemble entries are mirrored as they are;
- `onnxruntime_onnx` and `openvino` entries become python-backend proxies with the same name,
  version folders, inputs, outputs, labels, batching, instance groups, parameters, warmup and
  version policy. The template `python_model/model.py` runs the entry's own model file in
  onnxruntime or OpenVINO, with the settings the official backend reads from the same config
  and the request-time behaviour of the contract (OpenVINO's fixed batch and its padding);
- entries this server cannot run (a TensorRT plan, another backend) are skipped with a reason,
  and so is every ensemble with a skipped step, so the server serves the rest.

Mirroring makes real folders and links every file, so whatever the server writes (the python
backend's `__pycache__`) lands in the mirror, never in the user's repository. The mirror is a
snapshot: entries exported after it was built are served by the next server start.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from resnet_serve.errors import RepositoryError, first_line
from resnet_serve.triton.contract import EntryFacts, read_version_number
from resnet_serve.triton.images import deploy_image
from resnet_serve.triton.repository import CONFIG_FILENAME, EntryCheck, check_entries

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
_PROXIED = ("onnxruntime", "openvino")

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
SkipKind = Literal["refused", "not runnable", "failed to load"]


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
    """A folder of the repository the embedded server does not serve, and why: the official
    container would refuse it (``refused``), this server cannot run its backend (``not
    runnable``), or it failed to load, or to load in time (``failed to load``)."""

    name: str
    reason: str
    kind: SkipKind = "refused"


@dataclass(frozen=True)
class ProxyRepository:
    """The served copy of a repository: where it is, what it serves and what it skipped."""

    path: Path
    served: tuple[ServedEntry, ...]
    skipped: tuple[SkippedEntry, ...]

    @property
    def served_names(self) -> tuple[str, ...]:
        return tuple(entry.name for entry in self.served)


def _template() -> Path:
    template = resources.files("resnet_serve.triton").joinpath("python_model", PYTHON_MODEL_FILENAME)
    return Path(str(template))


def _cannot_run(facts: EntryFacts) -> str:
    """Why the embedded server cannot run an entry ("" when it can)."""
    if facts.backend in ("python", "ensemble", *_PROXIED):
        return ""
    if facts.backend == "tensorrt":
        return ("a TensorRT plan needs Triton's tensorrt backend and the GPU it was built for; "
                "the embedded server has neither (serve it in the official container)")
    named = facts.backend or facts.config.backend or facts.config.platform
    if not named:
        return ""  # core cannot tell its backend either: the contract says so
    return f"the embedded server cannot run {named!r} entries (it runs python, ensemble, onnxruntime and openvino ones)"


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


def _version_folders(folder: Path) -> list[str]:
    """The folders core reads as versions under their own names (``7``, not ``07`` or ``7a``)."""
    return [p.name for p in folder.iterdir() if p.is_dir() and str(read_version_number(p.name)) == p.name]


def _proxy_config(facts: EntryFacts) -> tuple[model_config_pb2.ModelConfig, list[str]]:
    """The python-backend config that runs the entry's model file in its runtime, and its notes."""
    config, runtime = facts.config, facts.backend
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
        notes.extend(_openvino_instances_note(facts))
    for field in _REPLACED_FIELDS:
        proxy.ClearField(field)
    proxy.backend = "python"
    proxy.parameters[RUNTIME_PARAMETER].string_value = runtime
    proxy.parameters[MODEL_FILE_PARAMETER].string_value = facts.model_filename
    if runtime == "onnxruntime":
        # Core gives onnxruntime CPU groups without a count 2 instances, python ones 1
        # (model_config_utils.cc SetDefaultInstanceCount); the proxy must get the backend's.
        if not proxy.instance_group:
            proxy.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_CPU)
        for group in proxy.instance_group:
            group.count = _instance_count(group, runtime)
    return proxy, notes


def _instance_count(group: model_config_pb2.ModelInstanceGroup, runtime: str) -> int:
    """The group's instances as core counts them: without a count, 2 for onnxruntime and 1 for
    OpenVINO (model_config_utils.cc SetDefaultInstanceCount)."""
    return group.count if group.count >= 1 else 2 if runtime == "onnxruntime" else 1


def _openvino_instances_note(facts: EntryFacts) -> list[str]:
    """Where the proxy cannot run an OpenVINO entry as fast as the official backend. That backend
    compiles the model once and gives each instance an infer request of it (openvino_backend
    src/openvino.cc, LoadModel and CreateInferRequest); each proxy instance is a stub process
    with a compiled model of its own. With one stream, OpenVINO's default, both ways run one
    request at a time on one core (the proxy's because OpenVINO pins every process's inferring
    thread to the same core); with more streams the official backend runs its instances side by
    side on them, where the proxy's compete (benchmarks/openvino_instances.py)."""
    instances = sum(_instance_count(group, "openvino") for group in facts.config.instance_group) or 1
    streams = facts.parameters.get("NUM_STREAMS", "1")
    hint = facts.parameters.get("PERFORMANCE_HINT", "").upper()
    if instances < 2 or (streams == "1" and hint not in ("THROUGHPUT", "CUMULATIVE_THROUGHPUT")):
        return []
    why = f"NUM_STREAMS {streams}" if streams != "1" else f"PERFORMANCE_HINT {hint}"
    return [f"{instances} instances with more than one stream ({why}): the official backend runs them on one compiled "
            "model's streams side by side, this server compiles one per instance, which compete for the cores, so "
            "it measures this entry slower than the official container would serve it"]


def build_proxy_repository(*, source: Path, destination: Path) -> ProxyRepository:
    """Mirror `source` into the empty folder `destination`, with proxies where needed.

    Every entry is checked first, for the official image deploy/ builds on a host without a
    GPU: what that container would refuse is skipped with its reason, and so is what this
    server cannot run.

    Raises:
        RepositoryError: `source` is not a folder.
    """
    checks = check_entries(source, host="cpu", triton_version=deploy_image().triton_version, cannot_run=_cannot_run)
    template = _template()
    served: list[ServedEntry] = []
    skipped: list[SkippedEntry] = []
    for check in checks:
        if check.refused or check.facts is None:
            skipped.append(SkippedEntry(name=check.name, reason=check.reason,
                                        kind="not runnable" if check.cannot_run else "refused"))
            continue
        target = destination / check.name
        try:
            served.append(_serve(check, check.facts, target, template))
        except (OSError, RepositoryError) as error:
            # What changed since the check (a file gone, a link made): this entry only.
            shutil.rmtree(target, ignore_errors=True)
            skipped.append(SkippedEntry(name=check.name, reason=f"cannot be mirrored for serving: {first_line(error)}"))
    return ProxyRepository(path=destination, served=tuple(served), skipped=tuple(skipped))


def _serve(check: EntryCheck, facts: EntryFacts, target: Path, template: Path) -> ServedEntry:
    versions = tuple(sorted(int(name) for name in _version_folders(check.folder)))
    warnings = [f"{p.message} [{p.rule}]" if p.rule else p.message for p in check.problems]
    if facts.backend in ("python", "ensemble"):
        _mirror_tree(check.folder, target)
        return ServedEntry(name=check.name, served_as="mirror", runtime=facts.backend, versions=versions,
                           notes=tuple(warnings))
    config, notes = _proxy_config(facts)
    _mirror_tree(check.folder, target, leave_out=[CONFIG_FILENAME])
    # Written before tritonserver starts: no reader can see it half-written.
    (target / CONFIG_FILENAME).write_text(text_format.MessageToString(config), encoding="utf-8")
    for version in versions:
        link = target / str(version) / PYTHON_MODEL_FILENAME
        # A model.py beside an ONNX or IR file is not this entry's code; the proxy's is.
        link.unlink(missing_ok=True)
        os.symlink(template, link)
    return ServedEntry(name=check.name, served_as="proxy", runtime=facts.backend, versions=versions,
                       notes=(*notes, *warnings))
