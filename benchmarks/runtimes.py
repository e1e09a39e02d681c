"""Latency and throughput of ResNet-18 and ResNet-50 across the CPU runtimes, in one run.

Every runtime runs the same weights (random initialisation: speed does not depend on their
values) at batch 1, 8 and 32: PyTorch eager (unfolded FP32), onnxruntime FP32 of the folded
model, onnxruntime INT8 (static QDQ, per-channel, calibrated on real Fashion-MNIST training
images upscaled to 224² RGB), OpenVINO FP32, OpenVINO BF16 and OpenVINO running the same INT8
file. Ratios are against PyTorch eager of the same run; the issue's three targets are computed
at the end. Writes <output>.json and <output>.md.

The runtimes of one (model, batch) are timed in interleaved rounds rather than one after the
other, so that a neighbour's load on a shared machine lands on all of them alike and the ratios
stay fair.

    .venv/bin/python benchmarks/runtimes.py --output benchmarks/results/runtimes-2core-cpu
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import _harness
import numpy as np
import torch

from resnet_serve.artifacts import Artifacts
from resnet_serve.checkpoints import Checkpoint, CheckpointMeta
from resnet_serve.datasets import load_dataset
from resnet_serve.machine import CPU_FLAGS
from resnet_serve.models import create_model
from resnet_serve.preprocessing import Preprocessing
from resnet_serve.runtimes import RUNTIMES, OpenVinoRuntime, Runtime

KINDS = ("torch", "onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-bf16", "openvino-int8")
IMAGENET = Preprocessing(channels=3, height=224, width=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
# (what, model, batch, runtime, baseline runtime, target ratio) — from the export issue.
TARGETS = (
    ("onnxruntime FP32 (folded) vs PyTorch eager", "resnet50", 1, "onnx-fp32", "torch", 1.5),
    ("onnxruntime INT8 vs onnxruntime FP32", "resnet50", 8, "onnx-int8", "onnx-fp32", 3.0),
    ("OpenVINO BF16 vs onnxruntime FP32", "resnet50", 8, "openvino-bf16", "onnx-fp32", 1.8),
)


def measure_interleaved(
    runtimes: dict[str, Runtime], batch: np.ndarray, *, min_seconds: float, min_runs: int
) -> dict[str, dict]:
    """Time each runtime on ``batch`` in rounds of one run each, until every runtime has
    ``min_runs`` samples and ``min_seconds`` of its own run time."""
    for runtime in runtimes.values():
        for _ in range(3):  # warm-up: first runs allocate and pick kernels
            runtime.run(batch)
    samples: dict[str, list[float]] = {kind: [] for kind in runtimes}
    while any(len(s) < min_runs or sum(s) < min_seconds for s in samples.values()):
        for kind, runtime in runtimes.items():
            if len(samples[kind]) >= min_runs and sum(samples[kind]) >= min_seconds:
                continue
            start = time.perf_counter()
            runtime.run(batch)
            samples[kind].append(time.perf_counter() - start)
    results = {}
    for kind, times in samples.items():
        p50 = statistics.median(times)
        results[kind] = {"p50_ms": p50 * 1000, "images_per_second": len(batch) / p50, "runs": len(times)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--runtimes", default=",".join(KINDS))
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--min-runs", type=int, default=5)
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for every runtime (default: each runtime's own choice)")
    parser.add_argument("--data", type=Path, default=None,
                        help="dataset for calibration images (default: the installed Fashion-MNIST)")
    parser.add_argument("--output", type=Path, default=_harness.RESULTS / "runtimes")
    args = parser.parse_args()
    load = _harness.Load()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    kinds = args.runtimes.split(",")
    calibration = load_dataset(args.data, split="train").read(range(args.calibration_images), preprocessing=IMAGENET)
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
            artifacts = Artifacts(
                Checkpoint(model=model, meta=meta, path=Path(f"{name}.safetensors")),
                workdir=Path(workdir), calibration=lambda: calibration,
            )
            runtimes = {kind: RUNTIMES[kind].build(artifacts, threads=args.threads) for kind in kinds}
            notes.update({f"{name} {file}": note for file, note in artifacts.notes.items()})
            notes.update({
                f"{name} {kind}": runtime.note
                for kind, runtime in runtimes.items()
                if isinstance(runtime, OpenVinoRuntime) and runtime.note is not None
            })
            for batch_size in batches:
                batch = rng.standard_normal((batch_size, 3, 224, 224), dtype=np.float32)
                results = measure_interleaved(
                    runtimes, batch, min_seconds=args.min_seconds, min_runs=args.min_runs
                )
                for kind, result in results.items():
                    rows.append({"model": name, "batch": batch_size, "runtime": kind, **result})
                    print(f"{name} batch {batch_size:>2} {kind:<14} p50 {result['p50_ms']:8.2f} ms "
                          f"{result['images_per_second']:8.1f} img/s", flush=True)
    for row in rows:
        eager = _row(rows, row["model"], row["batch"], "torch")
        row["speedup_vs_torch"] = row["images_per_second"] / eager["images_per_second"] if eager else None
    load.stop()
    report = {
        "threads": args.threads or torch.get_num_threads(),
        "versions": _versions(),
        "notes": notes,
        "rows": rows,
        "targets": _targets(rows),
    }
    record = _harness.write_results(args.output, report, load=load, markdown=_markdown)
    print(_markdown(record))


def _row(rows: list[dict], model: str, batch: int, runtime: str) -> dict | None:
    return next(
        (r for r in rows if r["model"] == model and r["batch"] == batch and r["runtime"] == runtime), None
    )


def _targets(rows: list[dict]) -> list[dict]:
    targets = []
    for what, model, batch, runtime, baseline, target in TARGETS:
        measured, base = _row(rows, model, batch, runtime), _row(rows, model, batch, baseline)
        if measured is None or base is None:
            continue
        ratio = measured["images_per_second"] / base["images_per_second"]
        targets.append({"what": what, "model": model, "batch": batch, "ratio": ratio,
                        "target": target, "met": ratio >= target})
    return targets


def _markdown(report: dict) -> str:
    machine = report["machine"]
    lines = [
        f"CPU: {machine['cpu']}, {report['threads']} threads, features: "
        f"{', '.join(machine['cpu_flags']) or 'none of ' + ', '.join(CPU_FLAGS)}; "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        "",
        "| model | batch | runtime | p50 ms | images/s | × PyTorch eager |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for row in report["rows"]:
        speedup = "" if row["speedup_vs_torch"] is None else f"{row['speedup_vs_torch']:.2f}"
        lines.append(
            f"| {row['model']} | {row['batch']} | {row['runtime']} | {row['p50_ms']:.1f} | "
            f"{row['images_per_second']:.1f} | {speedup} |"
        )
    if report["targets"]:
        lines += ["", "| target | measured | goal | met |", "|---|---:|---:|---|"]
        lines += [
            f"| {t['what']}, {t['model']} batch {t['batch']} | {t['ratio']:.2f}× | ≥ {t['target']}× | "
            f"{'yes' if t['met'] else 'no'} |"
            for t in report["targets"]
        ]
    lines += ["", *(f"- {key}: {note}" for key, note in report["notes"].items())]
    return "\n".join(lines) + "\n"


def _versions() -> dict[str, str]:
    import onnxruntime
    import openvino

    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__}


if __name__ == "__main__":
    main()
