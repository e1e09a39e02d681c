"""CPU serving efficiency: ResNet-50 FP32 served on the embedded Triton against onnxruntime in-process.

The same folded ResNet-50 ONNX (random weights given realistic BatchNorm statistics measured on
real photos: the cost is the same as a trained net's) runs

- **served**: an `onnxruntime` entry (what `resnet-serve export` writes by default), served by
  the embedded tritonserver through its python-backend proxy, measured by our bench engine (or
  perf_analyzer) over gRPC at batch 1 and concurrency 2;
- **in-process**: one onnxruntime session with the same intra-op thread count, two Python
  threads each calling `session.run` on batch 1 in a loop.

Each configuration pairs a served entry (instances × intra-op threads, queue delay) with the
in-process run of the same intra-op thread count: 1 instance × 2 threads (export's default
queue delay of 100 µs, and 2 ms) against a 2-thread session, and 2 instances × 1 thread against
a 1-thread session (two single-threaded runs side by side). The two are measured
in interleaved rounds, alternating which goes first, so a neighbour's load on a shared machine
lands on both alike. Server overhead is the mean request latency minus Triton's mean
compute-infer time per request (from its statistics over the same windows; both means, since
Triton reports no median), as a fraction of the p50 latency: what a request spends outside the
model (gRPC, the queue, the proxy's input and output handling).

    .venv/bin/python benchmarks/serving_efficiency.py --output benchmarks/results/serving-efficiency-2core-cpu
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import warnings
from pathlib import Path

import _harness
import numpy as np
import onnxruntime
import torch

from resnet_serve.checkpoints import IMAGENET_PREPROCESSING
from resnet_serve.client.bench import benchmark_served_model
from resnet_serve.client.stability import StabilityRule, UnstableMeasurementError
from resnet_serve.export.onnx import export_onnx
from resnet_serve.fold import fold_batchnorm
from resnet_serve.models import create_model
from resnet_serve.samples import photo_crops, with_realistic_batchnorm
from resnet_serve.triton.repository import Classifier, write_model_entry
from resnet_serve.triton.server import TritonServer, find_free_ports
from resnet_serve.triton.serving import ServingOptions

# (instances, intra-op threads per instance, max queue delay µs); the in-process session gets the
# same intra-op thread count. 100 µs is export's default delay; 2 ms lets the two requests in
# flight meet in one batch.
CONFIGURATIONS = ((1, 2, 100), (1, 2, 2000), (2, 1, 100))
THROUGHPUT_GOAL = 0.9
OVERHEAD_GOAL = 0.10


def resnet50_onnx(path: Path) -> Path:
    torch.manual_seed(0)
    photos = torch.from_numpy(IMAGENET_PREPROCESSING.normalize(photo_crops(8, size=256)))
    model = with_realistic_batchnorm(create_model("resnet50").eval(), photos, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(fold_batchnorm(model).model, path, input_shape=IMAGENET_PREPROCESSING.input_shape)
    return path


def entry_name(instances: int, threads: int, delay_us: int) -> str:
    return f"resnet50-i{instances}-t{threads}-d{delay_us}"


def write_repository(repository: Path, onnx_path: Path) -> None:
    for instances, threads, delay_us in CONFIGURATIONS:
        write_model_entry(
            repository=repository, name=entry_name(instances, threads, delay_us),
            classifier=Classifier(model_file=onnx_path, class_names=[f"class_{i}" for i in range(1000)],
                                  preprocessing=IMAGENET_PREPROCESSING),
            settings=ServingOptions(instances=instances, threads=threads, max_queue_delay_us=delay_us),
        )


def in_process(onnx_path: Path, *, threads: int, callers: int, seconds: float, warmup_seconds: float) -> dict:
    """`callers` threads calling `session.run` on one session for `seconds` after a warm-up."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(0).standard_normal((1, *IMAGENET_PREPROCESSING.input_shape), dtype=np.float32)
    latencies: list[list[float]] = [[] for _ in range(callers)]
    measure_from = time.perf_counter() + warmup_seconds
    stop_at = measure_from + seconds

    def call(index: int) -> None:
        while True:
            began = time.perf_counter()
            if began >= stop_at:
                return
            session.run(None, {"input": batch})
            ended = time.perf_counter()
            # Only runs wholly inside the window count, as our bench engine counts requests.
            if began >= measure_from and ended <= stop_at:
                latencies[index].append(ended - began)

    workers = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    pooled = [latency for per_caller in latencies for latency in per_caller]
    return {
        "inferences_per_second": len(pooled) / seconds,
        "p50_ms": statistics.median(pooled) * 1000,
        "p99_ms": float(np.percentile(pooled, 99)) * 1000,
        "runs": len(pooled),
    }


