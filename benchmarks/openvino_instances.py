"""Why two OpenVINO instances of one thread answer no faster than one: measured in-process.

The serving measurements (openvino_batching.py, tune_resnet50.py) found OpenVINO entries with 2
instances × 1 thread no faster than 1 instance × 1 thread on 2 cores. Two things could cause it,
and they differ between the official backend and the embedded server:

- the official backend (triton-inference-server/openvino_backend, src/openvino.cc: `LoadModel`
  compiles once per device into `ModelState::compiled_model_`, and each `ModelInstanceState`
  calls `CreateInferRequest` on it) serves every instance of an entry from **one compiled
  model**, an infer request per instance, each run by its instance's thread;
- the embedded server's OpenVINO proxy runs each instance in its own python-backend stub
  process, which compiles **its own model**.

Both ways are reproduced here without a server, on a ResNet-50 (224², random weights with a
trained net's magnitudes) exported as `export` does: N workers, each calling `infer` on its own
request in a closed loop, as an instance's thread does, either N threads sharing one compiled
model (the official way) or N spawned processes with a compiled model each (the proxy's way).
Each worker records the core it ran on (`/proc/self/task/<tid>/stat`, field 39) every third
inference. OpenVINO's `ENABLE_CPU_PINNING` is left at its default (the backend has no parameter
for it), and also switched off for the 2 × 1 case, to show what it does.

    .venv/bin/python benchmarks/openvino_instances.py --output benchmarks/results/openvino-instances-2core-cpu
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import _harness
import numpy as np
from tune_resnet50 import resnet50_checkpoint

from resnet_serve.pipeline import ExportOptions, export_to_repository
from resnet_serve.selection import ImageSelection
from resnet_serve.triton.serving import ServingOptions

# (instances, INFERENCE_NUM_THREADS, NUM_STREAMS or None for OpenVINO's default, pinning or None
# for OpenVINO's default)
CONFIGURATIONS = ((1, 1, None, None), (1, 2, None, None), (2, 1, None, None), (2, 1, None, False),
                  (2, 2, 2, None))


def compile_model(path: str, threads: int, num_streams: int | None, pinning: bool | None) -> Any:
    import openvino
    import openvino.properties as props
    import openvino.properties.hint as hints
    import openvino.properties.streams as streams

    properties: dict[Any, Any] = {props.inference_num_threads: threads}
    if num_streams is not None:
        properties[streams.num] = num_streams
    if pinning is not None:
        properties[hints.enable_cpu_pinning] = pinning
    return openvino.Core().compile_model(path, "CPU", properties)


def closed_loop(request: Any, seconds: float, start: float) -> dict:
    """Infer back to back from ``start`` for ``seconds``: inferences/s and the cores run on."""
    feed = {0: np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)}
    for _ in range(3):
        request.infer(feed)
    stat = Path(f"/proc/self/task/{threading.get_native_id()}/stat")
    cores: dict[int, int] = {}
    while time.time() < start:
        time.sleep(0.001)
    count = 0
    while time.time() < start + seconds:
        request.infer(feed)
        count += 1
        if count % 3 == 0:
            core = int(stat.read_text().rsplit(")", 1)[1].split()[36])
            cores[core] = cores.get(core, 0) + 1
    return {"inferences_per_second": count / seconds, "cores": cores}


def _process_worker(path: str, threads: int, num_streams: int | None, pinning: bool | None, seconds: float,
                    start: float, queue: Any) -> None:
    request = compile_model(path, threads, num_streams, pinning).create_infer_request()
    queue.put(closed_loop(request, seconds, start))


def official_way(path: str, configuration: tuple, seconds: float) -> list[dict]:
    """One compiled model, an infer request per instance, each run by its own thread."""
    instances, threads, num_streams, pinning = configuration
    compiled = compile_model(path, threads, num_streams, pinning)
    requests = [compiled.create_infer_request() for _ in range(instances)]
    start = time.time() + 5
    results: list[dict] = [{}] * instances

    def run(index: int) -> None:
        results[index] = closed_loop(requests[index], seconds, start)

    workers = [threading.Thread(target=run, args=(index,)) for index in range(instances)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return results


def proxy_way(path: str, configuration: tuple, seconds: float) -> list[dict]:
    """A compiled model per instance, each in its own process (a python-backend stub)."""
    instances, threads, num_streams, pinning = configuration
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    start = time.time() + 15  # spawned interpreters import OpenVINO and compile first
    processes = [context.Process(target=_process_worker, args=(path, threads, num_streams, pinning, seconds,
                                                                start, queue)) for _ in range(instances)]
    for process in processes:
        process.start()
    results = [queue.get(timeout=120) for _ in processes]
    for process in processes:
        process.join()
    return results


def label(configuration: tuple) -> str:
    instances, threads, num_streams, pinning = configuration
    return (f"{instances} × {threads} thread(s)" + (f", NUM_STREAMS {num_streams}" if num_streams else "")
            + (", ENABLE_CPU_PINNING off" if pinning is False else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--note", default="")
    parser.add_argument("--output", type=Path, default=_harness.RESULTS / "openvino-instances")
    args = parser.parse_args()
    load = _harness.Load()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="openvino-instances-") as scratch_name:
        scratch = Path(scratch_name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_to_repository(
                checkpoint=resnet50_checkpoint(scratch / "resnet50.safetensors"), repository=scratch / "repository",
                options=ExportOptions(name="resnet50", selection=ImageSelection(verify_images=8),
                                      serving=ServingOptions(image_pipeline=False)))
        path = str(scratch / "repository" / "resnet50" / "1" / "model.onnx")
        for round_index in range(args.rounds):
            for configuration in CONFIGURATIONS:
                ways = [("official", official_way), ("proxy", proxy_way)]
                for way, measure in ways if round_index % 2 == 0 else reversed(ways):
                    workers = measure(path, configuration, args.seconds)
                    runs.append({"round": round_index, "configuration": label(configuration), "way": way,
                                 "inferences_per_second": sum(w["inferences_per_second"] for w in workers),
                                 "workers": workers})
                    print(runs[-1], flush=True)
    load.stop()
    report = {
        "what": "OpenVINO instances on the CPU, in-process: one compiled model shared by the instances (the official "
                "backend) against a compiled model per instance process (the embedded server's proxy); ResNet-50 "
                "224², batch 1, a closed loop per instance",
        "date": time.strftime("%Y-%m-%d"),
        "note": args.note,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "summary": summarize(runs),
        "runs": runs,
    }
    record = _harness.write_results(args.output, report, load=load, markdown=markdown)
    print(markdown(record))


def summarize(runs: list[dict]) -> list[dict]:
    rows = []
    for configuration in map(label, CONFIGURATIONS):
        row: dict[str, Any] = {"configuration": configuration}
        for way in ("official", "proxy"):
            chosen = [run for run in runs if run["configuration"] == configuration and run["way"] == way]
            samples: dict[str, int] = {}
            for run in chosen:
                for worker in run["workers"]:
                    for core, count in worker["cores"].items():
                        samples[str(core)] = samples.get(str(core), 0) + count
            row[way] = {"inferences_per_second": statistics.median(run["inferences_per_second"] for run in chosen),
                        "core_samples": dict(sorted(samples.items()))}
        rows.append(row)
    return rows


def markdown(report: dict) -> str:
    machine, load = report["machine"], report["machine"]["load_average"]

    def cores(samples: dict[str, int]) -> str:
        total = sum(samples.values()) or 1
        return ", ".join(f"core {core} {count / total:.0%}" for core, count in samples.items())

    lines = [
        f"{report['what']}. Machine: {machine['description']}; load average before/after "
        f"{load['before'][0]:.2f}/{load['after'][0]:.2f}. Median of {report['rounds']} interleaved rounds of "
        f"{report['seconds']:g} s. {report['note']}".strip(),
        "",
        "| instances × threads | one compiled model (official backend) inf/s | where its workers ran "
        "| a compiled model per process (embedded proxy) inf/s | where its workers ran |",
        "|---|---:|---|---:|---|",
    ]
    for row in report["summary"]:
        official, proxy = row["official"], row["proxy"]
        lines.append(f"| {row['configuration']} | {official['inferences_per_second']:.1f} | "
                     f"{cores(official['core_samples'])} | {proxy['inferences_per_second']:.1f} | "
                     f"{cores(proxy['core_samples'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
