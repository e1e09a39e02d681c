"""How fast and how faithful is decoding a photo for a 224² model? In-process, on one core.

Speed: `Preprocessing.prepare_encoded` (shorter side to 256, centre 224², ImageNet mean/std) on
the JPEGs of issue 19's table (640×480, 1920×1440, 4032×3024; benchmarks/phone_photos.py), for
the code before issue 19 (read from git: BASE_COMMIT), the exact decode and the reduced-scale
decode at several reducing gaps. Median of --repeats runs, the process pinned to one core.

Faithfulness: on every source photo at many sizes (phone_photos.many_photos: 10 real photos ×
14 sizes, 300 px to 20 megapixels), the reduced-scale tensors against the exact ones, which are
PIL's path through torchvision's eval transform (Resize(256), CenterCrop(224), ToTensor,
Normalize; checked against torchvision itself, see docs/image-path.md): max-abs difference in
normalised units and in grey levels, and the top-1 agreement and logit change of a ResNet-50.

No ImageNet weights are reachable offline, and a freshly initialised ResNet-50 answers nearly
the same class with near-tied logits for every image, which would make any agreement
meaningless. So the seeded ResNet-50's BatchNorm statistics are measured on the photos
themselves (the exact tensors, in training mode), so that every layer sees activations of unit
scale that vary with the content, and its head is fit (ridge regression on the pooled features
of the exact tensors) to tell the 10 source photos apart at every size: a content classifier
whose top-1 margins are not near-ties. Its convolutions stay random, so it is more sensitive to
pixel-level changes than a trained network; the report gives its top-1 agreement, its margins
and the logit change the fast decode causes, and the same for the seeded 1000-class head.

    .venv/bin/python benchmarks/image_preprocessing.py --output benchmarks/results/image-preprocessing-2core-cpu
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types
from dataclasses import replace
from pathlib import Path

import _harness
import numpy as np
import torch
from phone_photos import many_photos, table_photos

import resnet_serve.preprocessing as preprocessing_module
from resnet_serve.checkpoints import IMAGENET_PREPROCESSING as IMAGENET
from resnet_serve.models import create_model
from resnet_serve.preprocessing import Preprocessing

# main before issue 19: its preprocessing.py is the "before" of the speed table.
BASE_COMMIT = "13f1e11"
EXACT = replace(IMAGENET, exact_decode=True)
GAPS = (1.0, 1.5, 2.0, 3.0)


def base_preprocessing() -> Preprocessing | None:
    """IMAGENET's preprocessing as BASE_COMMIT's code ran it (None outside a git checkout)."""
    try:
        source = subprocess.run(["git", "show", f"{BASE_COMMIT}:resnet_serve/preprocessing.py"], cwd=_harness.ROOT,
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = sys.modules["base_preprocessing"] = types.ModuleType("base_preprocessing")  # dataclasses look it up
    exec(compile(source, "base_preprocessing.py", "exec"), module.__dict__)  # noqa: S102 - our own history
    fields = {k: v for k, v in IMAGENET.to_dict().items() if k != "exact_decode"}
    return module.Preprocessing.from_dict(fields)


def at_gap(gap: float):
    """A context in which the fast decode uses ``gap`` (the module reads REDUCING_GAP per call)."""
    class Gap:
        def __enter__(self) -> None:
            self.kept, preprocessing_module.REDUCING_GAP = preprocessing_module.REDUCING_GAP, gap

        def __exit__(self, *exc: object) -> None:
            preprocessing_module.REDUCING_GAP = self.kept

    return Gap()


def timed_ms(prepare, data: bytes, repeats: int) -> dict[str, float]:
    """The fastest and the median of ``repeats`` runs: on a shared machine the fastest is the
    least disturbed, the median what a request meets."""
    prepare(data)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        prepare(data)
        times.append(time.perf_counter() - began)
    return {"min": min(times) * 1000, "median": statistics.median(times) * 1000}


def speed(repeats: int) -> list[dict]:
    base = base_preprocessing()
    rows = []
    for size, data in table_photos().items():
        row = {"size": size, "bytes": len(data), "exact_ms": timed_ms(EXACT.prepare_encoded, data, repeats)}
        if base is not None:
            row["before_ms"] = timed_ms(base.prepare_encoded, data, repeats)
        for gap in GAPS:
            with at_gap(gap):
                row[f"gap_{gap:g}_ms"] = timed_ms(IMAGENET.prepare_encoded, data, repeats)
        row["default_ms"] = row[f"gap_{preprocessing_module.REDUCING_GAP:g}_ms"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def calibrated_resnet50(batch: torch.Tensor) -> torch.nn.Module:
    """A seeded ResNet-50 whose BatchNorm statistics are those of ``batch`` (see the module's notes)."""
    torch.manual_seed(0)
    model = create_model("resnet50", num_classes=1000)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the calibration batches
    model.train()
    with torch.no_grad():
        for chunk in batch.split(16):
            model(chunk)
    return model.eval()


def pooled_features(model: torch.nn.Module, batch: np.ndarray) -> torch.Tensor:
    """The 2048 pooled features the head reads, for each image of ``batch``."""
    with torch.no_grad():
        return torch.cat([model.forward_head(model.forward_features(chunk), pre_logits=True)
                          for chunk in torch.from_numpy(batch).split(16)])


def fit_head(features: torch.Tensor, labels: np.ndarray) -> torch.nn.Linear:
    """A head fit by ridge regression to score ``labels`` (+1 for the right class, 0 for the
    others) from ``features``."""
    with torch.no_grad():
        features = features.double()
        classes = int(labels.max()) + 1
        targets = torch.nn.functional.one_hot(torch.from_numpy(labels), classes).double()
        mean = features.mean(0)
        centred = features - mean
        # λ at 1% of the features' average variance: enough to keep the fit from interpolating.
        ridge = 0.01 * centred.pow(2).sum() / len(centred)
        weight = torch.linalg.solve(centred.T @ centred + ridge * torch.eye(centred.shape[1], dtype=torch.float64),
                                    centred.T @ (targets - targets.mean(0)))
        head = torch.nn.Linear(features.shape[1], classes)
        head.weight.copy_(weight.T.float())
        head.bias.copy_((targets.mean(0) - mean @ weight).float())
    return head


def faithfulness() -> dict:
    photos = many_photos()
    names = sorted(photos)
    exact = np.stack([EXACT.prepare_encoded(photos[name], name=name) for name in names])
    fast = {}
    for gap in GAPS:
        with at_gap(gap):
            fast[gap] = np.stack([IMAGENET.prepare_encoded(photos[name], name=name) for name in names])
    grey = np.asarray(IMAGENET.std, np.float32)[:, None, None] * 255
    result: dict = {
        "photos": len(names), "sizes": sorted({name.rsplit("-", 1)[1][:-4] for name in names}, key=megapixels),
        "tensors": [], "models": {},
    }
    for gap, tensors in fast.items():
        difference = np.abs(tensors - exact)
        worst = int(difference.reshape(len(names), -1).max(axis=1).argmax())
        result["tensors"].append({
            "gap": gap, "max_abs": float(difference.max()), "mean_abs": float(difference.mean()),
            "max_abs_grey_levels": float((difference * grey).max()),
            "mean_abs_grey_levels": float((difference * grey).mean()),
            "identical_photos": int((difference.reshape(len(names), -1).max(axis=1) == 0).sum()),
            "worst_photo": names[worst],
        })
        print(json.dumps(result["tensors"][-1]), flush=True)
    sources = sorted({name.rsplit("-", 1)[0] for name in names})
    labels = np.array([sources.index(name.rsplit("-", 1)[0]) for name in names])
    model = calibrated_resnet50(torch.from_numpy(exact))
    # The convolutions run once per tensor set; each head reads the same pooled features.
    features = {None: pooled_features(model, exact), **{gap: pooled_features(model, t) for gap, t in fast.items()}}
    for kind, head in (("seeded 1000-class head", model.fc),
                       (f"head fit to the {len(sources)} source photos", fit_head(features[None], labels))):
        with torch.no_grad():
            reference = head(features[None]).numpy()
        ranked = np.sort(reference, axis=1)
        margins = ranked[:, -1] - ranked[:, -2]
        rows = []
        for gap in fast:
            with torch.no_grad():
                logits = head(features[gap]).numpy()
            change = np.abs(logits - reference).max(axis=1)
            rows.append({
                "gap": gap, "top1_agreement": float((logits.argmax(axis=1) == reference.argmax(axis=1)).mean()),
                "max_logit_change": float(change.max()), "median_logit_change": float(np.median(change)),
                "photos_with_margin_below_twice_their_change": int((margins < 2 * change).sum()),
            })
        result["models"][kind] = {
            "distinct_top1_classes": int(len(set(reference.argmax(axis=1).tolist()))),
            "top1_is_the_source_photo": float((reference.argmax(axis=1) == labels).mean()),
            "median_top1_margin": float(np.median(margins)), "min_top1_margin": float(margins.min()),
            "gaps": rows,
        }
        print(json.dumps({kind: result["models"][kind]}), flush=True)
    return result


def megapixels(size: str) -> float:
    width, height = size.split("x")
    return int(width) * int(height) / 1e6


def markdown(result: dict) -> str:
    default = result["reducing_gap"]
    lines = [
        "# Preparing a photo for a 224² model: speed and faithfulness of the reduced-scale decode", "",
        f"Machine: {result['machine']['description']}. Load average "
        f"{result['machine']['load_average']['before'][0]:.2f} before, "
        f"{result['machine']['load_average']['after'][0]:.2f} after (2 cores; other work shared the machine when it "
        "was above 1). One core (the process pinned); fastest (median) of "
        f"{result['repeats']} runs. Default reducing gap: {default:g}.", "",
        "## Speed of `prepare_encoded`, ms per image (shorter side 256, centre 224²)", "",
        "| JPEG | bytes | before issue 19 | exact | " + " | ".join(f"gap {g:g}" for g in GAPS) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(GAPS),
    ]
    def ms(found: dict | None) -> str:
        return "–" if found is None else f"{found['min']:.1f} ({found['median']:.1f})"

    for row in result["speed"]:
        lines.append(f"| {row['size']} | {row['bytes']:,} | {ms(row.get('before_ms'))} | {ms(row['exact_ms'])} | "
                     + " | ".join(ms(row[f"gap_{g:g}_ms"]) for g in GAPS) + " |")
    faith = result["faithfulness"]
    lines += [
        "", f"## Faithfulness: {faith['photos']} photos, {len(faith['sizes'])} sizes "
        f"({megapixels(faith['sizes'][0]):.2f} to {megapixels(faith['sizes'][-1]):.1f} megapixels), against the "
        "exact decode (= torchvision's eval transform on a PIL image)", "",
        "| gap | max-abs (normalised) | max-abs (grey levels) | mean-abs (grey levels) | photos identical "
        "| worst photo |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for row in faith["tensors"]:
        lines.append(f"| {row['gap']:g} | {row['max_abs']:.3f} | {row['max_abs_grey_levels']:.0f} | "
                     f"{row['mean_abs_grey_levels']:.2f} | {row['identical_photos']} | {row['worst_photo']} |")
    for kind, found in faith["models"].items():
        lines += [
            "", f"ResNet-50, {kind} (BatchNorm statistics measured on the photos): {found['distinct_top1_classes']} "
            f"distinct top-1 classes, top-1 = the source photo for {found['top1_is_the_source_photo']:.0%}; top-1 "
            f"margin median {found['median_top1_margin']:.3f}, min {found['min_top1_margin']:.4f}.", "",
            "| gap | top-1 agreement | max logit change | median logit change "
            "| photos whose margin < 2× their change |",
            "|---:|---:|---:|---:|---:|",
        ]
        for row in found["gaps"]:
            lines.append(f"| {row['gap']:g} | {row['top1_agreement']:.2%} | {row['max_logit_change']:.4f} | "
                         f"{row['median_logit_change']:.4f} | {row['photos_with_margin_below_twice_their_change']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=_harness.RESULTS / "image-preprocessing")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--core", type=int, default=0, help="the core to pin the process to")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.core})
    torch.set_num_threads(1)
    load, began = _harness.Load(), time.time()
    report = {"what": "speed and faithfulness of preparing a photo for a 224² model, in-process on one core",
              "date": time.strftime("%Y-%m-%d"), "core": args.core, "repeats": args.repeats,
              "reducing_gap": preprocessing_module.REDUCING_GAP, "base_commit": BASE_COMMIT,
              "speed": speed(args.repeats), "faithfulness": faithfulness()}
    load.stop()
    report["seconds"] = time.time() - began
    print(markdown(_harness.write_results(args.output, report, load=load, markdown=markdown)))


if __name__ == "__main__":
    main()
