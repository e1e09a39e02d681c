"""ResNet-50 at batch 8 in onnxruntime: FP32 (folded) against the two INT8 variants that
``quantize_int8`` makes, with the stem and classifier in FP32 (the default) and fully quantized
(7-bit weights). The three are timed in interleaved rounds; prints one line each.

    .venv/bin/python benchmarks/int8_variants.py --threads 2
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from runtimes import IMAGENET, measure_interleaved

from resnet_serve.datasets import load_dataset
from resnet_serve.export.onnx import export_onnx
from resnet_serve.export.quantize import quantize_int8
from resnet_serve.fold import fold_batchnorm
from resnet_serve.models import create_model
from resnet_serve.runtimes import OnnxRuntime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--data", type=Path, default=None,
                        help="dataset for calibration images (default: the installed Fashion-MNIST)")
    args = parser.parse_args()
    calibration = load_dataset(args.data, split="train").read(range(64), preprocessing=IMAGENET)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as workdir:
        folder = Path(workdir)
        fp32 = export_onnx(
            fold_batchnorm(create_model("resnet50").eval()).model, folder / "fp32.onnx", input_shape=(3, 224, 224)
        ).path
        files = {
            "onnx-fp32": fp32,
            "int8, ends in FP32": quantize_int8(fp32, folder / "ends.onnx", calibration_images=calibration).path,
            "int8, all": quantize_int8(
                fp32, folder / "all.onnx", calibration_images=calibration, keep_ends_fp32=False
            ).path,
        }
        runtimes = {name: OnnxRuntime(path, threads=args.threads) for name, path in files.items()}
        batch = np.random.default_rng(0).standard_normal((8, 3, 224, 224), dtype=np.float32)
        results = measure_interleaved(runtimes, batch, min_seconds=0.0, min_runs=args.rounds)
    base = results["onnx-fp32"]["p50_ms"]
    for name, result in results.items():
        print(f"{name:<20} p50 {result['p50_ms']:7.1f} ms {result['images_per_second']:6.1f} img/s "
              f"{base / result['p50_ms']:5.2f}× onnx-fp32")

if __name__ == "__main__":
    main()
