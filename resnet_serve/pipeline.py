"""Stages chained for one checkpoint: fold → ONNX → verify → Triton repository entry."""

from __future__ import annotations

import json
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from resnet_serve.checkpoints import Checkpoint, load_checkpoint
from resnet_serve.data import load_dataset
from resnet_serve.errors import VerificationError
from resnet_serve.export import export_onnx
from resnet_serve.fold import fold_batchnorm
from resnet_serve.progress import Reporter, SilentReporter
from resnet_serve.triton.config import get_serving_target
from resnet_serve.triton.repository import write_model_entry
from resnet_serve.verify import TorchRuntime, check_parity, compare_runtimes, verify_onnx_export

FOLD_TOLERANCE = 1e-5
ONNX_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExportReport:
    checkpoint: str
    architecture: str
    name: str
    target: str
    entry: str
    model_file: str
    input_shape: tuple[int, int, int]
    batchnorms_folded: int
    params_before: int
    params_after: int
    batchnorm_nodes: int
    fold_max_abs: float
    onnx_max_abs: float
    onnx_top1_agreement: float
    verify_images: int
    verify_batch_sizes: list[int]
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def default_model_name(checkpoint: Path) -> str:
    """A Triton model name from a checkpoint's file name (resnet20-fashion.safetensors → resnet20-fashion)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", checkpoint.name.split(".")[0]) or "model"


def verification_images(checkpoint: Checkpoint, *, data_dir: Path | None, count: int) -> np.ndarray:
    """The first ``count`` real test images of ``data_dir``, prepared as the model expects."""
    test_set = load_dataset(data_dir, split="test")
    return checkpoint.meta.preprocessing.normalize(test_set.images[:count])


def export_to_repository(
    *,
    checkpoint: Path,
    repository: Path,
    name: str | None = None,
    target: str = "python-onnxruntime",
    max_batch_size: int = 64,
    instances: int = 1,
    opset: int = 17,
    data_dir: Path | None = None,
    verify_images: int = 256,
    verify_batch_size: int = 64,
    reporter: Reporter | None = None,
) -> ExportReport:
    """Fold, export and verify a checkpoint, then write its Triton repository entry.

    Nothing is written to the repository unless the folded model matches the original within
    1e-5 and onnxruntime matches PyTorch within 1e-4 with identical top-1, at batch 1 and at
    ``verify_batch_size``, on real test images.
    """
    reporter = reporter or SilentReporter()
    began = time.perf_counter()
    serving_target = get_serving_target(target)
    loaded = load_checkpoint(checkpoint)
    meta = loaded.meta
    name = name or default_model_name(checkpoint)
    images = verification_images(loaded, data_dir=data_dir, count=verify_images)
    batch_sizes = [1, min(verify_batch_size, len(images))]

    reporter.message(f"folding BatchNorm of {meta.architecture}")
    folded = fold_batchnorm(loaded.model)
    fold_parity = compare_runtimes(
        TorchRuntime(loaded.model), TorchRuntime(folded.model, name="pytorch-folded"), images,
        batch_sizes=batch_sizes[-1:],
    )
    check_parity(fold_parity, atol=FOLD_TOLERANCE)

    with tempfile.TemporaryDirectory(prefix="resnet-serve-export-") as scratch:
        onnx_path = Path(scratch) / "model.onnx"
        reporter.message(f"exporting ONNX (opset {opset}) and verifying it on {len(images)} test images")
        exported = export_onnx(
            folded.model,
            onnx_path,
            input_shape=meta.preprocessing.input_shape,
            opset=opset,
            metadata={
                "architecture": meta.architecture,
                "class_names": json.dumps(meta.class_names),
                "preprocessing": json.dumps(meta.preprocessing.to_dict()),
            },
        )
        if exported.batchnorm_nodes:
            raise VerificationError(
                f"the folded ONNX still has {exported.batchnorm_nodes} BatchNormalization nodes"
            )
        # Against the original, unfolded model: the whole chain is what must hold.
        onnx_parity = verify_onnx_export(
            loaded.model, onnx_path, images, atol=ONNX_TOLERANCE, batch_sizes=batch_sizes
        )
        entry = write_model_entry(
            repository=repository,
            name=name,
            onnx_path=onnx_path,
            class_names=meta.class_names,
            preprocessing=meta.preprocessing.to_dict(),
            input_shape=meta.preprocessing.input_shape,
            target=serving_target,
            max_batch_size=max_batch_size,
            instances=instances,
            metadata={
                "architecture": meta.architecture,
                "class_names": json.dumps(meta.class_names),
                "test_accuracy": json.dumps(meta.metrics.get("test_accuracy")),
            },
        )
    return ExportReport(
        checkpoint=str(checkpoint),
        architecture=meta.architecture,
        name=name,
        target=serving_target.name,
        entry=str(entry.path),
        model_file=str(entry.model_path),
        input_shape=meta.preprocessing.input_shape,
        batchnorms_folded=folded.folded,
        params_before=folded.params_before,
        params_after=folded.params_after,
        batchnorm_nodes=exported.batchnorm_nodes,
        fold_max_abs=fold_parity.max_abs,
        onnx_max_abs=onnx_parity.max_abs,
        onnx_top1_agreement=onnx_parity.top1_agreement,
        verify_images=len(images),
        verify_batch_sizes=batch_sizes,
        seconds=time.perf_counter() - began,
    )
