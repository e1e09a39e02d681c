"""What a rule may look at: one entry of a repository as Triton's core reads it.

Core decides an entry's backend, default file and versions before any backend sees it; the
functions here do what core does (``model_config_utils.cc`` ``AutoCompleteBackendFields``,
``model_lifecycle.cc`` ``VersionsToLoad``, release r24.10, unchanged through r26.06), so that
every rule judges the entry core would hand to the backend.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from tritonclient.grpc import model_config_pb2

__all__ = [
    "EMBEDDED_TRITON_VERSION",
    "EntryFacts",
    "Host",
    "entry_host",
    "read_version_number",
]

# The host an entry is checked for: the official container on a machine with GPUs, on one
# without, or either (what a repository served by both compose profiles must pass).
Host = Literal["cpu", "gpu", "any"]
# The embedded server (nvidia-pytriton 0.7.0) is Triton 2.51.0, the 24.10 release.
EMBEDDED_TRITON_VERSION = "2.51.0"

# Folders of an entry that core never reads as versions (constants.h:76,83,84).
_NOT_VERSIONS = frozenset({"warmup", "initial_state", "configs"})
# std::stoll in the C locale: leading white space, a sign, ASCII digits; the rest is ignored.
_STOLL = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")
_DEFAULT_FILES = {"tensorrt": "model.plan", "onnxruntime": "model.onnx", "openvino": "model.xml",
                  "pytorch": "model.pt", "python": "model.py"}

T = TypeVar("T")


def read_version_number(folder_name: str) -> int | None:
    """The version core reads from a folder of an entry, or None where it ignores the folder: a
    name core skips, a name of several characters starting with '0', or one ``std::stoll``
    cannot convert. ``1abc`` reads as 1, as in core (its files are then looked for in ``1``)."""
    if folder_name in _NOT_VERSIONS or (len(folder_name) > 1 and folder_name.startswith("0")):
        return None
    found = _STOLL.match(folder_name)
    return int(found.group(1)) if found else None


def entry_host(config: model_config_pb2.ModelConfig) -> Host:
    """The host an entry is meant for: a GPU host where its instance groups ask for KIND_GPU;
    either host otherwise (compose's GPU and CPU profiles serve one repository)."""
    gpu = model_config_pb2.ModelInstanceGroup.KIND_GPU
    return "gpu" if any(group.kind == gpu for group in config.instance_group) else "any"


def _triton_version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"[0-9]+", text)[:3])


@dataclass(eq=False)
class EntryFacts:
    """One entry: its folder, its config as Triton's own message (every field core reads), the
    host and release it is checked for, and the other entries' configs, for ensembles.
    ``entry_name`` is the name the folder will have, where it is checked before being renamed
    into place (a writer's staging folder)."""

    folder: Path
    config: model_config_pb2.ModelConfig
    host: Host = "any"
    triton_version: str = EMBEDDED_TRITON_VERSION
    repository: Mapping[str, model_config_pb2.ModelConfig] = field(default_factory=dict)
    entry_name: str = ""
    _memo: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def folder_name(self) -> str:
        return self.entry_name or self.folder.name

    @property
    def name(self) -> str:
        # Core fills an empty name from the folder's (model_config_utils.cc:1032-1034).
        return self.config.name or self.folder_name

    @functools.cached_property
    def parameters(self) -> dict[str, str]:
        return {key: value.string_value for key, value in self.config.parameters.items()}

    @property
    def max_batch_size(self) -> int:
        return self.config.max_batch_size

    def release_at_least(self, version: str) -> bool:
        return _triton_version(self.triton_version) >= _triton_version(version)

    def hosts(self) -> tuple[Literal["cpu", "gpu"], ...]:
        return ("cpu", "gpu") if self.host == "any" else (self.host,)

    def memo(self, key: Any, compute: Callable[[], T]) -> T:
        """``compute()`` once per entry (a model file read by several rules is read once)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @functools.cached_property
    def subfolders(self) -> tuple[str, ...]:
        try:
            return tuple(sorted(p.name for p in self.folder.iterdir() if p.is_dir()))
        except OSError:
            return ()

    @functools.cached_property
    def backend(self) -> str:
        """The backend core hands the entry to (``ensemble`` for an ensemble; "" where core
        cannot tell)."""
        config = self.config
        if config.platform == "ensemble":
            return "ensemble"
        if config.backend:
            return config.backend
        platforms = {"tensorrt_plan": "tensorrt", "onnxruntime_onnx": "onnxruntime",
                     "pytorch_libtorch": "pytorch", "tensorflow_savedmodel": "tensorflow",
                     "tensorflow_graphdef": "tensorflow"}
        if config.platform in platforms:
            return platforms[config.platform]
        if config.platform:
            return ""
        by_file = {file: backend for backend, file in _DEFAULT_FILES.items()}
        if config.default_model_filename:
            return by_file.get(config.default_model_filename, "")
        # Core looks into the first version folder (in name order) for a default file.
        if self.subfolders:
            contents = {p.name for p in (self.folder / self.subfolders[0]).iterdir()}
            for backend, file in _DEFAULT_FILES.items():
                if file in contents:
                    return backend
        return ""

    @property
    def model_filename(self) -> str:
        return self.config.default_model_filename or _DEFAULT_FILES.get(self.backend, "")

    @functools.cached_property
    def versions(self) -> tuple[int, ...]:
        """The versions core loads: the folders it reads as numbers, then the version policy."""
        existing = {number for name in self.subfolders if (number := read_version_number(name)) is not None}
        policy = self.config.version_policy
        choice = policy.WhichOneof("policy_choice")
        if choice == "specific":
            return tuple(sorted(v for v in set(policy.specific.versions) if v in existing))
        if choice == "all":
            return tuple(sorted(existing))
        latest = policy.latest.num_versions if choice == "latest" else 1
        return tuple(sorted(existing)[-latest:]) if latest > 0 else ()

    def instance_kinds(self, host: Literal["cpu", "gpu"]) -> list[str]:
        """The kind of each instance group on ``host``: core resolves KIND_AUTO to the GPU where
        there is one (model_config_utils.cc:855-872) and gives a config without groups its
        backend's preferred kind (808-842: OpenVINO's is the CPU, the python backend's the GPU
        where there is one, the others' KIND_AUTO)."""
        kinds = [model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind) for g in self.config.instance_group]
        if not kinds:
            preferred = {"openvino": "KIND_CPU", "python": "KIND_GPU" if host == "gpu" else "KIND_CPU"}
            kinds = [preferred.get(self.backend, "KIND_AUTO")]
        return [("KIND_GPU" if host == "gpu" else "KIND_CPU") if kind == "KIND_AUTO" else kind for kind in kinds]

    def version_path(self, version: int) -> Path:
        # Core joins the number as it prints it, whatever the folder was named.
        return self.folder / str(version)
