"""The classifier entry: the config, labels, warm-up images and model file of one served model,
written as the next version (or a replacement) of its entry."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from resnet_serve.errors import RepositoryError
from resnet_serve.preprocessing import Preprocessing
from resnet_serve.progress import Reporter, SilentReporter
from resnet_serve.triton.config import (
    DynamicBatching,
    InstanceGroup,
    ModelConfig,
    ModelWarmup,
    ResponseCache,
    TensorConfig,
    WarmupInput,
)
from resnet_serve.triton.repository.checks import refuse_what_would_not_load
from resnet_serve.triton.repository.layout import (
    INPUT_NAME,
    LABELS_FILENAME,
    OUTPUT_NAME,
    PREPROCESSING_PARAMETER,
    TARGET_PARAMETER,
    WARMUP_FOLDER,
    ModelEntry,
    check_model_name,
    read_model_entry,
)
from resnet_serve.triton.repository.writing import (
    ENTRY_LOCK_TIMEOUT_S,
    copy_resource,
    write_config,
    write_entry_atomically,
    writing_entry,
)
from resnet_serve.triton.serving import GPU_ACCELERATORS, ServingOptions, ServingTarget

__all__ = ["Classifier", "write_model_entry"]



@dataclass(frozen=True)
class Classifier:
    """What a classifier entry serves: its model file (ONNX, or a TensorRT engine with its
    ``<plan>.json`` sidecar beside it), its classes, the preprocessing its inputs had, and
    metadata for the config's parameters (architecture, accuracy, ...).

    Raises:
        RepositoryError: no class names, a class name that is not one non-empty line, or a
            metadata key the writer reserves.
    """

    model_file: Path
    class_names: tuple[str, ...]
    preprocessing: Preprocessing
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "metadata", dict(self.metadata))
        if not self.class_names:
            raise RepositoryError("a classifier needs at least one class name")
        bad = [c for c in self.class_names if not c.strip() or "\n" in c or "\r" in c]
        if bad:
            raise RepositoryError(f"class names must be non-empty single lines, got {bad!r}")
        if PREPROCESSING_PARAMETER in self.metadata or TARGET_PARAMETER in self.metadata:
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


def _classifier_config(name: str, classifier: Classifier, settings: ServingOptions, *, warmups: int) -> ModelConfig:
    target = settings.serving_target
    input_shape = classifier.preprocessing.input_shape
    parameters = {
        **classifier.metadata,
        PREPROCESSING_PARAMETER: json.dumps(classifier.preprocessing.to_dict(), sort_keys=True),
        TARGET_PARAMETER: target.name,
        **_runtime_parameters(settings),
    }
    accelerator = settings.gpu_accelerator
    return ModelConfig(
        name=name,
        backend=target.backend,
        platform=target.platform,
        max_batch_size=settings.max_batch_size,
        # Declared NCHW, as Triton's image-classification examples declare theirs: generic image
        # clients (image_client.py) refuse an input without a layout.
        inputs=(TensorConfig(name=INPUT_NAME, data_type="TYPE_FP32", dims=input_shape, format="FORMAT_NCHW"),),
        outputs=(
            TensorConfig(
                name=OUTPUT_NAME, data_type="TYPE_FP32", dims=(len(classifier.class_names),),
                label_filename=LABELS_FILENAME,
            ),
        ),
        dynamic_batching=DynamicBatching(
            preferred_batch_size=settings.preferred_batch_sizes,
            max_queue_delay_microseconds=settings.max_queue_delay_us,
        ),
        instance_groups=(
            InstanceGroup(count=settings.instances, kind=settings.triton_instance_kind or target.instance_kind),
        ),
        parameters=parameters,
        default_model_filename=target.default_model_filename,
        version_policy=settings.version_policy,
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
        gpu_accelerators=() if accelerator is None else (GPU_ACCELERATORS[accelerator],),
    )


def _runtime_parameters(settings: ServingOptions) -> dict[str, str]:
    """The parameters the target's backend reads (ServingOptions checked which apply)."""
    parameters = {}
    if settings.threads is not None:
        parameters[settings.serving_target.threads_parameter] = str(settings.threads)
    if settings.bf16:
        # The only value the OpenVINO backend accepts for this key.
        parameters["HINT_BF16"] = "YES"
    if settings.batch_padding:
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
    classifier: Classifier,
    settings: ServingOptions = ServingOptions(),
    warmup_images: np.ndarray | None = None,
    lock_timeout_s: float = ENTRY_LOCK_TIMEOUT_S,
    reporter: Reporter | None = None,
) -> ModelEntry:
    """Add a version to a classifier entry (or create it) atomically and return it.

    ``settings`` says how it is served (target, version, batching, instances, ...);
    ``settings.version`` defaults to the next number; earlier versions stay on disk, and must
    agree with this one on class names, input shape, preprocessing and target, unless
    ``settings.replace`` removes them; ``settings.retarget`` lets this version change the
    target when Triton loads the same file from every version under both (``model.onnx`` for
    onnxruntime and openvino): the new target then serves them all. ``warmup_images`` (a few
    real preprocessed images, N×C×H×W) become Triton warm-up requests. The staged entry is
    checked against the backend contract: what the official container would refuse is not
    written.

    A failed write leaves the repository exactly as it was. A server polling the repository
    may briefly miss the entry between the two renames of the swap. Writers of one name take
    turns (see the package notes); one waits at most ``lock_timeout_s`` for another, and
    ``reporter`` hears of the wait and of what a killed writer left that this one cleaned up.
    """
    check_model_name(name)
    if not classifier.model_file.is_file():
        raise RepositoryError(f"model file {classifier.model_file} does not exist")
    classifier = replace(classifier, preprocessing=settings.served_preprocessing(classifier.preprocessing))
    warmups = _warmup_samples(warmup_images, classifier.preprocessing.input_shape)
    config = _classifier_config(name, classifier, settings, warmups=len(warmups))
    with writing_entry(repository, name, timeout_s=lock_timeout_s, reporter=reporter or SilentReporter()):
        # Read under the lock: a writer that finished while this one waited added a version.
        existing = None if settings.replace else _existing_entry(repository, name)
        kept = existing.versions if existing else ()
        if existing is not None:
            _refuse_incompatible_version(existing, config, classifier.class_names, retarget=settings.retarget)
        version = settings.version
        if version is None:
            version = max(kept, default=0) + 1
        elif version in kept:
            raise RepositoryError(
                f"model {name!r} already has version {version}; versions are never overwritten: "
                "choose another version, or replace the entry"
            )

        def build(folder: Path) -> None:
            if existing is not None:
                _link_versions(existing, folder)
            write_config(folder, config)
            (folder / LABELS_FILENAME).write_text("".join(f"{c}\n" for c in classifier.class_names), encoding="utf-8")
            if warmups:
                (folder / WARMUP_FOLDER).mkdir()
                for i, image in enumerate(warmups):
                    (folder / WARMUP_FOLDER / f"input_{i}").write_bytes(image.tobytes())
            _write_model_files(folder / str(version), model_file=classifier.model_file,
                               target=settings.serving_target)
            refuse_what_would_not_load(folder, name=name, config=config, source=classifier.model_file)

        write_entry_atomically(repository, name, build)
        return read_model_entry(repository=repository, name=name, version=version)


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


def _write_model_files(version_folder: Path, *, model_file: Path, target: ServingTarget) -> None:
    version_folder.mkdir()
    model_path = version_folder / target.model_filename
    shutil.copyfile(model_file, model_path)
    if not target.model_filename.endswith(".onnx"):
        # A TensorRT plan cannot be inspected without TensorRT and its GPU; the JSON sidecar
        # that records which ones it needs travels with it instead.
        sidecar = model_file.with_name(f"{model_file.name}.json")
        if not sidecar.is_file():
            raise RepositoryError(f"{model_file} has no sidecar {sidecar.name} beside it")
        shutil.copyfile(sidecar, model_path.with_name(f"{model_path.name}.json"))
    if target.copies_python_model:
        copy_resource("resnet_serve.triton.python_model", target.python_model, version_folder / "model.py")
