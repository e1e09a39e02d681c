"""Served throughput of an `onnxruntime` entry (python-backend proxy) against the same ONNX as a
`python-onnxruntime` entry, on one embedded server, and against that target as it was before
the proxies (the python model of commit c04b310, read from git: "today's python target" of
issue 9).

The entries run the same folded ResNet-20 ONNX (random weights: speed does not depend on their
values; Fashion-MNIST's 1×28×28 input) with the writer's default batching settings. perf_analyzer
(the reference client, C++) measures each at batch 1, concurrency 2, over gRPC, in interleaved
rounds that alternate which entry goes first, so a neighbour's load on a shared machine lands
on both alike. Writes one JSON file with every run, the medians and the ratio.

perf_analyzer is the one `make perf-analyzer` installs (see `resnet_serve/client/perf_analyzer.py`).

    .venv/bin/python benchmarks/proxy_throughput.py
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import _harness
import onnxruntime
import torch

from resnet_serve.client.perf_analyzer import find_perf_analyzer, link_cuda_runtime
from resnet_serve.export.onnx import export_onnx
from resnet_serve.fold import fold_batchnorm
from resnet_serve.models import create_model
from resnet_serve.preprocessing import Preprocessing
from resnet_serve.triton.repository import Classifier, write_model_entry
from resnet_serve.triton.server import TritonServer, find_free_ports
from resnet_serve.triton.serving import ONNXRUNTIME, PYTHON_ONNXRUNTIME, ServingOptions

PREPROCESSING = Preprocessing(channels=1, height=28, width=28, mean=(0.286,), std=(0.353,))
# name → target. The baseline is the python target with the python model it had before the
# proxies (issue 9's "today's python target"); the candidate is the proxied onnxruntime target.
ENTRIES = {
    "resnet20-python-before": PYTHON_ONNXRUNTIME,
    "resnet20-python": PYTHON_ONNXRUNTIME,
    "resnet20-onnxruntime": ONNXRUNTIME,
}
BASELINE, _, CANDIDATE = ENTRIES
BEFORE_COMMIT = "c04b310"
BEFORE_MODEL = "resnet_serve/triton/python_model/model.py"


def python_model_before() -> str:
    completed = subprocess.run(
        ["git", "show", f"{BEFORE_COMMIT}:{BEFORE_MODEL}"], cwd=_harness.ROOT,
        capture_output=True, text=True, check=False,
    )
    if completed.returncode != 0:
        raise SystemExit(
            f"cannot read {BEFORE_MODEL} at {BEFORE_COMMIT} (run from a git clone): {completed.stderr.strip()}"
        )
    return completed.stdout


def write_repository(repository: Path) -> None:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=1).eval()
    onnx_path = repository.parent / "resnet20.onnx"
    export_onnx(fold_batchnorm(model).model, onnx_path, input_shape=PREPROCESSING.input_shape)
    for name, target in ENTRIES.items():
        write_model_entry(
            repository=repository, name=name,
            classifier=Classifier(model_file=onnx_path, class_names=[str(i) for i in range(10)],
                                  preprocessing=PREPROCESSING),
            settings=ServingOptions(target=target.name),
        )
    (repository / BASELINE / "1" / "model.py").write_text(python_model_before())


def perf_analyzer_environment(folder: Path) -> dict[str, str]:
    """perf_analyzer links libcudart.so.12 even for CPU-only runs; the pytriton wheel has one."""
    link_cuda_runtime(folder)
    return {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(
        p for p in (str(folder), os.environ.get("LD_LIBRARY_PATH", "")) if p)}


def measure(perf_analyzer: Path, *, model: str, grpc_url: str, concurrency: int, interval_ms: int,
            stability_percent: int, environment: dict[str, str], scratch: Path) -> dict:
    report = scratch / f"{model}.csv"
    command = [
        str(perf_analyzer), "-m", model, "-u", grpc_url, "-i", "grpc", "-b", "1",
        f"--concurrency-range={concurrency}:{concurrency}", f"--measurement-interval={interval_ms}",
        f"--stability-percentage={stability_percent}", "--max-trials=10", "-f", str(report),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"perf_analyzer failed on {model}: {(completed.stdout + completed.stderr).strip()[-600:]}")
    row = next(csv.DictReader(io.StringIO(report.read_text())))
    return {
        "inferences_per_second": float(row["Inferences/Second"]),
        "p50_us": float(row["p50 latency"]),
        "p99_us": float(row["p99 latency"]),
        "server_queue_us": float(row["Server Queue"]),
        "server_compute_infer_us": float(row["Server Compute Infer"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--perf-analyzer", type=Path, default=None,
                        help="the perf_analyzer binary (default: the one `make perf-analyzer` installs)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--measurement-interval-ms", type=int, default=5000)
    # perf_analyzer's default (10) is never met on a busy shared machine; the interleaved
    # rounds are what makes the comparison fair there.
    parser.add_argument("--stability-percent", type=int, default=50)
    parser.add_argument("--note", default="", help="e.g. whether the machine was shared during the run")
    parser.add_argument("--output", type=Path, default=_harness.RESULTS / "proxy-throughput.json")
    args = parser.parse_args()
    args.perf_analyzer = args.perf_analyzer or find_perf_analyzer()
    load = _harness.Load()

    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="proxy-throughput-") as scratch_name:
        scratch = Path(scratch_name)
        repository = scratch / "repository"
        write_repository(repository)
        environment = perf_analyzer_environment(scratch)
        http, grpc, metrics = find_free_ports(3)
        with TritonServer(repository=repository, http_port=http, grpc_port=grpc, metrics_port=metrics,
                          log_file=scratch / "tritonserver.log") as server:
            served = {entry.name: entry.served_as for entry in server.served}
            for round_index in range(args.rounds):
                # Each round starts with another entry, so no entry always runs first.
                order = list(ENTRIES)[round_index % len(ENTRIES):] + list(ENTRIES)[: round_index % len(ENTRIES)]
                for model in order:
                    result = measure(args.perf_analyzer, model=model, grpc_url=server.urls.grpc,
                                     concurrency=args.concurrency, interval_ms=args.measurement_interval_ms,
                                     stability_percent=args.stability_percent, environment=environment, scratch=scratch)
                    runs.append({"round": round_index, "model": model, **result})
                    print(f"round {round_index} {model}: {result['inferences_per_second']:.0f} inf/s, "
                          f"p50 {result['p50_us'] / 1000:.2f} ms", flush=True)
    load.stop()

    medians = {
        model: {key: statistics.median(run[key] for run in runs if run["model"] == model)
                for key in ("inferences_per_second", "p50_us", "server_compute_infer_us")}
        for model in ENTRIES
    }
    ratio = medians[CANDIDATE]["inferences_per_second"] / medians[BASELINE]["inferences_per_second"]
    result = {
        "what": f"{CANDIDATE} (onnxruntime target, served by the python-backend proxy) vs {BASELINE} "
                f"(python-onnxruntime target with the python model of {BEFORE_COMMIT}), and resnet20-python "
                "(the same target with today's python model), same ONNX, one embedded server",
        "date": time.strftime("%Y-%m-%d"),
        "note": args.note,
        "versions": {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__},
        "settings": {"model": "resnet20 (folded, random weights), input 1x28x28", "batch": 1,
                     "concurrency": args.concurrency, "protocol": "grpc", "client": "perf_analyzer 2.40",
                     "measurement_interval_ms": args.measurement_interval_ms, "rounds": args.rounds,
                     "stability_percent": args.stability_percent,
                     "served_as": served},
        "median": medians,
        "throughput_ratio": ratio,
        "within_10_percent": ratio >= 0.9,
        "runs": runs,
    }
    _harness.write_results(args.output, result, load=load)
    print(f"{CANDIDATE} / {BASELINE} throughput: {ratio:.3f} (median of {args.rounds} rounds) → {args.output}")


if __name__ == "__main__":
    main()
