"""Training speed on JPEG photos: `train`'s images/s against a minimal hand-written torch loop
over the same DataLoader, model, batch and threads, and the input pipeline's own images/s
with 1 and 2 DataLoader workers.

Writes N JPEGs (sides 200–640 px, `evaluate_memory.write_photos`) into a temporary ImageFolder
(or reads --photos), then, in this process:

1. the input pipeline alone: the second epoch of `training.data.train_batches` (decode,
   random-resized crop, flip, normalise, in worker processes), batches consumed and dropped,
   with 1 and 2 workers;
2. `train_on_folder` for --epochs epochs: images/s of the epochs after the first (the first
   starts the workers and warms the allocator), as the run's history records them;
3. the same DataLoader, the same freshly built model and optimizer, cross-entropy in the
   plainest loop (no schedule, no metrics, no reporter), timed over the same epochs.

(2) and (3) run --repeats times each, alternately, and each keeps its best run: on a shared
machine another process's load hits whichever runs at that moment.

The ratio (2) / (3) is what `train`'s bookkeeping costs; the goal is at least 0.95. Writes
<output>.json and .md (default benchmarks/results/train-speed-2core-cpu) with the machine entry.

    .venv/bin/python benchmarks/train_speed.py            # ResNet-18 at 112², batch 32, 288 photos
    .venv/bin/python benchmarks/train_speed.py --images 40 --arch resnet20 --image-size 32 --batch-size 8 \
        --epochs 2 --repeats 1 --output /tmp/train-speed-smoke   # a smoke run
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import _harness
import numpy as np
import torch
import torch.nn.functional as F
from evaluate_memory import write_photos

from resnet_serve.progress import SilentReporter
from resnet_serve.training import TrainConfig, make_optimizer, train_on_folder
from resnet_serve.training.distributed import World
from resnet_serve.training.loaders import train_batches
from resnet_serve.training.preprocessing import run_preprocessing
from resnet_serve.training.splits import load_splits
from resnet_serve.training.weights import build_model


def pipeline_speed(photos: Path, config: TrainConfig) -> float:
    """Images/s of the DataLoader alone over its second epoch (the first starts the workers)."""
    splits = load_splits(photos, config=config)
    preprocessing = run_preprocessing(config, splits.train, init=None)
    batches = train_batches(splits.train, config=config, preprocessing=preprocessing, world=World(),
                            device=torch.device("cpu"))
    for epoch in (1, 2):
        batches.set_epoch(epoch)
        started, images = time.perf_counter(), 0
        for _, labels in batches:
            images += len(labels)
    return images / (time.perf_counter() - started)


class EpochClock(SilentReporter):
    """A Reporter that notes the wall time and this process's CPU time (all its threads; the
    DataLoader workers are other processes) of each epoch, from its start to its finish."""

    def __init__(self) -> None:
        self.epochs: list[tuple[float, float]] = []
        self._began = (0.0, 0.0)

    def start(self, description: str, total: int | None = None) -> None:
        self._began = (time.perf_counter(), time.process_time())

    def finish(self) -> None:
        self.epochs.append((time.perf_counter() - self._began[0], time.process_time() - self._began[1]))


def hand_written_loop(photos: Path, config: TrainConfig, *, epochs: int, clock: EpochClock) -> int:
    """The plainest training loop over `train`'s own DataLoader; returns the images of an epoch."""
    torch.set_num_threads(config.num_threads or torch.get_num_threads())
    splits = load_splits(photos, config=config)
    preprocessing = run_preprocessing(config, splits.train, init=None)
    batches = train_batches(splits.train, config=config, preprocessing=preprocessing, world=World(),
                            device=torch.device("cpu"))
    model, _ = build_model(config, class_names=splits.train.class_names, in_channels=3, init_from=None)
    model = model.to(memory_format=torch.channels_last).train()
    # The optimizer `train` uses (Nesterov momentum, decay on weights only) without its schedule.
    optimizer = make_optimizer(model, config)
    for epoch in range(1, epochs + 1):
        batches.set_epoch(epoch)
        clock.start(f"epoch {epoch}")
        for inputs, labels in batches:
            loss = F.cross_entropy(model(inputs), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        clock.finish()
    return len(batches) * config.batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, help="an ImageFolder of photos (default: write --images JPEGs)")
    parser.add_argument("--images", type=int, default=288, help="JPEGs to write (10%% validate)")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="the first is a warm-up, not counted")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, alternated; the best is kept")
    parser.add_argument("--output", type=Path, default=_harness.RESULTS / "train-speed-2core-cpu",
                        help="results path without suffix")
    args = parser.parse_args()
    config = TrainConfig(architecture=args.arch, image_size=args.image_size, batch_size=args.batch_size,
                         workers=args.workers, num_threads=args.threads, epochs=args.epochs, lr=0.05,
                         evaluate_each_epoch=False)
    load = _harness.Load()
    with tempfile.TemporaryDirectory(prefix="train-speed-") as scratch:
        photos = args.photos
        if photos is None:
            photos = Path(scratch) / "photos"
            write_photos(photos, args.images)
        pipeline = {
            f"{workers} worker{'s' * (workers > 1)}": round(pipeline_speed(
                photos, TrainConfig(**{**config.to_dict(), "workers": workers})), 1)
            for workers in (1, 2)
        }
        # Alternated, so that a change in how busy a shared machine is hits both alike.
        clocks: dict[str, list[EpochClock]] = {"train": [], "loop": []}
        for _ in range(args.repeats):
            clocks["loop"].append(EpochClock())
            images = hand_written_loop(photos, config, epochs=args.epochs, clock=clocks["loop"][-1])
            clocks["train"].append(EpochClock())
            # `pad` is the in-memory sets' augmentation; train_on_folder refuses it for photos.
            result = train_on_folder(output=Path(scratch) / "speed.safetensors", data_dir=photos,
                                     reporter=clocks["train"][-1], **{**config.to_dict(), "pad": None})
    # The first epoch of each run starts the workers and warms the allocator: not counted. Each
    # keeps its fastest epoch (the least disturbed), and the median CPU time of its epochs.
    counted = {name: [epoch for clock in done for epoch in clock.epochs[1:]] for name, done in clocks.items()}
    speed = {name: images / min(wall for wall, _ in epochs) for name, epochs in counted.items()}
    cpu_ms = {name: 1000 * float(np.median([cpu for _, cpu in epochs])) / images for name, epochs in counted.items()}
    load.stop()
    report = {
        "what": "training images/s on JPEG photos: `train` vs a minimal torch loop over the same DataLoader, "
                "model, batch and threads; and the input pipeline alone",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "photos": {"images": result.train_images + result.val_images, "training": result.train_images,
                   "sides_px": [200, 640], "format": "JPEG quality 85"},
        "config": {"architecture": args.arch, "image_size": args.image_size, "batch_size": args.batch_size,
                   "threads": args.threads, "workers": args.workers, "epochs": args.epochs,
                   "counted_epochs": args.epochs - 1, "runs_each": args.repeats,
                   "kept": "images/s of the fastest counted epoch; CPU time: the median"},
        "input_pipeline_images_per_second": pipeline,
        "train_images_per_second": round(speed["train"], 2),
        "hand_written_loop_images_per_second": round(speed["loop"], 2),
        "ratio_train_to_loop": round(speed["train"] / speed["loop"], 3),
        "cpu_ms_per_image": {name: round(value, 2) for name, value in cpu_ms.items()},
        "ratio_by_cpu_time": round(cpu_ms["loop"] / cpu_ms["train"], 3),
        "epochs_wall_and_cpu_seconds": {
            name: [[[round(wall, 2), round(cpu, 2)] for wall, cpu in clock.epochs] for clock in done]
            for name, done in clocks.items()
        },
    }
    record = _harness.write_results(args.output, report, load=load, markdown=_markdown)
    print(_markdown(record))


