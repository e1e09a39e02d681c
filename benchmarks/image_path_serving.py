"""Issue 19's table: phone photos end to end through the image pipeline, beside float tensors.

As a user would serve and call it: a ResNet-50 imported from a torchvision-format state dict
(seeded weights: the cost does not depend on their values), exported twice with
`export --data photos/ --instances 2 --threads 1`, once as `rn50` (the default reduced-scale
decode) and once as `rn50exact` with `--exact-decode` (every pixel decoded, as before issue 19),
both served by one embedded tritonserver. Then `bench` at one concurrency (default 2 gRPC
clients), interleaved in an order that rotates every round: `rn50` with float tensors
1×3×224×224, and each `-image` ensemble with the JPEGs of benchmarks/phone_photos.py (640×480,
1920×1440, 4032×3024) through `--images`.

Instance budget: the float-tensor path runs on rn50's 2 instances; an image path adds its
-preprocess step's 2 instances, on the same 2 cores.

    .venv/bin/python benchmarks/image_path_serving.py --stability-percentage 25 \
        --output benchmarks/results/image-path-serving-2core-cpu
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import _harness
import torch
from phone_photos import TABLE_PHOTO, table_photos

from resnet_serve.client.bench import benchmark_served_model
from resnet_serve.client.stability import StabilityRule, UnstableMeasurementError
from resnet_serve.models import create_model
from resnet_serve.triton.server import TritonServer, find_free_ports

CLI = [sys.executable, "-m", "resnet_serve.cli"]
DECODES = {"rn50": "reduced-scale decode (default)", "rn50exact": "exact decode (--exact-decode; as before issue 19)"}


def export(folder: Path, repository: Path) -> None:
    """The two exports, through the CLI as a user runs them."""
    torch.manual_seed(0)
    torch.save(create_model("resnet50", num_classes=1000).state_dict(), folder / "resnet50.pth")
    run([*CLI, "import", str(folder / "resnet50.pth"), "--arch", "resnet50", "-o", str(folder / "rn50.safetensors")])
    for name in DECODES:
        run([*CLI, "export", str(folder / "rn50.safetensors"), "--name", name, "--repository", str(repository),
             "--data", str(folder / "photos"), "--verify-images", "3", "--instances", "2", "--threads", "1",
             *(["--exact-decode"] if name == "rn50exact" else [])])


def run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")


def configurations(photos: Path) -> list[tuple[str, str, Path | None]]:
    """(label, served model, folder of files or None) in the table's order."""
    rows = [("float tensor 1×3×224×224", "rn50", None)]
    for size in ("640x480", "1920x1440", "4032x3024"):
        rows += [(f"JPEG {size}, {DECODES[name]}", f"{name}-image", photos / "val" / size) for name in DECODES]
    return rows


def measure(url: str, label: str, model: str, images: Path | None, args: argparse.Namespace, round_index: int) -> dict:
    run_record = {"round": round_index, "label": label, "model": model,
                  "images": None if images is None else images.name, "load_average_before": os.getloadavg()}
    try:
        result = benchmark_served_model(
            model=model, protocol="grpc", url=url, engine=args.engine, concurrency=(args.concurrency,),
            warmup_seconds=args.warmup, measurement_seconds=args.interval_ms / 1000, images=images,
            stability=StabilityRule(percentage=args.stability_percentage, max_trials=args.max_trials),
        )
    except UnstableMeasurementError as error:
        return {**run_record, "unstable": str(error)}
    return {**run_record, **asdict(result.results[0]), "load_average_after": os.getloadavg()}


def summarize(runs: list[dict], labels: list[str]) -> list[dict]:
    float_label = labels[0]
    rows = []
    for label in labels:
        same = [r for r in runs if r["label"] == label and "unstable" not in r]
        ratios = []
        for r in same:
            reference = next((f for f in runs if f["label"] == float_label and f["round"] == r["round"]
                              and "unstable" not in f), None)
            if reference is not None:
                ratios.append(r["requests_per_second"] / reference["requests_per_second"])

        def median(values: list[float]) -> float | None:
            return statistics.median(values) if values else None

        steps: dict[str, list[dict]] = {}
        for r in same:
            for step in r.get("steps") or []:
                steps.setdefault(step["model"].rsplit("-", 1)[-1] if step["model"].endswith("-preprocess")
                                 else "classifier", []).append(step)
        rows.append({
            "label": label, "runs": len(same), "unstable_runs": sum(1 for r in runs if r["label"] == label) - len(same),
            "requests_per_second": median([r["requests_per_second"] for r in same]),
            "p50_ms": median([r["p50_ms"] for r in same]),
            "ratio_to_float": median(ratios), "ratio_range": [min(ratios), max(ratios)] if ratios else None,
            **{f"{kind}_compute_ms": median([s["compute_input_us"] + s["compute_infer_us"] + s["compute_output_us"]
                                             for s in found]) / 1000 for kind, found in steps.items()},
            **{f"{kind}_queue_ms": median([s["queue_us"] for s in found]) / 1000 for kind, found in steps.items()},
        })
    return rows


