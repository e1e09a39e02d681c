"""How far faithful FP32 copies of a ResNet stray from it, and how far real defects do: the
measurements behind ``resnet_serve.parity.DEFAULT_RTOL``.

For each ImageNet net (random weights given a trained net's magnitudes: convolution channel
scales spread over two decades, BatchNorm statistics measured on real photos, logits of a few
tens) and for a briefly trained ResNet-20 on Fashion-MNIST, it measures max|Δlogit| / max|logit|
for the BatchNorm-folded model, onnxruntime on its ONNX export, and the ONNX graph pass on a
plain ``torch.onnx.export``; then for defects: a fold that leaves out BatchNorm's eps, one folded
convolution's weights off by 1e-3 (relative), and an ONNX file with one weight tensor off by
1e-3. Writes a JSON file.

    .venv/bin/python benchmarks/parity_tolerance.py --output benchmarks/results/parity-tolerance-2core-cpu.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import tempfile
import warnings
from pathlib import Path

import _harness
import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from resnet_serve.checkpoints import IMAGENET_PREPROCESSING, load_checkpoint
from resnet_serve.datasets import InMemoryDataset, load_default_dataset
from resnet_serve.export.onnx import export_onnx
from resnet_serve.fold import fold_batchnorm, fold_onnx_batchnorm
from resnet_serve.models import create_model
from resnet_serve.parity import ParityResult, Tolerance
from resnet_serve.progress import SilentReporter
from resnet_serve.runtimes import OnnxRuntime, TorchRuntime, compare_runtimes
from resnet_serve.samples import photo_crops, with_trained_magnitudes
from resnet_serve.training import DEMO_TRAIN_CONFIG, train

# Measure only: nothing is refused while measuring.
MEASURE = Tolerance(rtol=None, min_top1_agreement=None)


def relative(parity: ParityResult) -> dict:
    return {
        "max_abs": parity.max_abs,
        "largest_logit": parity.reference_max_abs,
        "max_abs_relative": parity.max_abs_relative,
        "top1_agreement": parity.top1_agreement,
    }


def export_unfolded(model: nn.Module, path: Path, input_shape: tuple[int, ...]) -> Path:
    """A plain torch.onnx.export that keeps BatchNormalization nodes, as a user might bring."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(), (torch.zeros(2, *input_shape),), path, dynamo=False, opset_version=17,
            training=torch.onnx.TrainingMode.PRESERVE, input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


def scaled_initializer(source: Path, destination: Path, name: str, factor: float) -> Path:
    proto = onnx.load(source)
    tensor = next(t for t in proto.graph.initializer if t.name == name)
    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * np.float32(factor), name))
    onnx.save(proto, destination)
    return destination


def measure(model: nn.Module, images: np.ndarray, scratch: Path, *, defects: bool) -> dict:
    original = TorchRuntime(model, name="torch")
    batch = len(images)
    folded = fold_batchnorm(model).model
    row = {"fold": relative(compare_runtimes(original, TorchRuntime(folded), images, batch_sizes=(batch,)))}
    exported = export_onnx(folded, scratch / "folded.onnx", input_shape=images.shape[1:])
    row["onnx"] = relative(
        compare_runtimes(original, OnnxRuntime(exported.path), images, batch_sizes=(1, batch))
    )
    graph = fold_onnx_batchnorm(
        export_unfolded(model, scratch / "unfolded.onnx", images.shape[1:]), scratch / "graph-folded.onnx",
        images=images, tolerance=MEASURE,
    )
    row["onnx_graph_fold"] = relative(graph.parity)
    if not defects:
        return row

    no_eps = copy.deepcopy(model)
    for m in no_eps.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 0.0
    row["defect_fold_without_eps"] = relative(
        compare_runtimes(original, TorchRuntime(fold_batchnorm(no_eps).model), images, batch_sizes=(batch,))
    )
    convs = [name for name, m in folded.named_modules() if isinstance(m, nn.Conv2d)]
    for label, name in (("first", convs[0]), ("middle", convs[len(convs) // 2]), ("last", convs[-1])):
        perturbed = copy.deepcopy(folded)
        with torch.no_grad():
            perturbed.get_submodule(name).weight.mul_(1 + 1e-3)
        row[f"defect_folded_weight_1e-3_{label}_conv ({name})"] = relative(
            compare_runtimes(original, TorchRuntime(perturbed), images, batch_sizes=(batch,))
        )
    weights = [t.name for t in onnx.load(exported.path).graph.initializer if len(t.dims) == 4]
    for label, name in (("first", weights[0]), ("middle", weights[len(weights) // 2]), ("last", weights[-1])):
        changed = scaled_initializer(exported.path, scratch / "changed.onnx", name, 1 + 1e-3)
        row[f"defect_onnx_weight_1e-3_{label} ({name})"] = relative(
            compare_runtimes(original, OnnxRuntime(changed), images, batch_sizes=(batch,))
        )
    return row


def trained_resnet20(scratch: Path, checkpoint: Path | None) -> nn.Module:
    if checkpoint is None:
        # As the tests' session fixture: one pass over 8,192 Fashion-MNIST images.
        config = dataclasses.replace(DEMO_TRAIN_CONFIG, epochs=1, limit=8192, batch_size=128, lr=0.1)
        test_set = load_default_dataset(split="test")
        checkpoint = train(
            config=config, train_set=load_default_dataset(split="train"),
            val_set=InMemoryDataset(images=test_set.images[:1000], labels=test_set.labels[:1000],
                                  class_names=test_set.class_names),
            output=scratch / "resnet20.safetensors", reporter=SilentReporter(),
        ).checkpoint
    return load_checkpoint(checkpoint)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,resnet152")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--resnet20", type=Path, default=None,
                        help="a trained ResNet-20 checkpoint (default: train one briefly)")
    parser.add_argument("--output", type=Path, default=_harness.RESULTS / "parity-tolerance-2core-cpu.json")
    args = parser.parse_args()
    load = _harness.Load()
    results: dict[str, dict] = {}
    photos = IMAGENET_PREPROCESSING.normalize(photo_crops(args.images, size=256))
    with tempfile.TemporaryDirectory() as workdir:
        scratch = Path(workdir)
        loaded = trained_resnet20(scratch, args.resnet20)
        fashion = loaded.meta.preprocessing.normalize(load_default_dataset(split="test").images[:256])
        label = "resnet20 (trained, Fashion-MNIST, 256 test images)"
        results[label] = measure(loaded.model, fashion, scratch, defects=True)
        print(json.dumps({label: results[label]}, indent=1), flush=True)
        for name in args.models.split(","):
            torch.manual_seed(0)
            model = with_trained_magnitudes(create_model(name).eval(), torch.from_numpy(photos), seed=0)
            label = f"{name} (224², {args.images} photos)"
            results[label] = measure(model, photos, scratch, defects=name == "resnet50")
            print(json.dumps({label: results[label]}, indent=1), flush=True)
    load.stop()
    report = {
        # The CPU's vector extensions (in "machine") decide the kernels, and so the rounding.
        "note": "figures are rounding errors, not timings: a shared machine's load does not change them",
        "torch": torch.__version__,
        "results": results,
    }
    _harness.write_results(args.output, report, load=load)
    for net, row in results.items():
        print(net)
        for what, figures in row.items():
            print(f"  {what:<60} {figures['max_abs_relative']:.2e} of {figures['largest_logit']:.3g}"
                  f" (agreement {figures['top1_agreement']:.2%})")


if __name__ == "__main__":
    main()