def _markdown(record: dict) -> str:
    config, machine, cpu_ms = record["config"], record["machine"], record["cpu_ms_per_image"]
    train_ips, loop_ips = record["train_images_per_second"], record["hand_written_loop_images_per_second"]
    lines = [
        f"# Training speed ({config['architecture']}, {config['image_size']}², batch {config['batch_size']}, "
        f"{config['threads']} threads, {config['workers']} workers)",
        "",
        f"{record['date']}; {machine['description']}; load average {machine['load_average']}.",
        "",
        f"Fastest of epochs 2–{config['epochs']} of {config['runs_each']} alternated runs each; CPU time of the "
        "training process (its DataLoader workers are the same in both), median.",
        "",
        "| what | images/s | CPU ms per image |",
        "|---|---|---|",
        f"| `train` | {train_ips:.1f} | {cpu_ms['train']:.1f} |",
        f"| hand-written torch loop, same DataLoader and model | {loop_ips:.1f} | {cpu_ms['loop']:.1f} |",
        f"| ratio `train` / loop | **{record['ratio_train_to_loop']:.3f}** | **{record['ratio_by_cpu_time']:.3f}** |",
        *(f"| input pipeline alone, {name} | {value:.1f} | |"
          for name, value in record["input_pipeline_images_per_second"].items()),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
