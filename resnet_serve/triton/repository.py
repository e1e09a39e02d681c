"""Write and read entries of a Triton model repository, laid out as the official images load it.

A classifier entry:

    <repository>/<name>/config.pbtxt
    <repository>/<name>/labels.txt          one class name per line (classification extension)
    <repository>/<name>/warmup/input_<i>    real preprocessed images, raw FP32 (model_warmup)
    <repository>/<name>/<version>/model.onnx
    <repository>/<name>/<version>/model.plan + model.plan.json   (TensorRT engine + its sidecar)
    <repository>/<name>/<version>/model.py  only for the python-onnxruntime target

and beside it the image pipeline, which takes encoded files instead of float tensors:

    <repository>/<name>-preprocess/         python backend: BYTES (JPEG, PNG, ...) → model input
    <repository>/<name>-image/              ensemble: -preprocess, then <name>; labelled top-k

Versions: every export adds a version folder and leaves the earlier ones; config.pbtxt and
labels.txt are shared by all of them, so a version must keep the entry's classes, input shape,
preprocessing and target (or replace the entry). Preprocessing and other metadata travel in the
config's `parameters`, so any client can read them from the server.

Every write is atomic: the entry is built in a hidden folder inside the repository (earlier
versions hard-linked in, not copied), read back and checked, then swapped in with renames.

Writers of one entry take turns: each holds an exclusive lock (`fcntl.flock`) on the hidden file
`.<name>.lock` from reading the entry's versions to the swap, so concurrent exports of one name
serialise (or, after a timeout, fail with one line) instead of racing on the renames. The
holder removes the file before it lets go, so a repository at rest has none; a waiter that
finds it has locked a removed file tries again. The writer's folders carry its pid,
`.<name>.staging-<pid>-<random>` (the entry being built) and `.<name>.old-<pid>-<random>` (the
entry it replaces), so that what a killed writer leaves is recognised: the next writer of that
name removes its staging folder (or puts back an entry it had moved aside), and `serve` skips
it with a line saying so. Triton loads folders only: a lock file is nothing to it.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import io
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from tritonclient.grpc import model_config_pb2

from resnet_serve.errors import RepositoryError, ResnetServeError, first_line
from resnet_serve.files import give_default_permissions, pid_running
from resnet_serve.preprocessing import Preprocessing
from resnet_serve.progress import Reporter, SilentReporter
from resnet_serve.triton.config import (
    ENSEMBLE_PLATFORM,
    GPU_ACCELERATORS,
    ONNXRUNTIME,
    OPENVINO,
    DynamicBatching,
    EnsembleStep,
    ExecutionAccelerator,
    GpuAccelerator,
    InstanceGroup,
    ModelConfig,
    ModelWarmup,
    ResponseCache,
    ServingTarget,
    TensorConfig,
    VersionPolicy,
    WarmupInput,
    get_serving_target,
)
from resnet_serve.triton.contract import EntryFacts, entry_host, entry_violations
from resnet_serve.triton.entry_files import (
    MAX_CONFIG_BYTES,
    MAX_LABEL_BYTES,
    name_problem,
    read_bounded,
    tree_problems,
)
from resnet_serve.triton.images import deploy_image

__all__ = [
    "CONFIG_FILENAME",
    "ENTRY_LOCK_TIMEOUT_S",
    "IMAGE_INPUT_NAME",
    "INPUT_NAME",
    "LABELS_FILENAME",
    "OUTPUT_NAME",
    "PREPROCESSING_PARAMETER",
    "TARGET_PARAMETER",
    "WARMUP_FOLDER",
    "EntrySummary",
    "ModelEntry",
    "WriterFolder",
    "backend_of",
    "entry_target",
    "image_pipeline_names",
    "list_model_entries",
    "model_filename",
    "read_model_entry",
    "read_warmup_images",
    "summarize_repository",
    "write_image_pipeline",
    "write_model_entry",
    "writer_folder",
]

CONFIG_FILENAME = "config.pbtxt"
LABELS_FILENAME = "labels.txt"
WARMUP_FOLDER = "warmup"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
IMAGE_INPUT_NAME = "image"
PREPROCESSING_PARAMETER = "preprocessing"
TARGET_PARAMETER = "serving_target"
ACCURACY_PARAMETER = "test_accuracy"

# How long a writer waits for another writer of the same entry. A writer holds the lock only
# while it writes the entry (export and verification come before), seconds even for large models.
ENTRY_LOCK_TIMEOUT_S = 120.0

# The file Triton loads when a config names none (each backend's default).
_DEFAULT_MODEL_FILES = {"onnxruntime": "model.onnx", "tensorrt": "model.plan", "openvino": "model.xml",
                        "python": "model.py"}
_PLATFORM_BACKENDS = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt",
                      "pytorch_libtorch": "pytorch", "tensorflow_savedmodel": "tensorflow",
                      "tensorflow_graphdef": "tensorflow", ENSEMBLE_PLATFORM: ENSEMBLE_PLATFORM}

# What a `<name>-preprocess` entry imports besides numpy, Pillow and the stub: resnet-serve
# modules copied into its version folder as resnet_serve/<name> (package, file, copied name).
# The server decodes with the very code the client uses, so bytes in and pixels in agree.
_PREPROCESS_MODULES = (
    ("resnet_serve", "errors.py", "errors.py"),
    ("resnet_serve", "preprocessing.py", "preprocessing.py"),
)
_PREPROCESS_TEMPLATE = "preprocess_model.py"


@dataclass(frozen=True)
class ModelEntry:
    """One model of a repository, as written or read back.

    `version` is the one written (or, read back, the highest on disk); `model_path` is its
    model file (None for an ensemble, which has none, or where the backend's file is unknown).
    """

    name: str
    version: int
    versions: tuple[int, ...]
    path: Path
    config_path: Path
    labels_path: Path
    model_path: Path | None
    config: ModelConfig
    class_names: tuple[str, ...]

    @property
    def preprocessing(self) -> dict[str, Any]:
        text = self.config.parameters.get(PREPROCESSING_PARAMETER)
        return json.loads(text) if text else {}


@dataclass(frozen=True)
class EntrySummary:
    """One line of `repo list`: what an entry serves, its versions and their sizes on disk, or
    why it cannot be read (``problem``; the other fields are then empty)."""

    name: str
    target: str
    versions: tuple[int, ...]
    version_bytes: tuple[int, ...]
    test_accuracy: float | None
    problem: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target": self.target,
            "versions": [
                {"version": v, "bytes": size} for v, size in zip(self.versions, self.version_bytes, strict=True)
            ],
            "test_accuracy": self.test_accuracy,
            **({"problem": self.problem} if self.problem else {}),
        }


_WRITER_FOLDER = re.compile(r"^\.(?P<entry>.+)\.(?P<kind>staging|old)-(?P<pid>\d+)-[A-Za-z0-9_]+$")


@dataclass(frozen=True)
class WriterFolder:
    """A hidden folder an entry writer makes in the repository: ``staging`` (the entry it
    builds) or ``old`` (the entry it replaces, until the swap is done), with its pid."""

    path: Path
    entry: str
    kind: Literal["staging", "old"]
    pid: int

    @property
    def writer_running(self) -> bool:
        """Whether the process that made it still runs (a recycled pid reads as running)."""
        return pid_running(self.pid)

    def describe(self) -> str:
        what = "staging folder" if self.kind == "staging" else f"replaced copy of {self.entry!r}"
        if self.writer_running:
            return f"the {what} of running export pid {self.pid}"
        return f"a stale {what} of dead export pid {self.pid} (the next export of {self.entry!r} cleans it up)"


def writer_folder(path: Path) -> WriterFolder | None:
    """The writer folder ``path`` is, or None for any other name."""
    found = _WRITER_FOLDER.match(path.name)
    if found is None:
        return None
    kind: Literal["staging", "old"] = "staging" if found["kind"] == "staging" else "old"
    return WriterFolder(path=path, entry=found["entry"], kind=kind, pid=int(found["pid"]))


def _check_name(name: str) -> None:
    if name_problem(name):
        raise RepositoryError(
            f"invalid model name {name!r}: use letters, digits, '_', '-' and '.', "
            "not starting with '.' or '-' and without path separators"
        )


def image_pipeline_names(classifier: str) -> tuple[str, str]:
    """The names of a classifier's preprocessing model and image ensemble."""
    return f"{classifier}-preprocess", f"{classifier}-image"


# --- writing ---


def _check_arguments(
    *,
    name: str,
    model_file: Path,
    class_names: Sequence[str],
    version: int | None,
    metadata: Mapping[str, str],
) -> None:
    """Validate what can be checked before touching the disk."""
    _check_name(name)
    if not model_file.is_file():
        raise RepositoryError(f"model file {model_file} does not exist")
    if not class_names:
        raise RepositoryError("a classifier needs at least one class name")
    bad = [c for c in class_names if not c.strip() or "\n" in c or "\r" in c]
    if bad:
        raise RepositoryError(f"class names must be non-empty single lines, got {bad!r}")
    if version is not None and version < 1:
        # Triton ignores version folders named 0.
        raise RepositoryError(f"model version must be >= 1, got {version}")
    if PREPROCESSING_PARAMETER in metadata or TARGET_PARAMETER in metadata:
        raise RepositoryError(
            f"metadata keys {PREPROCESSING_PARAMETER!r} and {TARGET_PARAMETER!r} are reserved"
        )


def _warmup_samples(images: np.ndarray | None, input_shape: tuple[int, ...]) -> list[np.ndarray]:
    if images is None:
        return []
    batch = np.asarray(images)
    if batch.ndim != 4 or tuple(batch.shape[1:]) != tuple(input_shape) or not len(batch):
        raise RepositoryError(
            f"warm-up images must be a batch of preprocessed {list(input_shape)} images, got {list(batch.shape)}"
        )
    if not np.issubdtype(batch.dtype, np.floating) or not np.isfinite(batch).all():
        raise RepositoryError(f"warm-up images must be finite floats, got {batch.dtype}")
    return [np.ascontiguousarray(image, dtype="<f4") for image in batch]


def _classifier_config(
    *,
    name: str,
    target: ServingTarget,
    input_shape: tuple[int, int, int],
    num_classes: int,
    max_batch_size: int,
    instances: int,
    instance_kind: str | None,
    preferred_batch_sizes: Sequence[int],
    max_queue_delay_us: int,
    parameters: Mapping[str, str],
    warmups: int,
    version_policy: VersionPolicy | None,
    gpu_accelerators: tuple[ExecutionAccelerator, ...],
) -> ModelConfig:
    return ModelConfig(
        name=name,
        backend=target.backend,
        platform=target.platform,
        max_batch_size=max_batch_size,
        # Declared NCHW, as Triton's image-classification examples declare theirs: generic image
        # clients (image_client.py) refuse an input without a layout.
        inputs=(TensorConfig(name=INPUT_NAME, data_type="TYPE_FP32", dims=input_shape, format="FORMAT_NCHW"),),
        outputs=(
            TensorConfig(
                name=OUTPUT_NAME, data_type="TYPE_FP32", dims=(num_classes,), label_filename=LABELS_FILENAME
            ),
        ),
        dynamic_batching=DynamicBatching(
            preferred_batch_size=tuple(preferred_batch_sizes), max_queue_delay_microseconds=max_queue_delay_us
        ),
        instance_groups=(InstanceGroup(count=instances, kind=instance_kind or target.instance_kind),),
        parameters=parameters,
        default_model_filename=target.default_model_filename,
        version_policy=version_policy,
        model_warmup=tuple(
            ModelWarmup(
                name=f"real_image_{i}",
                inputs={INPUT_NAME: WarmupInput(
                    data_type="TYPE_FP32", dims=input_shape, source="input_data_file", input_data_file=f"input_{i}"
                )},
            )
            for i in range(warmups)
        ),
        # Explicitly off: identical requests are rare for images, and a cache would hide the
        # model's own latency from benchmarks.
        response_cache=ResponseCache(enable=False),
        gpu_accelerators=gpu_accelerators,
    )


def _runtime_parameters(
    target: ServingTarget, *, intra_op_threads: int | None, bf16: bool, batch_padding: bool
) -> dict[str, str]:
    parameters = {}
    if intra_op_threads is not None:
        if intra_op_threads < 1:
            raise RepositoryError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
        if not target.threads_parameter:
            raise RepositoryError(f"the {target.name} target takes no thread count")
        parameters[target.threads_parameter] = str(intra_op_threads)
    if bf16:
        if target is not OPENVINO:
            raise RepositoryError(f"bf16 is an option of the {OPENVINO.name} target, not of {target.name}")
        # The only value the OpenVINO backend accepts for this key.
        parameters["HINT_BF16"] = "YES"
    if batch_padding:
        if target is not OPENVINO:
            raise RepositoryError(f"batch padding is an option of the {OPENVINO.name} target, not of {target.name}")
        # The only value that turns it on: 'true' or '1' would leave it off without a word.
        parameters["ENABLE_BATCH_PADDING"] = "YES"
    return parameters


def _refuse_incompatible_version(
    existing: ModelEntry, config: ModelConfig, class_names: Sequence[str], *, retarget: bool
) -> None:
    old = existing.config
    # A new target can still serve the earlier versions if Triton loads the same file from each.
    retargetable = retarget and bool(old.default_model_filename) \
        and old.default_model_filename == config.default_model_filename
    differences = [
        what for what, differs in (
            ("class names", tuple(existing.class_names) != tuple(class_names)),
            ("input shape", old.inputs[0].dims != config.inputs[0].dims),
            ("preprocessing", old.parameters.get(PREPROCESSING_PARAMETER)
             != config.parameters.get(PREPROCESSING_PARAMETER)),
            ("target", (old.backend, old.platform) != (config.backend, config.platform) and not retargetable),
        ) if differs
    ]
    if differences:
        raise RepositoryError(
            f"model {existing.name!r} has versions {list(existing.versions)} with other "
            f"{', '.join(differences)}; its config and labels are shared by every version: "
            "use another name, or replace the entry (its earlier versions are removed)"
        )


def write_model_entry(
    *,
    repository: Path,
    name: str,
    onnx_path: Path,
    class_names: Sequence[str],
    preprocessing: Preprocessing,
    target: ServingTarget = ONNXRUNTIME,
    max_batch_size: int | None = None,
    version: int | None = None,
    instances: int = 1,
    instance_kind: str | None = None,
    preferred_batch_sizes: Sequence[int] = (),
    max_queue_delay_us: int = 100,
    intra_op_threads: int | None = None,
    bf16: bool = False,
    batch_padding: bool = False,
    gpu_accelerator: GpuAccelerator | None = None,
    warmup_images: np.ndarray | None = None,
    version_policy: VersionPolicy | None = None,
    replace_entry: bool = False,
    retarget: bool = False,
    metadata: Mapping[str, str] | None = None,
    lock_timeout_s: float = ENTRY_LOCK_TIMEOUT_S,
    reporter: Reporter | None = None,
) -> ModelEntry:
    """Add a version to a classifier entry (or create it) atomically and return it.

    ``onnx_path`` is the model file the target serves: ONNX, or for ``TENSORRT_PLAN`` an
    engine with its ``<plan>.json`` sidecar beside it. ``version`` defaults to the next number;
    earlier versions stay on disk, and must agree with this one on class names, input shape,
    preprocessing and target, unless ``replace_entry`` removes them; ``retarget`` lets this
    version change the target when Triton loads the same file from every version under both
    (``model.onnx`` for onnxruntime and openvino): the new target then serves them all.
    ``warmup_images`` (a few real preprocessed images, N×C×H×W) become Triton warm-up
    requests. ``gpu_accelerator`` (onnxruntime) names the execution accelerator its GPU
    instances use (``GPU_ACCELERATORS``). ``max_batch_size`` defaults to the target's (1 for
    OpenVINO, whose backend fails any other total batch; ``batch_padding`` lets it pad
    instead). The staged entry is checked against the backend contract: what the official
    container would refuse is not written.
    ``instance_kind`` defaults to the target's (KIND_AUTO for onnxruntime: the GPU
    where there is one).

    A failed write leaves the repository exactly as it was. A server polling the repository
    may briefly miss the entry between the two renames of the swap. Writers of one name take
    turns (see the module notes); one waits at most ``lock_timeout_s`` for another, and
    ``reporter`` hears of the wait and of what a killed writer left that this one cleaned up.
    """
    metadata = dict(metadata or {})
    input_shape = preprocessing.input_shape
    _check_arguments(
        name=name, model_file=onnx_path, class_names=class_names, version=version, metadata=metadata,
    )
    preprocessing_json = json.dumps(preprocessing.to_dict(), sort_keys=True)
    warmups = _warmup_samples(warmup_images, input_shape)
    parameters = {
        **metadata,
        PREPROCESSING_PARAMETER: preprocessing_json,
        TARGET_PARAMETER: target.name,
        **_runtime_parameters(target, intra_op_threads=intra_op_threads, bf16=bf16, batch_padding=batch_padding),
    }
    if gpu_accelerator is not None and target is not ONNXRUNTIME:
        raise RepositoryError(f"a GPU accelerator is an option of the {ONNXRUNTIME.name} target, not of {target.name}")
    config = _classifier_config(
        name=name, target=target, input_shape=input_shape, num_classes=len(class_names),
        max_batch_size=target.max_batch_size if max_batch_size is None else max_batch_size,
        instances=instances, instance_kind=instance_kind,
        preferred_batch_sizes=preferred_batch_sizes, max_queue_delay_us=max_queue_delay_us,
        parameters=parameters, warmups=len(warmups), version_policy=version_policy,
        gpu_accelerators=() if gpu_accelerator is None else (GPU_ACCELERATORS[gpu_accelerator],),
    )
    with _writing_entry(repository, name, timeout_s=lock_timeout_s, reporter=reporter or SilentReporter()):
        # Read under the lock: a writer that finished while this one waited added a version.
        existing = None if replace_entry else _existing_entry(repository, name)
        kept = existing.versions if existing else ()
        if existing is not None:
            _refuse_incompatible_version(existing, config, class_names, retarget=retarget)
        if version is None:
            version = max(kept, default=0) + 1
        elif version in kept:
            raise RepositoryError(
                f"model {name!r} already has version {version}; versions are never overwritten: "
                "choose another version, or replace the entry"
            )
        written = version

        def build(folder: Path) -> None:
            if existing is not None:
                _link_versions(existing, folder)
            _write_config(folder, config)
            (folder / LABELS_FILENAME).write_text("".join(f"{c}\n" for c in class_names), encoding="utf-8")
            if warmups:
                (folder / WARMUP_FOLDER).mkdir()
                for i, image in enumerate(warmups):
                    (folder / WARMUP_FOLDER / f"input_{i}").write_bytes(image.tobytes())
            _write_model_files(folder / str(written), onnx_path=onnx_path, target=target)
            _refuse_what_would_not_load(folder, name=name, config=config, source=onnx_path)

        _write_entry_atomically(repository, name, build)
        return read_model_entry(repository=repository, name=name, version=written)


def _refuse_what_would_not_load(
    folder: Path, *, name: str, config: ModelConfig, source: Path | None = None,
    repository: Mapping[str, model_config_pb2.ModelConfig] | None = None,
) -> None:
    """The staged entry against the backend contract, for the official image deploy/ builds:
    an entry the official container would refuse is never swapped in."""
    message = config.to_protobuf()
    facts = EntryFacts(folder=folder, entry_name=name, config=message, host=entry_host(message),
                       triton_version=deploy_image().triton_version, repository=repository or {})
    errors = [v for v in entry_violations(facts) if v.severity == "error"]
    if errors:
        raise RepositoryError(f"{source or name}: the official container would refuse model {name!r}: {errors[0]}")


def _existing_entry(repository: Path, name: str) -> ModelEntry | None:
    if not (repository / name).exists():
        return None
    try:
        return read_model_entry(repository=repository, name=name)
    except RepositoryError as error:
        raise RepositoryError(f"{error}; cannot add a version to it: replace the entry") from None


def _link_versions(existing: ModelEntry, folder: Path) -> None:
    """Earlier version folders enter the staging folder as hard links: no bytes are copied, and
    since files are only ever replaced, never changed in place, the old entry stays intact."""

    def link(source: str, destination: str) -> None:
        try:
            os.link(source, destination)
        except OSError:
            shutil.copy2(source, destination)

    for version in existing.versions:
        shutil.copytree(existing.path / str(version), folder / str(version), copy_function=link)


def _write_config(folder: Path, config: ModelConfig) -> None:
    text = config.render()
    # Read back through Triton's schema and our dataclasses: what lands on disk must parse to
    # exactly the config we meant.
    if ModelConfig.parse(text) != config:
        raise RepositoryError(f"model {config.name!r}: the rendered config does not read back")
    (folder / CONFIG_FILENAME).write_text(text, encoding="utf-8")


def _copy_resource(package: str, filename: str, destination: Path) -> None:
    destination.write_text(resources.files(package).joinpath(filename).read_text(encoding="utf-8"), encoding="utf-8")


def _write_model_files(version_folder: Path, *, onnx_path: Path, target: ServingTarget) -> None:
    version_folder.mkdir()
    model_path = version_folder / target.model_filename
    shutil.copyfile(onnx_path, model_path)
    if not target.model_filename.endswith(".onnx"):
        # A TensorRT plan cannot be inspected without TensorRT and its GPU; the JSON sidecar
        # that records which ones it needs travels with it instead.
        sidecar = onnx_path.with_name(f"{onnx_path.name}.json")
        if not sidecar.is_file():
            raise RepositoryError(f"{onnx_path} has no sidecar {sidecar.name} beside it")
        shutil.copyfile(sidecar, model_path.with_name(f"{model_path.name}.json"))
    if target.copies_python_model:
        _copy_resource("resnet_serve.triton.python_model", target.python_model, version_folder / "model.py")


@contextlib.contextmanager
def _writing_entry(repository: Path, name: str, *, timeout_s: float, reporter: Reporter) -> Iterator[None]:
    """Hold the entry's lock (waiting up to ``timeout_s`` for another writer), and clean up
    what dead writers of it left, before the block writes the entry."""
    _check_name(name)
    lock_path = repository / f".{name}.lock"
    deadline = time.monotonic() + timeout_s
    waiting = False
    while True:
        try:
            repository.mkdir(parents=True, exist_ok=True)
            # Appending: a writer that does not hold the lock yet never truncates the holder's pid.
            lock = lock_path.open("a+", encoding="utf-8")
        except OSError as error:
            raise RepositoryError(f"cannot write to model repository {repository}: {first_line(error)}") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            holder = _read_holder(lock_path)
            if time.monotonic() >= deadline:
                raise RepositoryError(
                    f"model {name!r} in {repository} is being written by export pid {holder}; "
                    f"gave up after waiting {timeout_s:g} s"
                ) from None
            if not waiting:
                reporter.message(f"waiting for export pid {holder}, which is writing {name!r} in {repository}")
                waiting = True
            time.sleep(0.05)
            continue
        if _same_file(lock, lock_path):
            break
        lock.close()  # its holder removed it before letting go: lock the file now at that path
    with lock:
        try:
            try:
                # Who holds it, for a writer that waits; the lock itself is the flock.
                lock.seek(0)
                lock.truncate()
                lock.write(f"{os.getpid()}\n")
                lock.flush()
                cleaned = _clean_up_dead_writers(repository, name)
            except OSError as error:
                raise RepositoryError(f"cannot write to model repository {repository}: {first_line(error)}") from None
            for message in cleaned:
                reporter.message(message)
            yield
        finally:
            # Removed while still held, so the next writer never locks a file that is gone.
            lock_path.unlink(missing_ok=True)


def _read_holder(lock_path: Path) -> str:
    try:
        return lock_path.read_text(encoding="utf-8").strip() or "unknown"
    except OSError:
        return "unknown"


def _same_file(handle: Any, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), path.stat())
    except FileNotFoundError:
        return False


