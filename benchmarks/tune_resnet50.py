"""`resnet-serve tune` on ResNet-50 at concurrency 4: the tuned configuration against the export default.

A ResNet-50 (random weights given a trained net's magnitudes: convolution scales spread over
two decades, BatchNorm statistics of real photos, logits of a few tens; its cost is a trained
one's) is exported as `resnet-serve export` does by default (onnxruntime target, max batch 64,
no preferred size, 100 µs queue delay, one instance, the backend's threads). Then:

1. `tune_model_entry` measures every configuration of the space (brute mode; `--quick` walks
   it instead) under a p99 budget, with our bench engine over gRPC at batch 1, and writes the
   winner as version 2. The default space is the command's, less the preferred sizes and the
   second queue delay: with about 60 ms of compute per image and 4 requests in flight, a
   batcher delay of 100 µs or 2 ms changes little. Every measurement and the Pareto plot are
   kept.
2. Confirmation: the export default (a copy of the repository taken before tuning) and the
   tuned repository are measured again in interleaved rounds, each on a fresh embedded server,
   alternating which goes first, so a neighbour's load on a shared machine lands on both alike.
   The goal is the tuned throughput, within the budget, ≥ 1.5× the default's.

With ``--photo SIZE`` the entry is exported with its image pipeline and the search is
`tune --images` (issue 19): the classifier and its `-preprocess` step searched together, every
candidate and every confirmation round measured with issue 19's photo of that size
(benchmarks/phone_photos.py) sent to `resnet50-image`.

`tune` checks the OpenVINO runtimes against onnxruntime FP32 on test images (Fashion-MNIST
upscaled to 224² RGB) before measuring them. A net with random weights has tiny margins between
its 1000 classes, so BF16 or INT8 rounding flips many top-1 classes where a trained net's would
not: its agreement says nothing of a trained ResNet-50's. Speed is what this measures, so the
check's threshold (``--min-agreement``) is 0 here; the agreement measured is recorded.

    .venv/bin/python benchmarks/tune_resnet50.py --output benchmarks/results/tune-resnet50-2core-cpu
    .venv/bin/python benchmarks/tune_resnet50.py --photo 4032x3024 --quick --concurrency 2 --p99-ms 1000 \
        --output benchmarks/results/tune-resnet50-image-2core-cpu
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import _harness
import torch
from phone_photos import TABLE_SIZES, table_photos

from resnet_serve.checkpoints import IMAGENET_PREPROCESSING, CheckpointMeta, imagenet_class_names, save_checkpoint
from resnet_serve.client.bench import benchmark_served_model
from resnet_serve.client.results import StepResult
from resnet_serve.client.stability import StabilityRule, UnstableMeasurementError
from resnet_serve.models import create_model
from resnet_serve.pipeline import ExportOptions, export_to_repository
from resnet_serve.progress import SilentReporter
from resnet_serve.report import write_tuning_plot
from resnet_serve.samples import photo_crops, with_trained_magnitudes
from resnet_serve.selection import ImageSelection
from resnet_serve.triton.repository import image_pipeline_names
from resnet_serve.triton.server import TritonServer, find_free_ports
from resnet_serve.triton.serving import ServingOptions
from resnet_serve.tuning.search import TuneOptions, tune_model_entry
from resnet_serve.tuning.space import SearchSpace

NAME = "resnet50"
GOAL = 1.5


class Printer(SilentReporter):
    """Prints each message with the time since the start."""

    def __init__(self) -> None:
        self.began = time.perf_counter()

    def message(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.began:6.0f} s] {text}", flush=True)


def resnet50_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    photos = torch.from_numpy(IMAGENET_PREPROCESSING.normalize(photo_crops(8, size=256)))
    model = with_trained_magnitudes(create_model("resnet50").eval(), photos, seed=0)
    meta = CheckpointMeta(architecture="resnet50", num_classes=1000, in_channels=3,
                          class_names=imagenet_class_names(), preprocessing=IMAGENET_PREPROCESSING)
    return save_checkpoint(path, model=model, meta=meta)


def integers(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def measure(repository: Path, args: argparse.Namespace, log: Path, photos: Path | None) -> dict:
    http, grpc, metrics = find_free_ports(3)
    models = (NAME,) if photos is None else (NAME, *image_pipeline_names(NAME))
    with TritonServer(repository=repository, http_port=http, grpc_port=grpc, metrics_port=metrics,
                      model_control="explicit", load_models=models, exit_timeout_s=0, log_file=log) as server:
        try:
            run = benchmark_served_model(
                model=NAME, protocol="grpc", url=server.urls.grpc, batch_size=1, concurrency=(args.concurrency,),
                warmup_seconds=args.warmup_seconds, measurement_seconds=args.window_seconds,
                stability=StabilityRule(percentage=args.stability_percent, max_trials=args.max_trials), images=photos,
            )
        except UnstableMeasurementError as error:
            return {"unstable": str(error)}
    row = run.results[0]
    return {"inferences_per_second": row.inferences_per_second, "p50_ms": row.p50_ms, "p99_ms": row.p99_ms,
            "server_queue_us": row.server_queue_us, "server_compute_infer_us": row.server_compute_infer_us}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--p99-ms", type=float, default=500.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="walk the space one setting at a time")
    parser.add_argument("--photo", choices=TABLE_SIZES,
                        help="search the image pipeline too, sending issue 19's photo of this size")
    parser.add_argument("--runtimes", default="onnxruntime,openvino,openvino-int8")
    parser.add_argument("--max-batch-sizes", default="1,64")
    parser.add_argument("--preferred-batch-sizes", default="0")
    parser.add_argument("--queue-delays-us", default="100")
    parser.add_argument("--window-seconds", type=float, default=5.0)
    parser.add_argument("--warmup-seconds", type=float, default=2.0)
    parser.add_argument("--stability-percent", type=float, default=15.0)
    parser.add_argument("--max-trials", type=int, default=10)
    parser.add_argument("--verify-images", type=int, default=64)
    parser.add_argument("--calibration-images", type=int, default=128)
    parser.add_argument("--min-agreement", type=float, default=0.0)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved confirmation rounds")
    parser.add_argument("--note", default="", help="e.g. whether the machine was shared during the run")
    parser.add_argument("--output", type=Path, default=_harness.RESULTS / "tune-resnet50")
    args = parser.parse_args()
    printer = Printer()
    load = _harness.Load()
    selection = ImageSelection(verify_images=args.verify_images, calibration_images=args.calibration_images)
    with tempfile.TemporaryDirectory(prefix="tune-resnet50-") as scratch_name:
        scratch = Path(scratch_name)
        photos = None
        if args.photo is not None:
            photos = scratch / "photos"
            photos.mkdir()
            (photos / f"coffee-{args.photo}.jpg").write_bytes(table_photos()[args.photo])
        checkpoint = resnet50_checkpoint(scratch / "resnet50.safetensors")
        repository, default = scratch / "repository", scratch / "export-default"
        printer.message("exporting ResNet-50 with the export defaults")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_to_repository(checkpoint=checkpoint, repository=repository, options=ExportOptions(
                name=NAME, selection=selection, serving=ServingOptions(image_pipeline=photos is not None)))
        shutil.copytree(repository, default)
        options = TuneOptions(
            p99_budget_ms=args.p99_ms, concurrency=args.concurrency, batch_size=1,
            space=SearchSpace(
                runtimes=tuple(args.runtimes.split(",")), max_batch_sizes=integers(args.max_batch_sizes),
                preferred_batch_sizes=integers(args.preferred_batch_sizes),
                max_queue_delays_us=integers(args.queue_delays_us),
            ),
            quick=args.quick,
            warmup_seconds=args.warmup_seconds, measurement_seconds=args.window_seconds,
            stability=StabilityRule(percentage=args.stability_percent, max_trials=args.max_trials),
            selection=selection, min_agreement=args.min_agreement, images=photos,
        )
        result = tune_model_entry(repository=repository, name=NAME, options=options, reporter=printer)
        write_tuning_plot(result, args.output.with_suffix(".png"))
        confirmation: list[dict] = []
        if result.written_version is not None:
            for round_index in range(args.rounds):
                order = [("export default", default), ("tuned", repository)]
                for label, served in order if round_index % 2 == 0 else reversed(order):
                    figures = measure(served, args, scratch / f"confirm-{round_index}-{label}.log", photos)
                    confirmation.append({"round": round_index, "config": label, **figures})
                    printer.message(f"confirmation {json.dumps(confirmation[-1])}")
    load.stop()
    report = summarize(result, confirmation, args=args)
    record = _harness.write_results(args.output, report, load=load, markdown=markdown)
    print(markdown(record))


def summarize(result, confirmation: list[dict], *, args: argparse.Namespace) -> dict:
    def median(config: str, key: str) -> float | None:
        values = [run[key] for run in confirmation if run["config"] == config and key in run]
        return statistics.median(values) if values else None

    default_ips, tuned_ips = median("export default", "inferences_per_second"), median("tuned", "inferences_per_second")
    tuned_p99 = median("tuned", "p99_ms")
    ratio = tuned_ips / default_ips if default_ips and tuned_ips else None
    chosen = None if result.chosen is None else result.measurement(result.chosen)
    return {
        "what": f"resnet-serve tune on ResNet-50 (224², FP32 export default), batch 1, concurrency {args.concurrency}, "
                f"p99 budget {args.p99_ms:g} ms"
                + ("" if args.photo is None else f", image pipeline searched too, sending a {args.photo} JPEG"),
        "quick": args.quick,
        "date": time.strftime("%Y-%m-%d"),
        "note": args.note,
        "goal": f"tuned throughput within the budget ≥ {GOAL}× the export default's",
        "chosen": None if chosen is None else {"label": chosen.label, "settings": chosen.candidate.describe()},
        "runtimes": [{"runtime": c.runtime, "computes_in": c.computes_in, "refused": c.refused,
                      "top1_agreement": None if c.parity is None else c.parity.top1_agreement}
                     for c in result.runtimes],
        "search_speedup": result.speedup,
        "confirmation": {
            "rounds": args.rounds, "export_default_inferences_per_second": default_ips,
            "tuned_inferences_per_second": tuned_ips, "export_default_p99_ms": median("export default", "p99_ms"),
            "tuned_p99_ms": tuned_p99, "ratio": ratio,
            "met": ratio is not None and ratio >= GOAL and tuned_p99 is not None and tuned_p99 <= args.p99_ms,
            "runs": confirmation,
        },
        "tune": result.to_dict(),
    }


def markdown(report: dict) -> str:
    def fmt(value: float | None, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    confirmation = report["confirmation"]
    measured = [m for m in report["tune"]["measurements"] if m["status"] == "measured"]
    machine = report["machine"]
    load = machine["load_average"]
    lines = [
        f"{report['what']}. Machine: {machine['description']}; load average before/after "
        f"{load['before'][0]:.2f}/{load['after'][0]:.2f}. "
        f"{report['note']}".strip(),
        "",
        f"Search: {'quick (one setting at a time)' if report['quick'] else 'brute (the whole grid)'}, "
        f"{len(report['tune']['measurements'])} configurations measured in {report['tune']['seconds']:.0f} s; "
        f"left out: {json.dumps(report['tune']['pruned'], ensure_ascii=False)}.",
        "",
        "| configuration | runtime (computes in) | infer/s | p50 ms | p99 ms | compute ms per request, by step |",
        "|---|---|---:|---:|---:|---|",
    ]
    computes = {c["runtime"]: c["computes_in"] for c in report["runtimes"]}
    for m in sorted(measured, key=lambda m: -m["result"]["inferences_per_second"]):
        c, row = m["candidate"], m["result"]
        marks = [mark for mark, on in (("chosen", m["label"] == report["tune"]["chosen"]),
                                       ("Pareto", m["label"] in report["tune"]["pareto"])) if on]
        settings = (f"{m['label']}{' (' + ', '.join(marks) + ')' if marks else ''}: max batch {c['max_batch_size']}, "
                    f"preferred {c['preferred_batch_size'] or '–'}, delay {c['max_queue_delay_us']} µs, "
                    f"{c['instances']} × {c['threads'] or 'default'} threads")
        if c["preprocess_instances"] is not None:
            settings += (f"; preprocess {c['preprocess_instances']} instance(s), max batch "
                         f"{c['preprocess_max_batch_size']}, delay {c['preprocess_max_queue_delay_us']} µs")
        split = ", ".join(f"{step.model} {step.compute_us / 1000:.1f}"
                          for step in (StepResult(**step) for step in row.get("steps") or []))
        lines.append(f"| {settings} | {c['runtime']} ({computes.get(c['runtime'], 'f32')}) | "
                     f"{row['inferences_per_second']:.1f} | {row['p50_ms']:.0f} | {row['p99_ms']:.0f} | "
                     f"{split or '–'} |")
    for m in report["tune"]["measurements"]:
        if m["status"] != "measured":
            lines.append(f"| {m['label']} {m['status']}: {m['reason'][:160]} | | | | | |")
    lines += [
        "",
        f"Confirmation, medians of {confirmation['rounds']} interleaved rounds: export default "
        f"{fmt(confirmation['export_default_inferences_per_second'], '.1f')} infer/s (p99 "
        f"{fmt(confirmation['export_default_p99_ms'], '.0f')} ms), tuned "
        f"{fmt(confirmation['tuned_inferences_per_second'], '.1f')} infer/s "
        f"(p99 {fmt(confirmation['tuned_p99_ms'], '.0f')} ms): "
        f"**{fmt(confirmation['ratio'], '.2f')}×** (goal ≥ {GOAL}× within the budget: "
        f"{'met' if confirmation['met'] else 'missed'}).",
        "",
        *(f"- {c['runtime']}: computes in {c['computes_in'] or '?'}; top-1 agreement with onnxruntime FP32 "
          f"{fmt(c['top1_agreement'], '.2%')}" + (f"; left out: {c['refused']}" if c["refused"] else "")
          for c in report["runtimes"]),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
