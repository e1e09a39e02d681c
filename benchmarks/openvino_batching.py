"""How to batch an OpenVINO entry that the official backend answers: the ways it allows, measured.

Triton's OpenVINO backend fixes the model's batch to max_batch_size and fails every execution of
another total unless ENABLE_BATCH_PADDING pads it, and its pad size is never reset
(docs/backend-contract.md, `openvino.*`). The embedded server's OpenVINO proxy does the same, so
each way is measured here as the official backend would run it: a ResNet-50 (224², random weights
with a trained net's magnitudes, so its cost is a trained one's), served on the embedded server,
measured by the bench engine (closed loop over gRPC, one image per request) at concurrency 1, 2
and 4, windows until stable. The ways:

- max_batch_size 1, one instance with both cores, or two instances of one core each;
- max_batch_size 4 with ENABLE_BATCH_PADDING and the dynamic batcher (2 ms), one instance or two:
  every execution computes 4 images, and one that totals exactly 4 after a padded one fails;
- max_batch_size 0 with the file's own dynamic batch (dims [-1, 3, 224, 224]): no batching in
  Triton, every request runs at its own size, two instances.

What the chosen default must do: answer every request, at the best throughput within the cores.

    .venv/bin/python benchmarks/openvino_batching.py --output benchmarks/results/openvino-batching-2core-cpu
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import _harness
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tune_resnet50 import resnet50_checkpoint

from resnet_serve.client.bench import benchmark_served_model
from resnet_serve.client.stability import StabilityRule
from resnet_serve.errors import ClientError, ResnetServeError, ServerError
from resnet_serve.pipeline import ExportOptions, export_to_repository
from resnet_serve.preprocessing import Preprocessing
from resnet_serve.selection import ImageSelection
from resnet_serve.triton.repository import Classifier, read_model_entry, read_warmup_images, write_model_entry
from resnet_serve.triton.server import TritonServer, find_free_ports
from resnet_serve.triton.serving import OPENVINO, ServingOptions

NAME = "resnet50"


def dynamic_batch(entry: Path) -> None:
    """max_batch_size 0: the dims carry the file's own dynamic batch, and Triton does not batch."""
    path = entry / "config.pbtxt"
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    config.max_batch_size = 0
    config.ClearField("dynamic_batching")
    for tensor in (*config.input, *config.output):
        tensor.dims.insert(0, -1)
    # A batch that is part of the dims is no image layout (FORMAT_NCHW takes exactly 3 dims).
    config.input[0].format = model_config_pb2.ModelInput.FORMAT_NONE
    for sample in config.model_warmup:
        for value in sample.inputs.values():
            value.dims.insert(0, 1)
    path.write_text(text_format.MessageToString(config))


# label → (write_model_entry's options, a change made to the written entry)
WAYS: dict[str, tuple[dict, Callable[[Path], None] | None]] = {
    "max batch 1, 1 instance × 2 threads": ({"max_batch_size": 1, "instances": 1, "threads": 2}, None),
    "max batch 1, 2 instances × 1 thread": ({"max_batch_size": 1, "instances": 2, "threads": 1}, None),
    "max batch 4 padded, 1 instance × 2 threads": (
        {"max_batch_size": 4, "batch_padding": True, "max_queue_delay_us": 2000, "instances": 1,
         "threads": 2}, None),
    "max batch 4 padded, 2 instances × 1 thread": (
        {"max_batch_size": 4, "batch_padding": True, "max_queue_delay_us": 2000, "instances": 2,
         "threads": 1}, None),
    "max batch 0 (the file's dynamic batch), 2 instances × 1 thread": (
        {"max_batch_size": 1, "instances": 2, "threads": 1}, dynamic_batch),
}


