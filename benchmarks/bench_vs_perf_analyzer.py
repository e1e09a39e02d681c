"""Does `resnet-serve bench` measure what perf_analyzer measures? Interleaved runs on one server.

One embedded tritonserver serves two models: the demo's ResNet-20 (1×28×28, Fashion-MNIST
sized) and ResNet-50 (3×224×224). Serving cost does not depend on the weights' values, so both
are freshly initialised, folded and exported as `resnet-serve export` would. For every model,
batch size and concurrency level, the engines run back to back — perf_analyzer 2.40, our engine
with one sync gRPC client per slot in threads, and (demo model) our engine on one asyncio event
loop — in an order that rotates every round, so a neighbour's load hits them all alike.

The JSON keeps every run; the markdown gives, per configuration, the median over rounds of
ours / perf_analyzer for throughput and p50 latency, against the issue's ±10% goal.

    .venv/bin/python benchmarks/bench_vs_perf_analyzer.py --output benchmarks/results/bench-vs-perf-analyzer-2core-cpu
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import _harness
import torch

from resnet_serve.client.bench import benchmark_served_model
from resnet_serve.client.stability import StabilityRule, UnstableMeasurementError
from resnet_serve.export.onnx import export_onnx
from resnet_serve.fold import fold_batchnorm
from resnet_serve.models import create_model
from resnet_serve.preprocessing import Preprocessing
from resnet_serve.triton.repository import Classifier, write_model_entry
from resnet_serve.triton.server import TritonServer, find_free_ports

MODELS = {
    # name: (architecture, input shape, classes, batch sizes)
    "resnet20-demo": ("resnet20", (1, 28, 28), 10, (1,)),
    "resnet50": ("resnet50", (3, 224, 224), 1000, (1, 8)),
}
GOAL = 0.10
# Window length per (model, batch) as a multiple of --interval-ms: ResNet-50 answers ~50× slower
# than ResNet-20 here, and a window must hold enough requests for a p99 to mean something.
WINDOW_FACTORS = {("resnet20-demo", 1): 1.0, ("resnet50", 1): 2.5, ("resnet50", 8): 5.0}


def write_entry(repository: Path, name: str) -> None:
    architecture, shape, classes, _ = MODELS[name]
    torch.manual_seed(0)
    model = create_model(architecture, num_classes=classes, in_channels=shape[0]).eval()
    folded = fold_batchnorm(model).model
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_path = Path(scratch) / "model.onnx"
        export_onnx(folded, onnx_path, input_shape=shape)
        preprocessing = Preprocessing(channels=shape[0], height=shape[1], width=shape[2],
                                      mean=(0.5,) * shape[0], std=(0.25,) * shape[0])
        write_model_entry(repository=repository, name=name, classifier=Classifier(
            model_file=onnx_path, class_names=[f"class_{i}" for i in range(classes)], preprocessing=preprocessing,
            metadata={"architecture": architecture}))


def engines(name: str) -> list[tuple[str, str | None]]:
    ours = [("resnet-serve", "threads")] + ([("resnet-serve", "asyncio")] if name == "resnet20-demo" else [])
    return [("perf_analyzer", None), *ours]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=_harness.RESULTS / "bench-vs-perf-analyzer")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", default="1,2,4")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--interval-ms", type=int, default=2000,
                        help="demo model's window; ResNet-50's are 2.5× (batch 1) and 5× (batch 8)")
    parser.add_argument("--stability-percentage", type=float, default=10.0)
    parser.add_argument("--max-trials", type=int, default=10)
    args = parser.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    names = args.models.split(",")
    runs: list[dict] = []
    load = _harness.Load()
    began = time.time()
    with tempfile.TemporaryDirectory() as repository:
        for name in names:
            write_entry(Path(repository), name)
        http, grpc, metrics = find_free_ports(3)
        with TritonServer(repository=Path(repository), http_port=http, grpc_port=grpc, metrics_port=metrics) as server:
            for round_index in range(args.rounds):
                for name in names:
                    for batch in MODELS[name][3]:
                        for level in levels:
                            order = engines(name)
                            shift = round_index % len(order)
                            for engine, client in order[shift:] + order[:shift]:
                                runs.append(measure(server.urls.grpc, name, batch, level, engine, client, args,
                                                    round_index))
                                print(json.dumps({k: runs[-1][k] for k in ("model", "batch", "concurrency", "engine",
                                                  "client", "inferences_per_second", "p50_ms")}), flush=True)
    load.stop()
    summary = summarize(runs)
    result = {
        "seconds": time.time() - began, "rounds": args.rounds, "interval_ms": args.interval_ms,
        "stability_percentage": args.stability_percentage, "max_trials": args.max_trials,
        "summary": summary, "runs": runs,
    }
    record = _harness.write_results(args.output, result, load=load, markdown=markdown)
    print(markdown(record))


def measure(
    url: str, name: str, batch: int, level: int, engine: str, client: str | None, args, round_index: int
) -> dict:
    interval = args.interval_ms / 1000 * WINDOW_FACTORS[(name, batch)]
    run = {"round": round_index, "model": name, "batch": batch, "concurrency": level, "engine": engine,
           "client": client, "inferences_per_second": None, "p50_ms": None}
    try:
        result = benchmark_served_model(
            model=name, protocol="grpc", url=url, engine=engine, batch_size=batch, concurrency=(level,),
            client=client or "threads", warmup_seconds=1.0, measurement_seconds=interval,
            stability=StabilityRule(percentage=args.stability_percentage, max_trials=args.max_trials),
        )
    except UnstableMeasurementError as exc:
        run["unstable"] = str(exc)
        return run
    return {**run, **asdict(result.results[0]), "concurrency": level}


def summarize(runs: list[dict]) -> list[dict]:
    rows = []
    keys = sorted({(r["model"], r["batch"], r["concurrency"]) for r in runs}, key=lambda k: (k[0], k[1], k[2]))
    for model, batch, level in keys:
        same = [r for r in runs if (r["model"], r["batch"], r["concurrency"]) == (model, batch, level)]
        reference = {r["round"]: r for r in same if r["engine"] == "perf_analyzer" and r["inferences_per_second"]}
        for client in sorted({r["client"] for r in same if r["client"]}):
            pairs = [(r, reference[r["round"]]) for r in same
                     if r["client"] == client and r["inferences_per_second"] and r["round"] in reference]
            throughput = [o["inferences_per_second"] / p["inferences_per_second"] for o, p in pairs]
            p50 = [o["p50_ms"] / p["p50_ms"] for o, p in pairs]

            def median(values):
                values = list(values)
                return statistics.median(values) if values else None

            rows.append({
                "model": model, "batch": batch, "concurrency": level, "client": client, "pairs": len(pairs),
                "perf_analyzer_infer_per_s": median(p["inferences_per_second"] for _, p in pairs),
                "perf_analyzer_p50_ms": median(p["p50_ms"] for _, p in pairs),
                "ours_infer_per_s": median(o["inferences_per_second"] for o, _ in pairs),
                "ours_p50_ms": median(o["p50_ms"] for o, _ in pairs),
                "throughput_ratio": median(throughput),
                "p50_ratio": median(p50),
                "throughput_ratio_range": [min(throughput), max(throughput)] if pairs else None,
                "p50_ratio_range": [min(p50), max(p50)] if pairs else None,
                "unstable_runs": sum(1 for r in same if "unstable" in r),
            })
    return rows


def markdown(result: dict) -> str:
    def fmt(value, spec):
        return "–" if value is None else format(value, spec)

    def met(row):
        if row["throughput_ratio"] is None:
            return "no stable pair"
        ok = abs(row["throughput_ratio"] - 1) <= GOAL and abs(row["p50_ratio"] - 1) <= GOAL
        return "yes" if ok else "**no**"

    lines = [
        "# `resnet-serve bench` vs perf_analyzer 2.40, interleaved, one embedded server, gRPC", "",
        f"Machine: {result['machine']['description']}. Load average (the benchmark's own load included) "
        f"{result['machine']['load_average']['before'][0]:.1f} before, "
        f"{result['machine']['load_average']['after'][0]:.1f} after. {result['rounds']} rounds, "
        f"windows {result['interval_ms']} ms (ResNet-50: 2.5× at batch 1, 5× at batch 8), "
        f"stable within ±{result['stability_percentage']:g}% "
        f"in at most {result['max_trials']} windows. Medians over rounds; ratio = ours / perf_analyzer "
        "(range over rounds).", "",
        "| model | batch | concurrency | client | perf_analyzer infer/s | ours infer/s | throughput ratio | "
        "perf_analyzer p50 ms | ours p50 ms | p50 ratio | within ±10% | unstable runs |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for row in result["summary"]:
        span = row["throughput_ratio_range"] or [None, None]
        p50_span = row["p50_ratio_range"] or [None, None]
        lines.append(
            f"| {row['model']} | {row['batch']} | {row['concurrency']} | {row['client']} | "
            f"{fmt(row['perf_analyzer_infer_per_s'], '.1f')} | {fmt(row['ours_infer_per_s'], '.1f')} | "
            f"{fmt(row['throughput_ratio'], '.2f')} ({fmt(span[0], '.2f')}–{fmt(span[1], '.2f')}) | "
            f"{fmt(row['perf_analyzer_p50_ms'], '.2f')} | {fmt(row['ours_p50_ms'], '.2f')} | "
            f"{fmt(row['p50_ratio'], '.2f')} ({fmt(p50_span[0], '.2f')}–{fmt(p50_span[1], '.2f')}) | {met(row)} | "
            f"{row['unstable_runs']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
