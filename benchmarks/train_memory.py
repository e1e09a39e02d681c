"""Peak memory of a training epoch on photos does not grow with the number of photos: one epoch
of `resnet-serve train --data <ImageFolder>` on 2,000 and on 20,000 JPEGs of 200–640 px.

Writes N JPEGs (`evaluate_memory.write_photos`), hard-links the first 2,000 into a second
folder, and trains a CIFAR ResNet-20 at 32² for one epoch on each (10% held out and validated
at the end; 2 DataLoader workers decode the photos). The run is started in a process group of
its own, which its DataLoader workers join; while it lasts, the group's summed RSS and PSS
(shared pages divided among the processes sharing them, so the workers' copy-on-write pages
count once) are read every 0.2 s, and their peaks kept.

What legitimately grows is the file list: the paths and labels of every image, held once as
Python objects and once as one bytes array per split for the workers. Its size is measured
here with tracemalloc, the same way the run builds it, and the growth beyond it is reported.

    .venv/bin/python benchmarks/train_memory.py --images 20000 --note "quiet machine"
    .venv/bin/python benchmarks/train_memory.py --images 200 --subset 100 --output /tmp/smoke  # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

import _harness
import numpy as np
from evaluate_memory import link_subset, write_photos

from resnet_serve.training import TrainConfig
from resnet_serve.training.splits import load_splits

RESULTS = _harness.RESULTS / "train-memory"


class Peaks:
    """The largest summed RSS and PSS of a process group, read every 0.2 s while it runs."""

    def __init__(self, group: int) -> None:
        self.group, self.rss_kib, self.pss_kib = group, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            memory = _harness.group_memory_kib(self.group)
            self.rss_kib, self.pss_kib = max(self.rss_kib, memory["rss"]), max(self.pss_kib, memory["pss"])
            self._stop.wait(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def file_list_bytes(folder: Path, config: TrainConfig) -> int:
    """What the run's file list takes: the split folders' paths and labels, and each split's bytes array."""
    tracemalloc.start()
    splits = load_splits(folder, config=config)
    arrays = [np.array([os.fsencode(path) for path in split.files]) for split in (splits.train, splits.val)]
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del splits, arrays
    return size


def train_once(folder: Path, output: Path, *, workers: int) -> dict:
    command = [sys.executable, "-m", "resnet_serve", "train", "--data", str(folder), "--arch", "resnet20",
               "--image-size", "32", "--epochs", "1", "--batch-size", "64", "--workers", str(workers),
               "--threads", "2", "--validate-at-end", "-o", str(output), "--json", str(output.with_suffix(".json"))]
    began = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    peaks = Peaks(process.pid)
    _, stderr = process.communicate()
    peaks.stop()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}): {stderr.strip()[-2000:]}")
    trained = json.loads(output.with_suffix(".json").read_text())
    return {
        "images": trained["train_images"] + trained["val_images"],
        "train_images": trained["train_images"],
        "peak_group_rss_mib": round(peaks.rss_kib / 1024, 1),
        "peak_group_pss_mib": round(peaks.pss_kib / 1024, 1),
        "wall_seconds": round(time.perf_counter() - began, 1),
        "images_per_second": round(trained["images_per_second"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--subset", type=int, default=2_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS, help="results path without suffix")
    parser.add_argument("--note", default="", help="recorded as is, e.g. how busy the machine was")
    args = parser.parse_args()
    load = _harness.Load()
    with tempfile.TemporaryDirectory(prefix="train-memory-") as scratch:
        work = Path(scratch)
        began = time.perf_counter()
        folder_bytes = write_photos(work / "photos", args.images)
        generated = time.perf_counter() - began
        link_subset(work / "photos", work / "subset", args.subset)
        runs = []
        for folder in (work / "subset", work / "photos"):
            run = train_once(folder, work / f"{folder.name}.safetensors", workers=args.workers)
            run["file_list_mib"] = round(file_list_bytes(folder, TrainConfig()) / 2**20, 2)
            runs.append(run)
            print(json.dumps(run), flush=True)
    load.stop()
    small, large = runs
    file_list = large["file_list_mib"] - small["file_list_mib"]
    growth = {
        key: {
            "mib": round(large[key] - small[key], 1),
            "beyond_file_list_mib": round(large[key] - small[key] - file_list, 1),
            "beyond_file_list_fraction": round((large[key] - small[key] - file_list) / small[key], 4),
        }
        for key in ("peak_group_pss_mib", "peak_group_rss_mib")
    }
    report = {
        "what": "peak memory of one training epoch of `resnet-serve train --data <ImageFolder>` "
                "(the training process and its DataLoader workers)",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": args.note,
        "folder": {"images": args.images, "sides_px": [200, 640], "format": "JPEG quality 85",
                   "megabytes": round(folder_bytes / 1e6, 1), "generated_seconds": round(generated, 1)},
        "run": f"resnet20 at 32², batch 64, 1 epoch, 10% validated, {args.workers} workers, 2 threads",
        "runs": runs,
        "growth_from_small_to_large": growth,
        "goal": "growth beyond the file list ≤ 10% of the small run's peak",
    }
    _harness.write_results(args.output, report, load=load)
    print(json.dumps(growth, indent=2))


if __name__ == "__main__":
    main()