def markdown(result: dict) -> str:
    def fmt(value: float | None, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    loads = [r["load_average_before"][0] for r in result["runs"]]
    lines = [
        "# Phone photos end to end through the image pipeline, beside float tensors", "",
        f"Machine: {result['machine']['description']}. Load average over the runs {min(loads):.1f}–{max(loads):.1f} "
        f"(the benchmark's own load included; above ~2.5 other work shared the 2 cores). "
        f"{result['rounds']} rounds interleaved, {result['engine']} engine, {result['concurrency']} gRPC clients, "
        f"windows of {result['interval_ms']} ms until 3 agree within ±{result['stability_percentage']:g}%. "
        "ResNet-50 (torchvision-format state dict) exported with --instances 2 --threads 1; the float path runs on "
        "rn50's 2 instances, an image path adds its -preprocess step's 2 instances on the same 2 cores. "
        "Medians over rounds; ratio = req/s over the float tensor's in the same round (range).", "",
        "| request | req/s | p50 ms | vs float tensor | preprocess compute ms | classifier compute ms | "
        "preprocess queue ms | classifier queue ms | unstable runs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["summary"]:
        span = row["ratio_range"] or [None, None]
        lines.append(
            f"| {row['label']} | {fmt(row['requests_per_second'], '.1f')} | {fmt(row['p50_ms'], '.0f')} | "
            f"{fmt(row['ratio_to_float'], '.2f')} ({fmt(span[0], '.2f')}–{fmt(span[1], '.2f')}) | "
            f"{fmt(row.get('preprocess_compute_ms'), '.1f')} | {fmt(row.get('classifier_compute_ms'), '.1f')} | "
            f"{fmt(row.get('preprocess_queue_ms'), '.1f')} | {fmt(row.get('classifier_queue_ms'), '.1f')} | "
            f"{row['unstable_runs']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=_harness.RESULTS / "image-path-serving")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--engine", default="resnet-serve", choices=("resnet-serve", "perf_analyzer"))
    parser.add_argument("--interval-ms", type=int, default=5000)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--stability-percentage", type=float, default=10.0)
    parser.add_argument("--max-trials", type=int, default=10)
    args = parser.parse_args()
    runs: list[dict] = []
    began, load = time.time(), _harness.Load()
    with tempfile.TemporaryDirectory() as scratch:
        folder, repository = Path(scratch), Path(scratch) / "repository"
        # An ImageFolder (photos/val/<class>/) of the table's files, one class per size.
        for size, data in table_photos().items():
            (folder / "photos" / "val" / size).mkdir(parents=True)
            (folder / "photos" / "val" / size / f"{TABLE_PHOTO}.jpg").write_bytes(data)
        export(folder, repository)
        table = configurations(folder / "photos")
        http, grpc, metrics = find_free_ports(3)
        with TritonServer(repository=repository, http_port=http, grpc_port=grpc, metrics_port=metrics) as server:
            for round_index in range(args.rounds):
                shift = round_index % len(table)
                for label, model, images in table[shift:] + table[:shift]:
                    runs.append(measure(server.urls.grpc, label, model, images, args, round_index))
                    print(json.dumps({k: runs[-1].get(k) for k in ("round", "label", "requests_per_second", "p50_ms",
                                                                   "load_average_before")}), flush=True)
            load.stop()
    report = {
        "what": "issue 19's table: phone photos end to end through the image pipeline, beside float tensors",
        "date": time.strftime("%Y-%m-%d"), "seconds": time.time() - began, "rounds": args.rounds,
        "concurrency": args.concurrency,
        "engine": args.engine, "interval_ms": args.interval_ms, "stability_percentage": args.stability_percentage,
        "max_trials": args.max_trials, "summary": summarize(runs, [label for label, _, _ in table]), "runs": runs,
    }
    print(markdown(_harness.write_results(args.output, report, load=load, markdown=markdown)))


if __name__ == "__main__":
    main()
