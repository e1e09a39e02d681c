"""ResNet-50 on a GPU through the embedded Triton, against the same GPU in-process (issue 19, item 4).

Runs on a machine with an NVIDIA GPU, PyTorch with CUDA, the nvidia-pytriton wheel's
tritonserver and perf_analyzer (the lent device machine; see docs/benchmarks.md, "GPU"), once,
in under 8 minutes:

    timeout 470 python3 benchmarks/gpu_triton.py

From a checkout where the package is not installed, put it on the path: ``PYTHONPATH=. …``.

1. **The ceiling, in-process**: a folded ResNet-50 (random weights: speed does not depend on
   their values) in FP16, channels-last, as one CUDA graph, at batch 32 and 64 (gpu_check.py's
   measurement: back-to-back replays over a timed window).
2. **Through Triton**: the same model traced to TorchScript and served by the python-backend
   model `resnet_serve/triton/python_model/torch_model.py` (one CUDA graph per batch bucket,
   pinned staging buffers, asynchronous copies, one thread; see its notes for what issue 19
   measured about each), two instances on the GPU, Triton's dynamic batcher (max batch 64,
   100 µs). perf_analyzer 2.40 measures it over gRPC at batch 32 and 64, concurrency 1 to 16,
   through `bench --engine perf_analyzer`'s code.
3. **The goals** (issue 19): through Triton, at batch ≥ 32 and p99 ≤ 46 ms, at least 85% of the
   in-process throughput at the same batch, and at least 6,127 inferences/s (NVIDIA's A100
   figure for ResNet-50). The best level that meets the p99 budget is judged; every figure is
   printed and written, with the GPU's name, to ``--output`` (JSON and a markdown table) after
   every level, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import _harness
from gpu_check import cuda_graph, measure

NAME = "resnet50-gpu"
# Issue 19's goals for the GPU path through Triton.
FRACTION_GOAL = 0.85
THROUGHPUT_GOAL = 6127.0  # NVIDIA's A100 figure for ResNet-50 (onnxruntime + TensorRT FP16)
P99_GOAL_MS = 46.0
MIN_BATCH = 32


def folded_resnet50() -> Any:
    """The model both ways measure: ResNet-50 with its BatchNorms folded, FP32, on the CPU."""
    import torch

    from resnet_serve.fold import fold_batchnorm
    from resnet_serve.models import create_model

    torch.manual_seed(0)
    return fold_batchnorm(create_model("resnet50").eval()).model.eval()


def in_process(model: Any, *, batches: tuple[int, ...], seconds: float) -> dict[str, dict[str, float]]:
    """The FP16 channels-last CUDA graph's images/s at each batch."""
    import copy

    import torch

    fp16 = copy.deepcopy(model).cuda().half().to(memory_format=torch.channels_last)
    results = {}
    with torch.inference_mode():
        for batch in batches:
            example = torch.randn(batch, 3, 224, 224, device="cuda").half()
            example = example.contiguous(memory_format=torch.channels_last)
            results[str(batch)] = measure(cuda_graph(fp16, example), batch=batch, seconds=seconds)
            print(json.dumps({"in_process_batch": batch, **results[str(batch)]}), flush=True)
    return results


