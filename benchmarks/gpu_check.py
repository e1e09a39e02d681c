"""ResNet-50 on one CUDA GPU: PyTorch eager FP32, FP16 + channels_last, and CUDA graphs.

Needs only a CUDA build of PyTorch and this repository (no internet, no TensorRT); runs in
about a minute on an H100. Prints one JSON and writes it to
``benchmarks/results/gpu_check-<gpu>.json`` (or ``--output``):

    python benchmarks/gpu_check.py [--output FILE] [--seconds 1.0]

From a checkout where the package is not installed (a bare GPU machine), put it on the path:
``PYTHONPATH=. python benchmarks/gpu_check.py``.

Throughput is images/s over a timed window; latency is the p50 of single timed batches, each
bracketed by ``torch.cuda.synchronize()``; warm-up runs (which include cuDNN's algorithm
search and graph capture) are excluded. The weights are random (seeded): timing does not
depend on them, and the FP16 check compares the BatchNorm-folded model against itself in FP32.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import _harness
import torch

from resnet_serve.fold import fold_batchnorm
from resnet_serve.models import create_model

BATCH_SIZES = (1, 32, 128)
IMAGE_SHAPE = (3, 224, 224)


def resnet50() -> torch.nn.Module:
    """ResNet-50 with random weights and random, plausible BatchNorm statistics.

    Fresh BatchNorms (mean 0, var 1, weight 1, bias 0) would make folding nearly a no-op.
    """
    torch.manual_seed(0)
    model = create_model("resnet50")
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.0)
            module.bias.data.normal_(0.0, 0.1)
    return model.eval()


def measure(run: Callable[[], object], *, batch: int, seconds: float) -> dict[str, float]:
    for _ in range(5):
        run()
    torch.cuda.synchronize()
    latencies = []
    window_start = time.perf_counter()
    while len(latencies) < 10 or time.perf_counter() - window_start < seconds:
        start = time.perf_counter()
        run()
        torch.cuda.synchronize()
        latencies.append(time.perf_counter() - start)
    # Back-to-back runs without a sync in between: what a busy server sustains.
    iterations = len(latencies)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iterations):
        run()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {
        "images_per_second": round(batch * iterations / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1e3, 3),
        "iterations": iterations,
    }


def cuda_graph(model: torch.nn.Module, example: torch.Tensor) -> Callable[[], torch.Tensor]:
    static_input = example.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    # Capture needs cuDNN's algorithm choice and the allocator warmed up on a side stream.
    with torch.cuda.stream(side):
        for _ in range(3):
            model(static_input)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_output = model(static_input)

    def replay() -> torch.Tensor:
        graph.replay()
        return static_output

    return replay


@torch.inference_mode()
def run_check(*, seconds: float) -> dict[str, object]:
    torch.backends.cudnn.benchmark = True
    timed_with_tf32 = torch.backends.cudnn.allow_tf32
    device = torch.device("cuda")
    model = resnet50()
    folded32 = fold_batchnorm(model).model.to(device)
    fp32 = model.to(device)
    # .half() converts in place: the FP16 model must be a copy of the folded FP32 one.
    fp16 = copy.deepcopy(folded32).half().to(memory_format=torch.channels_last)

    results: dict[str, dict[str, dict[str, float]]] = {
        "eager_fp32": {}, "eager_fp16_channels_last": {}, "cuda_graph_fp16_channels_last": {},
    }
    for batch in BATCH_SIZES:
        x32 = torch.randn(batch, *IMAGE_SHAPE, device=device)
        x16 = x32.half().contiguous(memory_format=torch.channels_last)
        results["eager_fp32"][str(batch)] = measure(lambda x32=x32: fp32(x32), batch=batch, seconds=seconds)
        results["eager_fp16_channels_last"][str(batch)] = measure(
            lambda x16=x16: fp16(x16), batch=batch, seconds=seconds
        )
        results["cuda_graph_fp16_channels_last"][str(batch)] = measure(
            cuda_graph(fp16, x16), batch=batch, seconds=seconds
        )

    torch.manual_seed(1)
    images = torch.randn(32, *IMAGE_SHAPE, device=device)
    # The reference must be true FP32: TF32 alone differs from it by ~1e-3 relative.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    reference = fp32(images)
    folded_reference = folded32(images)
    half = fp16(images.half().contiguous(memory_format=torch.channels_last)).float()
    max_abs = (half - folded_reference).abs().max().item()
    return {
        "gpu": torch.cuda.get_device_name(),
        "compute_capability": ".".join(map(str, torch.cuda.get_device_capability())),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "model": "resnet50 (random weights, seed 0)",
        "image_shape": list(IMAGE_SHAPE),
        "cudnn_benchmark": True,
        # PyTorch's default, kept for the timings: FP32 convolutions run on TF32 tensor cores.
        "eager_fp32_uses_tf32": timed_with_tf32,
        "seconds_per_measurement": seconds,
        "results": results,
        "fold_fp32_max_abs": (folded_reference - reference).abs().max().item(),
        "folded_fp16_vs_fp32": {
            "images": len(images),
            "max_abs": max_abs,
            "max_abs_relative_to_logit_range": max_abs / reference.abs().max().item(),
            "top1_agreement": (half.argmax(1) == folded_reference.argmax(1)).float().mean().item(),
        },
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="JSON file (default: benchmarks/results/gpu_check-<gpu>.json)")
    parser.add_argument("--seconds", type=float, default=1.0, help="timed window per measurement")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            f"error: gpu_check needs an NVIDIA GPU and a CUDA build of PyTorch; torch "
            f"{torch.__version__} sees no CUDA device",
            file=sys.stderr,
        )
        return 2
    load = _harness.Load()
    result = run_check(seconds=args.seconds)
    load.stop()
    slug = re.sub(r"[^a-z0-9]+", "-", str(result["gpu"]).lower()).strip("-")
    output = args.output or _harness.RESULTS / f"gpu_check-{slug}.json"
    record = _harness.write_results(output, result, load=load)
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
