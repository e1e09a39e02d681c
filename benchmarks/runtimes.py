"""Latency and throughput of ResNet-18 and ResNet-50 across the CPU runtimes, in one run.

Every runtime runs the same weights (random initialisation: speed does not depend on their
values) at batch 1, 8 and 32: PyTorch eager (unfolded FP32), onnxruntime FP32 of the folded
model, onnxruntime INT8 (static QDQ, per-channel, calibrated on real Fashion-MNIST images
upscaled to 224² RGB), OpenVINO FP32 and OpenVINO BF16. Ratios are against PyTorch eager of the
same run. Writes <output>.json and <output>.md.

    .venv/bin/python benchmarks/runtimes.py --output benchmarks/results/runtimes-2core-cpu
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resnet_serve.checkpoints import Checkpoint, CheckpointMeta  # noqa: E402
from resnet_serve.data import Preprocessing, load_dataset  # noqa: E402
from resnet_serve.models import create_model  # noqa: E402
from resnet_serve.runtimes import Runtime, RuntimeFactory  # noqa: E402

KINDS = ("torch", "onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-bf16")
IMAGENET = Preprocessing(channels=3, height=224, width=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def measure(runtime: Runtime, batch: np.ndarray, *, min_seconds: float, min_runs: int) -> dict:
    for _ in range(3):  # warm-up: first runs allocate and pick kernels
        runtime.run(batch)
    samples: list[float] = []
    began = time.perf_counter()
    while len(samples) < min_runs or time.perf_counter() - began < min_seconds:
        start = time.perf_counter()
        runtime.run(batch)
        samples.append(time.perf_counter() - start)
    p50 = statistics.median(samples)
    return {"p50_ms": p50 * 1000, "images_per_second": len(batch) / p50, "runs": len(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--min-runs", type=int, default=5)
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/runtimes"))
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    test_images = load_dataset(None, split="test").images
    calibration = IMAGENET.normalize(test_images[: args.calibration_images])
    rng = np.random.default_rng(0)
    rows = []
    notes: dict[str, str] = {}
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = create_model(name).eval()
        meta = CheckpointMeta(
            architecture=name, num_classes=1000, in_channels=3,
            class_names=[f"class_{i}" for i in range(1000)], preprocessing=IMAGENET,
        )
        with tempfile.TemporaryDirectory() as workdir:
            factory = RuntimeFactory(
                Checkpoint(model=model, meta=meta, path=Path(f"{name}.safetensors")),
                workdir=workdir, calibration_images=calibration,
            )
            runtimes = {kind: factory.build(kind) for kind in KINDS}
            notes.update({f"{name} {kind}": note for kind, note in factory.notes.items()})
            for batch_size in batches:
                batch = rng.standard_normal((batch_size, 3, 224, 224), dtype=np.float32)
                for kind, runtime in runtimes.items():
                    result = measure(runtime, batch, min_seconds=args.min_seconds, min_runs=args.min_runs)
                    rows.append({"model": name, "batch": batch_size, "runtime": kind, **result})
                    print(f"{name} batch {batch_size:>2} {kind:<14} p50 {result['p50_ms']:8.2f} ms "
                          f"{result['images_per_second']:8.1f} img/s", flush=True)
    for row in rows:
        eager = next(r for r in rows if r["model"] == row["model"] and r["batch"] == row["batch"] and r["runtime"] == "torch")
        row["speedup_vs_torch"] = row["images_per_second"] / eager["images_per_second"]
    report = {
        "machine": {"cpu": _cpu_name(), "cores": torch.get_num_threads(), "python": platform.python_version()},
        "versions": _versions(),
        "notes": notes,
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(_markdown(report))
    print(_markdown(report))


def _markdown(report: dict) -> str:
    lines = [
        f"CPU: {report['machine']['cpu']}, {report['machine']['cores']} threads; "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        "",
        "| model | batch | runtime | p50 ms | images/s | × PyTorch eager |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['model']} | {row['batch']} | {row['runtime']} | {row['p50_ms']:.1f} | "
            f"{row['images_per_second']:.1f} | {row['speedup_vs_torch']:.2f} |"
        )
    lines += ["", *(f"- {key}: {note}" for key, note in report["notes"].items())]
    return "\n".join(lines) + "\n"


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _versions() -> dict[str, str]:
    import onnxruntime
    import openvino

    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__}


if __name__ == "__main__":
    main()
