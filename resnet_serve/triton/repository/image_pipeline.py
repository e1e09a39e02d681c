"""The image pipeline beside a classifier: ``<name>-preprocess`` (python backend: encoded files
to the classifier's input, with copies of resnet-serve's own preprocessing code) and the
ensemble ``<name>-image`` (files in, labelled top-k out)."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from resnet_serve.errors import RepositoryError, ResnetServeError
from resnet_serve.preprocessing import Preprocessing
from resnet_serve.progress import Reporter, SilentReporter
from resnet_serve.triton.config import (
    ENSEMBLE_PLATFORM,
    DynamicBatching,
    EnsembleStep,
    InstanceGroup,
    ModelConfig,
    ModelWarmup,
    ResponseCache,
    TensorConfig,
    WarmupInput,
)
from resnet_serve.triton.repository.checks import refuse_what_would_not_load
from resnet_serve.triton.repository.layout import (
    IMAGE_INPUT_NAME,
    INPUT_NAME,
    LABELS_FILENAME,
    OUTPUT_NAME,
    PREPROCESSING_PARAMETER,
    WARMUP_FOLDER,
    ModelEntry,
    check_model_name,
    image_pipeline_names,
    read_model_entry,
    read_warmup_images,
)
from resnet_serve.triton.repository.writing import (
    ENTRY_LOCK_TIMEOUT_S,
    copy_resource,
    write_config,
    write_entry_atomically,
    writing_entry,
)

__all__ = ["write_image_pipeline"]

# What a `<name>-preprocess` entry imports besides numpy, Pillow and the stub: resnet-serve
# modules copied into its version folder as resnet_serve/<name> (package, file, copied name).
# The server decodes with the very code the client uses, so bytes in and pixels in agree.
_PREPROCESS_MODULES = (
    ("resnet_serve", "errors.py", "errors.py"),
    ("resnet_serve", "preprocessing.py", "preprocessing.py"),
)

_PREPROCESS_TEMPLATE = "preprocess_model.py"


def write_image_pipeline(
    *,
    repository: Path,
    classifier: str,
    instances: int = 1,
    max_batch_size: int | None = None,
    max_queue_delay_us: int = 100,
    lock_timeout_s: float = ENTRY_LOCK_TIMEOUT_S,
    reporter: Reporter | None = None,
) -> tuple[ModelEntry, ModelEntry]:
    """Write `<classifier>-preprocess` and `<classifier>-image` beside a classifier entry.

    The ensemble `-image` takes encoded image files (BYTES, one per batch row) as any client
    sends them, has `-preprocess` decode and prepare them with the classifier's own
    preprocessing (copies of resnet-serve's code, numpy and Pillow), feeds the classifier and
    returns its logits, labelled through the classification extension. The preprocessing
    model warms up with the classifier's first warm-up image, encoded as PNG. ``instances``,
    ``max_batch_size`` (None: the classifier's) and ``max_queue_delay_us`` are the
    preprocessing model's own; the ensemble takes batches of up to the smaller of its two
    steps' limits, since core refuses an ensemble that allows more than one of its steps
    (``ensemble.steps`` in resnet_serve.triton.contract). Each entry is
    replaced whole and atomically; both follow the classifier's latest version, whose lock is
    held throughout (and theirs while they are written), as `write_model_entry` holds it.
    """
    check_model_name(classifier)
    reporter = reporter or SilentReporter()
    with contextlib.ExitStack() as locks:
        for name in (classifier, *image_pipeline_names(classifier)):
            locks.enter_context(writing_entry(repository, name, timeout_s=lock_timeout_s, reporter=reporter))
        return _write_image_pipeline(repository=repository, classifier=classifier, instances=instances,
                                     max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us)


def _write_image_pipeline(
    *, repository: Path, classifier: str, instances: int, max_batch_size: int | None, max_queue_delay_us: int
) -> tuple[ModelEntry, ModelEntry]:
    entry = read_model_entry(repository=repository, name=classifier)
    config = entry.config
    if [t.name for t in config.inputs] != [INPUT_NAME] or [t.name for t in config.outputs] != [OUTPUT_NAME]:
        raise RepositoryError(
            f"model {classifier!r} is not a resnet-serve classifier (input {INPUT_NAME!r}, output {OUTPUT_NAME!r})"
        )
    if config.max_batch_size < 1:
        raise RepositoryError(f"model {classifier!r} does not batch (max_batch_size 0); the image pipeline needs it")
    if max_batch_size is not None and max_batch_size < 1:
        raise RepositoryError(f"the preprocessing model's max_batch_size must be ≥ 1, got {max_batch_size}")
    preprocess_batch = max_batch_size or config.max_batch_size
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
        max_batch_size=preprocess_batch,
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
        max_batch_size=min(config.max_batch_size, preprocess_batch),
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
        write_config(folder, preprocess_config)
        version_folder = folder / "1"
        package = version_folder / "resnet_serve"
        package.mkdir(parents=True)
        copy_resource("resnet_serve.triton.python_model", _PREPROCESS_TEMPLATE, version_folder / "model.py")
        (package / "__init__.py").write_text(
            '"""Copies of the resnet-serve modules this preprocessing model imports."""\n', encoding="utf-8"
        )
        for source_package, filename, copied_name in _PREPROCESS_MODULES:
            copy_resource(source_package, filename, package / copied_name)
        if warmup_png is not None:
            (folder / WARMUP_FOLDER).mkdir()
            # One TYPE_STRING element: its byte length (4 bytes, little-endian), then the bytes.
            (folder / WARMUP_FOLDER / IMAGE_INPUT_NAME).write_bytes(len(warmup_png).to_bytes(4, "little") + warmup_png)
        refuse_what_would_not_load(folder, name=preprocess_name, config=preprocess_config)

    def build_image(folder: Path) -> None:
        write_config(folder, image_config)
        shutil.copyfile(entry.labels_path, folder / LABELS_FILENAME)
        # An ensemble has no model file, but Triton serves only versions that have a folder.
        (folder / "1").mkdir()
        steps = {classifier: config.to_protobuf(), preprocess_name: preprocess_config.to_protobuf()}
        refuse_what_would_not_load(folder, name=image_name, config=image_config, repository=steps)

    write_entry_atomically(repository, preprocess_name, build_preprocess)
    write_entry_atomically(repository, image_name, build_image)
    return (read_model_entry(repository=repository, name=preprocess_name),
            read_model_entry(repository=repository, name=image_name))


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
