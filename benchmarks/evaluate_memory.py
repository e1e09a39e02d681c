"""Peak memory of `resnet-serve evaluate` on ImageFolder trees of JPEGs of varying sizes.

Writes N JPEGs (sides 200–640 px, 4 classes, smooth random shapes with grain, which compress
like photos) into a temporary ImageFolder, exports a CIFAR ResNet-20 with random weights whose
preprocessing resizes the shorter side to 36 and centre-crops 32×32 (`resnet-serve export
--target python-onnxruntime --data <folder>`, which reads the folder's photos of any size),
serves it on the embedded tritonserver and runs `resnet-serve evaluate --data <folder>` as a
subprocess on the first 64 images, on 5,000 and on all N, recording each run's peak resident
memory (ru_maxrss of that process, from wait4 in a small launcher process, so the figure is
not inherited from this one). Writes benchmarks/results/evaluate-memory.json.

    .venv/bin/python benchmarks/evaluate_memory.py --images 20000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import _harness
import numpy as np
import torch
from PIL import Image

from resnet_serve.checkpoints import CheckpointMeta, save_checkpoint
from resnet_serve.models import create_model
from resnet_serve.preprocessing import Preprocessing
from resnet_serve.triton.server import TritonServer, find_free_ports

CLASSES = ("circles", "stripes", "blobs", "noise")
CLI = [sys.executable, "-m", "resnet_serve.cli"]


def write_photos(root: Path, count: int, *, seed: int = 0) -> int:
    """``count`` JPEGs under root/<class>/, sides drawn from 200..640 px; returns their bytes."""
    rng = np.random.default_rng(seed)
    # One grain tile, cut at random offsets: drawing fresh noise per image would dominate the time.
    grain = rng.normal(0, 8, (700, 700, 3)).astype(np.int16)
    total = 0
    for index in range(count):
        width, height = (int(v) for v in rng.integers(200, 641, 2))
        coarse = rng.integers(0, 256, (int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), np.int16)
        top, left = (int(v) for v in rng.integers(0, 700 - 640, 2))
        pixels = np.clip(smooth + grain[top : top + height, left : left + width], 0, 255).astype(np.uint8)
        path = root / CLASSES[index % len(CLASSES)] / f"{index:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=85)
        total += path.stat().st_size
    return total


def link_subset(source: Path, destination: Path, count: int) -> None:
    """The first ``count`` images of ``source`` (in its sorted order) as hard links under ``destination``."""
    files = sorted(source.glob("*/*.jpg"))[:count]
    for file in files:
        target = destination / file.parent.name / file.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(file, target)


def run(command: list[str]) -> None:
    finished = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if finished.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({finished.returncode}): {finished.stderr.strip()[-2000:]}")


# A process's peak memory (ru_maxrss) starts at its parent's when it is forked, and this script
# holds torch; so each command is started by a fresh, small Python that reports its child's peak.
_LAUNCHER = """
import json, os, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
print(json.dumps({"exit": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss}))
"""


def peak_rss_of(command: list[str]) -> tuple[int, float]:
    """Run ``command``; its peak resident memory in bytes and its wall time in seconds."""
    began = time.perf_counter()
    finished = subprocess.run([sys.executable, "-c", _LAUNCHER, *command], capture_output=True, text=True)
    seconds = time.perf_counter() - began
    outcome = json.loads(finished.stdout)
    if outcome["exit"] != 0:
        raise SystemExit(f"{' '.join(command)} failed ({outcome['exit']}): {finished.stderr.strip()[-2000:]}")
    return outcome["maxrss_kib"] * 1024, seconds  # Linux reports kibibytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--subset", type=int, default=5_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--output", type=Path, default=_harness.RESULTS / "evaluate-memory.json")
    parser.add_argument("--note", default="", help="recorded as is, e.g. how busy the machine was")
    args = parser.parse_args()
    load = _harness.Load()

    with tempfile.TemporaryDirectory(prefix="evaluate-memory-") as scratch:
        work = Path(scratch)
        began = time.perf_counter()
        folder_bytes = write_photos(work / "photos", args.images)
        generated_seconds = time.perf_counter() - began
        link_subset(work / "photos", work / "subset", args.subset)

        torch.manual_seed(0)
        preprocessing = Preprocessing(
            channels=3, height=32, width=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), resize=36
        )
        checkpoint = save_checkpoint(
            work / "resnet20-photos.safetensors",
            model=create_model("resnet20", num_classes=len(CLASSES), in_channels=3),
            meta=CheckpointMeta(
                architecture="resnet20", num_classes=len(CLASSES), in_channels=3,
                class_names=sorted(CLASSES), preprocessing=preprocessing,
            ),
        )
        repository = work / "repository"
        run([*CLI, "export", str(checkpoint), "--repository", str(repository), "--name", "photos",
             "--target", "python-onnxruntime", "--data", str(work / "photos"), "--verify-images", "64"])

        http, grpc, metrics = find_free_ports(3)
        runs = []
        with TritonServer(
            repository=repository, http_port=http, grpc_port=grpc, metrics_port=metrics,
            log_file=work / "tritonserver.log",
        ) as server:
            for label, data, limit in (
                ("first 64 images", work / "photos", 64),
                (f"{args.subset:,} images", work / "subset", None),
                (f"{args.images:,} images", work / "photos", None),
            ):
                report = work / "evaluate.json"
                command = [*CLI, "evaluate", "--url", server.urls.grpc, "--data", str(data), "--json", str(report),
                           "--batch-size", str(args.batch_size), "--concurrency", str(args.concurrency)]
                peak, seconds = peak_rss_of(command + (["--limit", str(limit)] if limit else []))
                evaluation = json.loads(report.read_text())
                runs.append({
                    "run": label,
                    "images": evaluation["images"],
                    "peak_rss_mib": round(peak / 2**20, 1),
                    # What the old evaluate held at once: every image prepared before the first request.
                    "prepared_inputs_mib": round(evaluation["images"] * 3 * 32 * 32 * 4 / 2**20, 1),
                    "wall_seconds": round(seconds, 1),
                    "images_per_second": round(evaluation["images_per_second"], 1),
                    "top1": evaluation["top1"],
                })
                print(f"{label:>16}: peak RSS {peak / 2**20:7.1f} MiB, {seconds:6.1f} s", flush=True)
    load.stop()

    result = {
        "what": "peak resident memory of `resnet-serve evaluate --data <ImageFolder>` (the client process only)",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": args.note,
        "folder": {
            "images": args.images,
            "classes": len(CLASSES),
            "sides_px": [200, 640],
            "format": "JPEG quality 85",
            "megabytes": round(folder_bytes / 1e6, 1),
            "generated_seconds": round(generated_seconds, 1),
        },
        "model": "CIFAR ResNet-20, random weights (top-1 is chance), preprocessing resize 36 → centre crop 32",
        "server": "embedded tritonserver (nvidia-pytriton 0.7.0), python-onnxruntime model",
        "batch_size": args.batch_size,
        "concurrency": args.concurrency,
        "runs": runs,
    }
    _harness.write_results(args.output, result, load=load)
    print(f"wrote {args.output.with_suffix('.json')}")


if __name__ == "__main__":
    main()
