"""Is the exact decode torchvision's ImageNet eval transform? A check to run once, beside real torchvision.

torchvision does not import beside the project's CPU torch, so this runs in a throw-away
virtualenv that has torch, torchvision and Pillow (and numpy < 2), on the project's source:

    python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch==2.14.1 torchvision==0.29.1 "numpy<2" pillow
    .venv/bin/python benchmarks/phone_photos.py --output /tmp/photos --many
    PYTHONPATH=. /tmp/tv/bin/python benchmarks/torchvision_reference.py /tmp/photos/many /tmp/photos/*x* \\
        --output benchmarks/results/torchvision-reference

It compares, photo by photo, `Compose([Resize(256), CenterCrop(224), ToTensor(), Normalize(...)])`
of `Image.open(f).convert("RGB")` with `Preprocessing.prepare_encoded` (resize 256, crop 224,
ImageNet mean and std), exact and reduced-scale, and writes the max-abs differences.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from dataclasses import replace
from pathlib import Path

import _harness


def main() -> None:
    import numpy as np
    import torch
    import torchvision
    from PIL import Image
    from torchvision import transforms

    from resnet_serve.preprocessing import Preprocessing

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+", help="folders of JPEG files")
    parser.add_argument("--output", type=Path, default=_harness.RESULTS / "torchvision-reference")
    args = parser.parse_args()
    load = _harness.Load()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    fast = Preprocessing(channels=3, height=224, width=224, mean=mean, std=std, resize=256)
    exact = replace(fast, exact_decode=True)
    reference = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                    transforms.Normalize(mean, std)])
    images = []
    for path in sorted(p for folder in args.folders for p in folder.glob("*.jpg")):
        data = path.read_bytes()
        expected = reference(Image.open(io.BytesIO(data)).convert("RGB")).numpy()
        images.append({"file": str(path), "size": list(Image.open(io.BytesIO(data)).size),
                       "exact_max_abs": float(np.abs(exact.prepare_encoded(data) - expected).max()),
                       "reduced_scale_max_abs": float(np.abs(fast.prepare_encoded(data) - expected).max())})
    load.stop()
    result = {"what": "the exact and reduced-scale decodes against torchvision's ImageNet eval transform",
              "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "torchvision": torchvision.__version__,
              "photos": len(images),
              "exact_max_abs": max(i["exact_max_abs"] for i in images),
              "reduced_scale_max_abs": max(i["reduced_scale_max_abs"] for i in images), "images": images}
    _harness.write_results(args.output, result, load=load)
    print(json.dumps({k: v for k, v in result.items() if k != "images"}))


if __name__ == "__main__":
    main()