def _clean_up_dead_writers(repository: Path, name: str) -> list[str]:
    """Remove what killed writers of ``name`` left, and say what was done.

    Called under the entry's lock, so no live writer of ``name`` is at work. A staging folder
    is half-built and goes. An ``old`` folder is the entry a writer moved aside just before
    its new one went in: where the entry is missing, the writer died between the two renames,
    and the old entry is put back; otherwise the swap was done and the old copy goes.
    """
    done = []
    destination = repository / name
    for path in sorted(repository.glob(f".{glob.escape(name)}.*")):
        found = writer_folder(path)
        if found is None or found.entry != name or found.writer_running:
            continue
        if found.kind == "old" and not destination.exists():
            path.rename(destination)
            done.append(f"restored {name!r} from {path.name}, where export pid {found.pid} left it when it died")
        else:
            shutil.rmtree(path, ignore_errors=True)
            done.append(f"removed {path.name}, {found.describe()}")
    return done


def _write_entry_atomically(repository: Path, name: str, build: Callable[[Path], None]) -> None:
    """Build the entry in a staging folder and swap it in; the caller holds the entry's lock."""
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.staging-{os.getpid()}-", dir=repository))
        give_default_permissions(staging)
    except OSError as error:
        raise RepositoryError(f"cannot write to model repository {repository}: {error}") from None
    try:
        build(staging)
        _swap_in(staging, repository / name)
    except OSError as error:
        raise RepositoryError(f"writing model {name!r} to {repository} failed: {error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_in(staging: Path, destination: Path) -> None:
    if not destination.exists():
        staging.rename(destination)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-{os.getpid()}-", dir=destination.parent))
    # rename() replaces an empty folder: the name is reserved by mkdtemp, then taken over.
    destination.rename(old)
    try:
        staging.rename(destination)
    except OSError:
        old.rename(destination)
        raise
    shutil.rmtree(old, ignore_errors=True)


# --- the image pipeline: <name>-preprocess and <name>-image ---


def write_image_pipeline(
    *,
    repository: Path,
    classifier: str,
    instances: int = 1,
    max_queue_delay_us: int = 100,
    lock_timeout_s: float = ENTRY_LOCK_TIMEOUT_S,
    reporter: Reporter | None = None,
) -> tuple[ModelEntry, ModelEntry]:
    """Write `<classifier>-preprocess` and `<classifier>-image` beside a classifier entry.

    The ensemble `-image` takes encoded image files (BYTES, one per batch row) as any client
    sends them, has `-preprocess` decode and prepare them with the classifier's own
    preprocessing (copies of resnet-serve's code, numpy and Pillow), feeds the classifier and
    returns its logits, labelled through the classification extension. The preprocessing
    model warms up with the classifier's first warm-up image, encoded as PNG. Each entry is
    replaced whole and atomically; both follow the classifier's latest version, whose lock is
    held throughout (and theirs while they are written), as `write_model_entry` holds it.
    """
    _check_name(classifier)
    reporter = reporter or SilentReporter()
    with contextlib.ExitStack() as locks:
        for name in (classifier, *image_pipeline_names(classifier)):
            locks.enter_context(_writing_entry(repository, name, timeout_s=lock_timeout_s, reporter=reporter))
        return _write_image_pipeline(repository=repository, classifier=classifier, instances=instances,
                                     max_queue_delay_us=max_queue_delay_us)


def _write_image_pipeline(
    *, repository: Path, classifier: str, instances: int, max_queue_delay_us: int
) -> tuple[ModelEntry, ModelEntry]:
    entry = read_model_entry(repository=repository, name=classifier)
    config = entry.config
    if [t.name for t in config.inputs] != [INPUT_NAME] or [t.name for t in config.outputs] != [OUTPUT_NAME]:
        raise RepositoryError(
            f"model {classifier!r} is not a resnet-serve classifier (input {INPUT_NAME!r}, output {OUTPUT_NAME!r})"
        )
    if config.max_batch_size < 1:
        raise RepositoryError(f"model {classifier!r} does not batch (max_batch_size 0); the image pipeline needs it")
    try:
        preprocessing = Preprocessing.from_dict(entry.preprocessing)
    except ResnetServeError as error:
        raise RepositoryError(f"model {classifier!r} has unusable preprocessing: {error}") from None
    if preprocessing.input_shape != config.inputs[0].dims:
        raise RepositoryError(
            f"model {classifier!r} takes {list(config.inputs[0].dims)}, its preprocessing makes "
            f"{list(preprocessing.input_shape)}"
        )
    preprocess_name, image_name = image_pipeline_names(classifier)
    image_input = TensorConfig(name=IMAGE_INPUT_NAME, data_type="TYPE_STRING", dims=(1,))
    warmup_png = _first_warmup_png(entry, preprocessing)
    preprocess_config = ModelConfig(
        name=preprocess_name,
        backend="python",
        max_batch_size=config.max_batch_size,
        inputs=(image_input,),
        outputs=(TensorConfig(name=INPUT_NAME, data_type="TYPE_FP32", dims=config.inputs[0].dims),),
        dynamic_batching=DynamicBatching(max_queue_delay_microseconds=max_queue_delay_us),
        instance_groups=(InstanceGroup(count=instances, kind="KIND_CPU"),),
        parameters={PREPROCESSING_PARAMETER: config.parameters[PREPROCESSING_PARAMETER]},
        model_warmup=() if warmup_png is None else (ModelWarmup(
            name="real_image_png",
            inputs={IMAGE_INPUT_NAME: WarmupInput(
                data_type="TYPE_STRING", dims=(1,), source="input_data_file", input_data_file=IMAGE_INPUT_NAME
            )},
        ),),
        response_cache=ResponseCache(enable=False),
    )
    preprocessed = "preprocessed"
    image_config = ModelConfig(
        name=image_name,
        platform=ENSEMBLE_PLATFORM,
        max_batch_size=config.max_batch_size,
        inputs=(image_input,),
        outputs=config.outputs,
        parameters={PREPROCESSING_PARAMETER: config.parameters[PREPROCESSING_PARAMETER]},
        ensemble_steps=(
            EnsembleStep(model_name=preprocess_name, input_map={IMAGE_INPUT_NAME: IMAGE_INPUT_NAME},
                         output_map={INPUT_NAME: preprocessed}),
            EnsembleStep(model_name=classifier, input_map={INPUT_NAME: preprocessed},
                         output_map={OUTPUT_NAME: OUTPUT_NAME}),
        ),
        response_cache=ResponseCache(enable=False),
    )

    def build_preprocess(folder: Path) -> None:
        _write_config(folder, preprocess_config)
        version_folder = folder / "1"
        package = version_folder / "resnet_serve"
        package.mkdir(parents=True)
        _copy_resource("resnet_serve.triton.python_model", _PREPROCESS_TEMPLATE, version_folder / "model.py")
        (package / "__init__.py").write_text(
            '"""Copies of the resnet-serve modules this preprocessing model imports."""\n', encoding="utf-8"
        )
        for source_package, filename, copied_name in _PREPROCESS_MODULES:
            _copy_resource(source_package, filename, package / copied_name)
        if warmup_png is not None:
            (folder / WARMUP_FOLDER).mkdir()
            # One TYPE_STRING element: its byte length (4 bytes, little-endian), then the bytes.
            (folder / WARMUP_FOLDER / IMAGE_INPUT_NAME).write_bytes(len(warmup_png).to_bytes(4, "little") + warmup_png)
        _refuse_what_would_not_load(folder, name=preprocess_name, config=preprocess_config)

    def build_image(folder: Path) -> None:
        _write_config(folder, image_config)
        shutil.copyfile(entry.labels_path, folder / LABELS_FILENAME)
        # An ensemble has no model file, but Triton serves only versions that have a folder.
        (folder / "1").mkdir()
        steps = {classifier: config.to_protobuf(), preprocess_name: preprocess_config.to_protobuf()}
        _refuse_what_would_not_load(folder, name=image_name, config=image_config, repository=steps)

    _write_entry_atomically(repository, preprocess_name, build_preprocess)
    _write_entry_atomically(repository, image_name, build_image)
    return (read_model_entry(repository=repository, name=preprocess_name),
            read_model_entry(repository=repository, name=image_name))


def read_warmup_images(entry: ModelEntry) -> np.ndarray | None:
    """A classifier's warm-up images as written by ``write_model_entry``: one N×C×H×W float32
    batch, or None when it has none."""
    files = [w.inputs[INPUT_NAME].input_data_file for w in entry.config.model_warmup
             if INPUT_NAME in w.inputs and w.inputs[INPUT_NAME].input_data_file]
    if not files:
        return None
    shape = entry.config.inputs[0].dims
    images = []
    for name in files:
        path = entry.path / WARMUP_FOLDER / name
        try:
            images.append(np.fromfile(path, dtype="<f4").reshape(shape))
        except (OSError, ValueError) as error:
            raise RepositoryError(f"{path} is not a {list(shape)} FP32 warm-up image: {error}") from None
    return np.stack(images)


def _first_warmup_png(entry: ModelEntry, preprocessing: Preprocessing) -> bytes | None:
    """The classifier's first warm-up image back in pixels (the inverse of its normalization),
    PNG-encoded: a real image for the preprocessing model to warm up with."""
    images = read_warmup_images(entry)
    if images is None:
        return None
    raw = images[0]
    mean = np.asarray(preprocessing.mean, np.float32)[:, None, None]
    std = np.asarray(preprocessing.std, np.float32)[:, None, None]
    pixels = np.clip(np.rint((raw * std + mean) * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# --- reading ---


def _version_folders(folder: Path) -> tuple[int, ...]:
    # ASCII digits only ("²".isdigit() is true), kept under their own name: Triton ignores
    # version folders named 0 or with leading zeros.
    return tuple(sorted(int(p.name) for p in folder.iterdir()
                        if p.is_dir() and p.name.isascii() and p.name.isdigit() and not p.name.startswith("0")))


def backend_of(config: ModelConfig) -> str:
    """The Triton backend that loads a config: its `backend`, or the one its platform means."""
    return config.backend or _PLATFORM_BACKENDS.get(config.platform, config.platform)


def model_filename(config: ModelConfig) -> str | None:
    """The file Triton loads from each version folder; None for an ensemble, which has none, and
    for a backend whose default file is not known here."""
    if config.platform == ENSEMBLE_PLATFORM:
        return None
    target = config.parameters.get(TARGET_PARAMETER)
    if target:
        return get_serving_target(target).model_filename
    return config.default_model_filename or _DEFAULT_MODEL_FILES.get(backend_of(config))


def entry_target(config: ModelConfig) -> str:
    """How an entry is served: the resnet-serve target it was written for, else its platform or
    backend (`ensemble`, `python`, ...)."""
    return config.parameters.get(TARGET_PARAMETER) or config.platform or config.backend


def read_model_entry(*, repository: Path, name: str, version: int | None = None) -> ModelEntry:
    """Read one entry back; `version` defaults to the highest version folder present."""
    _check_name(name)
    folder = repository / name
    config_path = folder / CONFIG_FILENAME
    try:
        config = ModelConfig.parse(read_bounded(config_path, limit=MAX_CONFIG_BYTES).decode("utf-8"))
        versions = _version_folders(folder)
    except (OSError, UnicodeDecodeError, RepositoryError) as error:
        raise RepositoryError(f"cannot read model {name!r} in {repository}: {first_line(error)}") from None
    if config.name != name:
        raise RepositoryError(f"{config_path} names model {config.name!r}, expected {name!r}")
    if not versions:
        raise RepositoryError(f"model {name!r} in {repository} has no version folder")
    version = max(versions) if version is None else version
    labelled = [t.label_filename for t in config.outputs if t.label_filename]
    labels_path = folder / (labelled[0] if labelled else LABELS_FILENAME)
    # Split as Triton's label provider splits them, on "\n" alone.
    class_names = tuple(
        read_bounded(labels_path, limit=MAX_LABEL_BYTES).decode("utf-8", errors="replace").removesuffix("\n")
        .split("\n")
    ) if labels_path.is_file() else ()
    filename = model_filename(config)
    return ModelEntry(
        name=name,
        version=version,
        versions=versions,
        path=folder,
        config_path=config_path,
        labels_path=labels_path,
        model_path=None if filename is None else folder / str(version) / filename,
        config=config,
        class_names=class_names,
    )


def _entry_folders(repository: Path) -> Iterator[Path]:
    if not repository.is_dir():
        raise RepositoryError(f"model repository {repository} does not exist")
    for folder in sorted(repository.iterdir()):
        if folder.is_dir() and not folder.name.startswith(".") and (folder / CONFIG_FILENAME).is_file():
            yield folder


def list_model_entries(repository: Path) -> list[ModelEntry]:
    """Every entry of a repository, sorted by name; hidden (staging) folders are skipped."""
    return [read_model_entry(repository=repository, name=folder.name) for folder in _entry_folders(repository)]


def _accuracy(config: ModelConfig) -> float | None:
    try:
        value = json.loads(config.parameters.get(ACCURACY_PARAMETER, "null"))
    except ValueError:
        return None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def summarize_repository(repository: Path) -> list[EntrySummary]:
    """`repo list`: every entry with its target, versions, bytes per version and recorded
    accuracy; an entry that cannot be read is listed with why (nothing is read from a folder
    that would hang or exhaust a reader: see ``entry_files``)."""
    summaries = []
    for folder in _entry_folders(repository):
        problem = name_problem(folder.name) or next(tree_problems(folder), "")
        entry = None
        try:
            entry = None if problem else read_model_entry(repository=repository, name=folder.name)
        except RepositoryError as error:
            problem = str(error)
        if entry is None:
            summaries.append(EntrySummary(name=folder.name, target="", versions=(), version_bytes=(),
                                          test_accuracy=None, problem=problem))
            continue
        sizes = tuple(
            sum(p.stat().st_size for p in (entry.path / str(v)).rglob("*") if p.is_file()) for v in entry.versions
        )
        summaries.append(EntrySummary(
            name=entry.name, target=entry_target(entry.config), versions=entry.versions,
            version_bytes=sizes, test_accuracy=_accuracy(entry.config),
        ))
    return summaries