def served(server: TritonServer, *, model: str, args: argparse.Namespace) -> dict:
    result = benchmark_served_model(
        model=model, protocol="grpc", url=server.urls.grpc, engine=args.engine, batch_size=1,
        concurrency=(args.concurrency,), warmup_seconds=args.warmup_seconds,
        measurement_seconds=args.window_seconds,
        stability=StabilityRule(percentage=args.stability_percent, max_trials=args.max_trials),
    )
    row = result.results[0]
    return {
        "inferences_per_second": row.inferences_per_second,
        "p50_ms": row.p50_ms,
        "p99_ms": row.p99_ms,
        "server_queue_us": row.server_queue_us,
        "server_compute_input_us": row.server_compute_input_us,
        "server_compute_infer_us": row.server_compute_infer_us,
        "server_compute_output_us": row.server_compute_output_us,
        "mean_ms": row.mean_ms,
        # Both means: Triton's statistics give a mean compute time, not a median.
        "overhead_fraction_of_p50": (row.mean_ms * 1000 - row.server_compute_infer_us) / (row.p50_ms * 1000),
        "windows": row.windows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--engine", default="resnet-serve", help="resnet-serve or perf_analyzer")
    parser.add_argument("--window-seconds", type=float, default=5.0)
    parser.add_argument("--warmup-seconds", type=float, default=2.0)
    parser.add_argument("--stability-percent", type=float, default=10.0)
    parser.add_argument("--max-trials", type=int, default=10)
    parser.add_argument("--note", default="", help="e.g. the machine's load average during the run")
    parser.add_argument("--output", type=Path, default=_harness.RESULTS / "serving-efficiency")
    args = parser.parse_args()
    load = _harness.Load()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="serving-efficiency-") as scratch_name:
        scratch = Path(scratch_name)
        onnx_path = resnet50_onnx(scratch / "resnet50.onnx")
        repository = scratch / "repository"
        write_repository(repository, onnx_path)
        http, grpc, metrics = find_free_ports(3)
        with TritonServer(repository=repository, http_port=http, grpc_port=grpc, metrics_port=metrics,
                          log_file=scratch / "tritonserver.log") as server:
            for round_index in range(args.rounds):
                for instances, threads, delay_us in CONFIGURATIONS:
                    ways = ["served", "in-process"] if round_index % 2 == 0 else ["in-process", "served"]
                    for way in ways:
                        try:
                            figures = (
                                served(server, model=entry_name(instances, threads, delay_us), args=args)
                                if way == "served"
                                else in_process(onnx_path, threads=threads, callers=args.concurrency,
                                                seconds=args.window_seconds * 3, warmup_seconds=args.warmup_seconds)
                            )
                        except UnstableMeasurementError as error:
                            figures = {"unstable": str(error)}
                        runs.append({"round": round_index, "instances": instances, "threads": threads,
                                     "max_queue_delay_us": delay_us, "way": way, **figures})
                        print(json.dumps(runs[-1]), flush=True)
    load.stop()
    report = summarize(runs, args=args)
    record = _harness.write_results(args.output, report, load=load, markdown=markdown)
    print(markdown(record))


def summarize(runs: list[dict], *, args: argparse.Namespace) -> dict:
    rows = []
    def median(instances: int, threads: int, delay_us: int, way: str, key: str) -> float | None:
        values = [r[key] for r in runs if key in r and r["way"] == way
                  and (r["instances"], r["threads"], r["max_queue_delay_us"]) == (instances, threads, delay_us)]
        return statistics.median(values) if values else None

    for configuration in CONFIGURATIONS:
        instances, threads, delay_us = configuration
        served_ips = median(*configuration, "served", "inferences_per_second")
        local_ips = median(*configuration, "in-process", "inferences_per_second")
        overhead = median(*configuration, "served", "overhead_fraction_of_p50")
        ratio = served_ips / local_ips if served_ips and local_ips else None
        rows.append({
            "served": f"{instances} instance(s) × {threads} intra-op thread(s), queue delay {delay_us} µs",
            "in_process": f"1 session, {threads} intra-op thread(s), {args.concurrency} calling threads",
            "served_inferences_per_second": served_ips, "in_process_inferences_per_second": local_ips,
            "served_p50_ms": median(*configuration, "served", "p50_ms"),
            "in_process_p50_ms": median(*configuration, "in-process", "p50_ms"),
            "server_compute_infer_us": median(*configuration, "served", "server_compute_infer_us"),
            "server_queue_us": median(*configuration, "served", "server_queue_us"),
            "throughput_ratio": ratio, "throughput_met": ratio is not None and ratio >= THROUGHPUT_GOAL,
            "overhead_fraction_of_p50": overhead,
            "overhead_met": overhead is not None and overhead <= OVERHEAD_GOAL,
        })
    return {
        "what": "ResNet-50 FP32 (224², folded), batch 1: served on the embedded Triton (onnxruntime entry, "
                "python-backend proxy) vs onnxruntime in-process at the same thread count",
        "date": time.strftime("%Y-%m-%d"),
        "note": args.note,
        "versions": {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__},
        "settings": {"concurrency": args.concurrency, "batch": 1, "protocol": "grpc", "engine": args.engine,
                     "window_seconds": args.window_seconds, "rounds": args.rounds,
                     "stability_percent": args.stability_percent},
        "goals": {"throughput_ratio_at_least": THROUGHPUT_GOAL, "overhead_fraction_at_most": OVERHEAD_GOAL},
        "summary": rows,
        "runs": runs,
    }


def markdown(report: dict) -> str:
    def fmt(value: float | None, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    machine = report["machine"]
    lines = [
        f"{report['what']}. Machine: {machine['description']}; load average before/after "
        f"{machine['load_average']['before'][0]:.2f}/{machine['load_average']['after'][0]:.2f}. "
        f"Medians of {report['settings']['rounds']} interleaved rounds. {report['note']}".strip(),
        "",
        "| served | in-process | served inf/s | in-process inf/s | ratio (≥ 0.9) | served p50 ms | "
        "compute infer ms | overhead / p50 (≤ 10%) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["summary"]:
        infer = None if row["server_compute_infer_us"] is None else row["server_compute_infer_us"] / 1000
        lines.append(
            f"| {row['served']} | {row['in_process']} | {fmt(row['served_inferences_per_second'], '.1f')} | "
            f"{fmt(row['in_process_inferences_per_second'], '.1f')} | {fmt(row['throughput_ratio'], '.2f')} "
            f"({'met' if row['throughput_met'] else 'missed'}) | {fmt(row['served_p50_ms'], '.1f')} | "
            f"{fmt(infer, '.1f')} | {fmt(row['overhead_fraction_of_p50'], '.1%')} "
            f"({'met' if row['overhead_met'] else 'missed'}) |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