def write_repository(repository: Path, model: Any) -> str:
    """Write the served entry; return its config.pbtxt."""
    import torch

    from resnet_serve.checkpoints import IMAGENET_PREPROCESSING
    from resnet_serve.triton.config import DynamicBatching, InstanceGroup, ModelConfig, TensorConfig
    from resnet_serve.triton.repository.layout import PREPROCESSING_PARAMETER
    from resnet_serve.triton.repository.writing import copy_resource, write_config

    version = repository / NAME / "1"
    version.mkdir(parents=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.jit.trace(model, torch.zeros(1, 3, 224, 224)).save(str(version / "model.pt"))
    copy_resource("resnet_serve.triton.python_model", "torch_model.py", version / "model.py")
    write_config(repository / NAME, ModelConfig(
        name=NAME, backend="python", max_batch_size=64,
        inputs=(TensorConfig(name="input", data_type="TYPE_FP32", dims=(3, 224, 224)),),
        outputs=(TensorConfig(name="logits", data_type="TYPE_FP32", dims=(1000,)),),
        dynamic_batching=DynamicBatching(max_queue_delay_microseconds=100),
        # Two instances, so that one's Python work overlaps the other's kernels.
        instance_groups=(InstanceGroup(count=2, kind="KIND_GPU"),),
        # The client reads the input's preprocessing from the entry, as from any that export writes.
        parameters={PREPROCESSING_PARAMETER: json.dumps(IMAGENET_PREPROCESSING.to_dict())},
    ))
    return (repository / NAME / "config.pbtxt").read_text()


def judge(rows: list[dict[str, Any]], ceiling: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The best level at batch ≥ 32 within the p99 budget, and each goal met or not."""
    within = [row for row in rows if "unstable" not in row and row["batch"] >= MIN_BATCH and
              row["p99_ms"] <= P99_GOAL_MS]
    if not within:
        return {"best": None, "met": False,
                "why": f"no level at batch ≥ {MIN_BATCH} settled with p99 ≤ {P99_GOAL_MS} ms"}
    best = max(within, key=lambda row: row["inferences_per_second"])
    reference = ceiling.get(str(best["batch"]), {}).get("images_per_second")
    fraction = None if not reference else best["inferences_per_second"] / reference
    goals = {
        f"≥ {FRACTION_GOAL:.0%} of in-process at batch {best['batch']}":
            fraction is not None and fraction >= FRACTION_GOAL,
        f"≥ {THROUGHPUT_GOAL:,.0f} inferences/s": best["inferences_per_second"] >= THROUGHPUT_GOAL,
        f"p99 ≤ {P99_GOAL_MS:g} ms": True,
    }
    return {"best": {key: best.get(key) for key in ("batch", "concurrency", "inferences_per_second", "p50_ms",
                                                    "p99_ms", "server_compute_infer_us")},
            "in_process_images_per_second": reference, "fraction_of_in_process": fraction, "goals": goals,
            "met": all(goals.values())}


def markdown(record: dict[str, Any]) -> str:
    verdict = record["verdict"]
    lines = [f"# ResNet-50 through the embedded Triton on {record['gpu']}", "",
             f"{record['machine']['description']}; torch {record['torch']}. In-process FP16 CUDA graph: " +
             ", ".join(f"batch {b} {r['images_per_second']:,.0f} images/s" for b, r in record["in_process"].items()) +
             ".", "",
             "| batch | concurrency | inferences/s | p50 ms | p99 ms | compute infer µs | queue µs |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for row in record["results"]:
        if "unstable" in row:
            lines.append(f"| {row['batch']} | {row['concurrency']} | unstable | | | | |")
        else:
            lines.append(f"| {row['batch']} | {row['concurrency']} | {row['inferences_per_second']:,.0f} | "
                         f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['server_compute_infer_us']:.0f} | "
                         f"{row['server_queue_us']:.0f} |")
    lines += ["", f"Goals (best level at batch ≥ {MIN_BATCH} with p99 ≤ {P99_GOAL_MS:g} ms): " + (
        "; ".join(f"{goal}: {'met' if met else 'not met'}" for goal, met in verdict["goals"].items())
        if verdict["best"] else verdict["why"])]
    if verdict.get("fraction_of_in_process") is not None:
        lines.append(f"Best: {verdict['best']['inferences_per_second']:,.0f} inferences/s at batch "
                     f"{verdict['best']['batch']}, concurrency {verdict['best']['concurrency']}, "
                     f"{verdict['fraction_of_in_process']:.0%} of in-process.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="results file, without suffix (default: "
                        "benchmarks/results/gpu-triton-<gpu>)")
    parser.add_argument("--batch-sizes", default="32,64")
    parser.add_argument("--concurrency", default="1,2,4,8,16")
    parser.add_argument("--interval-ms", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=2.0, help="in-process timed window per batch")
    parser.add_argument("--budget-s", type=float, default=420, help="start no new level after this many seconds")
    args = parser.parse_args()

    import torch

    from resnet_serve.client.bench import benchmark_served_model
    from resnet_serve.client.stability import StabilityRule, UnstableMeasurementError
    from resnet_serve.triton.server import TritonServer, find_free_ports

    began = time.time()
    load = _harness.Load()
    gpu = torch.cuda.get_device_name(0)
    output = args.output or _harness.RESULTS / f"gpu-triton-{re.sub(r'[^a-z0-9]+', '-', gpu.lower()).strip('-')}"
    batches = tuple(int(b) for b in args.batch_sizes.split(","))
    model = folded_resnet50()
    ceiling = in_process(model, batches=batches, seconds=args.seconds)
    torch.cuda.empty_cache()
    record: dict[str, Any] = {
        "what": "ResNet-50 (folded, 224², random weights) through the embedded Triton 2.51 (python-backend "
                "torch_model.py: FP16 channels-last CUDA graphs, pinned staging, async copies), gRPC, perf_analyzer "
                "2.40, against the same model in-process as an FP16 CUDA graph",
        "date": time.strftime("%Y-%m-%d"), "gpu": gpu, "torch": torch.__version__, "interval_ms": args.interval_ms,
        "goals": {"fraction_of_in_process": FRACTION_GOAL, "inferences_per_second": THROUGHPUT_GOAL,
                  "p99_ms": P99_GOAL_MS, "min_batch": MIN_BATCH},
        "in_process": ceiling, "results": [],
    }

    def save(*, partial: bool) -> dict[str, Any]:
        record.update(partial=partial, seconds=time.time() - began, verdict=judge(record["results"], ceiling))
        return _harness.write_results(output, dict(record), load=load, markdown=markdown)

    with tempfile.TemporaryDirectory(prefix="gpu-triton-") as scratch_name:
        scratch = Path(scratch_name)
        record["config"] = write_repository(scratch / "repository", model)
        http, grpc, metrics = find_free_ports(3)
        server = TritonServer(repository=scratch / "repository", http_port=http, grpc_port=grpc,
                              metrics_port=metrics, log_file=output.with_suffix(".tritonserver.log"))
        server.start()
        try:
            # Capturing the graphs of every bucket in both instances takes a while.
            server.wait_until_ready(timeout=300)
            print(f"ready in {time.time() - began:.0f} s", flush=True)
            for batch in batches:
                for level in (int(c) for c in args.concurrency.split(",")):
                    if time.time() - began > args.budget_s:
                        print(f"budget of {args.budget_s:g} s spent: batch {batch}, concurrency {level} not measured")
                        continue
                    try:
                        run = benchmark_served_model(
                            model=NAME, protocol="grpc", url=server.urls.grpc, engine="perf_analyzer",
                            batch_size=batch, concurrency=(level,), measurement_seconds=args.interval_ms / 1000,
                            stability=StabilityRule(percentage=10, max_trials=10),
                        )
                        row = {"batch": batch, **asdict(run.results[0])}
                    except UnstableMeasurementError as error:
                        row = {"batch": batch, "concurrency": level, "unstable": str(error)}
                    record["results"].append(row)
                    print(json.dumps({k: row.get(k) for k in ("batch", "concurrency", "inferences_per_second",
                                                              "p50_ms", "p99_ms", "unstable")}), flush=True)
                    save(partial=True)
        finally:
            server.stop()
    load.stop()
    print(markdown(save(partial=False)))


if __name__ == "__main__":
    main()