def measure(repository: Path, args: argparse.Namespace, log: Path) -> list[dict]:
    http, grpc, metrics = find_free_ports(3)
    rows = []
    with TritonServer(repository=repository, http_port=http, grpc_port=grpc, metrics_port=metrics,
                      model_control="explicit", load_models=(NAME,), exit_timeout_s=0, log_file=log) as server:
        for concurrency in args.concurrency:
            try:
                run = benchmark_served_model(
                    model=NAME, protocol="grpc", url=server.urls.grpc, batch_size=1, concurrency=(concurrency,),
                    warmup_seconds=args.warmup_seconds, measurement_seconds=args.window_seconds,
                    stability=StabilityRule(percentage=args.stability_percent, max_trials=args.max_trials),
                )
            except (ClientError, ServerError) as error:
                rows.append({"concurrency": concurrency, "failed": str(error)})
                continue
            row = run.results[0]
            rows.append({"concurrency": concurrency, "inferences_per_second": round(row.inferences_per_second, 2),
                         "p50_ms": round(row.p50_ms, 1), "p99_ms": round(row.p99_ms, 1),
                         "server_compute_infer_us": round(row.server_compute_infer_us)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=lambda text: [int(p) for p in text.split(",")], default=[1, 2, 4])
    parser.add_argument("--window-seconds", type=float, default=5.0)
    parser.add_argument("--warmup-seconds", type=float, default=2.0)
    parser.add_argument("--stability-percent", type=float, default=15.0)
    parser.add_argument("--max-trials", type=int, default=10)
    parser.add_argument("--output", type=Path, required=True, help="results path without suffix")
    args = parser.parse_args()
    load = _harness.Load()
    began = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(prefix="openvino-batching-") as scratch_name:
        scratch = Path(scratch_name)
        checkpoint = resnet50_checkpoint(scratch / "resnet50.safetensors")
        exported = export_to_repository(
            checkpoint=checkpoint, repository=scratch / "export",
            options=ExportOptions(name=NAME, serving=ServingOptions(target="openvino", image_pipeline=False),
                                  selection=ImageSelection(verify_images=16)),
        )
        entry = read_model_entry(repository=scratch / "export", name=NAME)
        for index, (label, (options, change)) in enumerate(WAYS.items()):
            repository = scratch / f"way{index}"
            classifier = Classifier(model_file=exported.model_file, class_names=entry.class_names,
                                    preprocessing=Preprocessing.from_dict(entry.preprocessing))
            write_model_entry(repository=repository, name=NAME, classifier=classifier,
                              settings=ServingOptions(target=OPENVINO.name, **options),
                              warmup_images=read_warmup_images(entry))
            if change is not None:
                change(repository / NAME)
            print(f"[{time.perf_counter() - began:5.0f} s] {label}", flush=True)
            try:
                results[label] = measure(repository, args, scratch / f"way{index}.log")
            except ResnetServeError as error:
                results[label] = [{"failed": str(error)}]
            for row in results[label]:
                print("   ", row, flush=True)
    load.stop()
    report = {
        "what": "OpenVINO batching ways for ResNet-50 (224², precision as the backend sets it: none), "
                "batch-1 requests, bench engine over gRPC, through the contract-faithful proxy",
        "date": time.strftime("%Y-%m-%d"), "concurrency": args.concurrency,
        "seconds": round(time.perf_counter() - began), "results": results,
    }
    record = _harness.write_results(args.output, report, load=load, markdown=markdown)
    print(markdown(record))


def markdown(report: dict) -> str:
    machine, concurrency = report["machine"], report["concurrency"]
    lines = [f"# {report['what']}", "", f"{report['date']}, {machine['description']}; load average before/after "
             f"{machine['load_average']['before'][0]:.2f} / {machine['load_average']['after'][0]:.2f}", "",
             "| way | " + " | ".join(f"c={c} infer/s (p99 ms)" for c in concurrency) + " |",
             "|---|" + "---:|" * len(concurrency)]
    for label, rows in report["results"].items():
        cells = [f"{r['inferences_per_second']:.1f} ({r['p99_ms']:.0f})" if "inferences_per_second" in r
                 else "failed" for r in rows]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    failures = [f"- {label}, concurrency {r.get('concurrency', '?')}: {r['failed'][:300]}"
                for label, rows in report["results"].items() for r in rows if "failed" in r]
    if failures:
        lines += ["", "Failures (the backend's own answers):", *failures]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
