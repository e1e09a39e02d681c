"""Real photos as users send them: JPEG files of phone and web sizes, made from scikit-image's photos.

No camera files ship with our dependencies, so each photo is cut to the target's aspect ratio
around its centre, resampled (Lanczos) to the target size and saved as a JPEG at quality 90 with
4:2:0 chroma, as cameras and browsers save them. Files above a photo's own size are upscaled and
so hold less fine detail than a camera's of that size; what decoding costs is set by the pixel
count and the file size, and at quality 90 the coffee photo gives 80 kB at 640×480, 390 kB at
1920×1440 and 1.1 MB at 4032×3024, the sizes of the files in issue 19's table.

    .venv/bin/python benchmarks/phone_photos.py --output photos   # photos/640x480/coffee.jpg, …
    resnet-serve bench --model rn50-image --images photos/4032x3024
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image

# The sizes of issue 19's table (width × height): a web photo, a downscaled phone photo, a 12-MP phone photo.
TABLE_SIZES = {"640x480": (640, 480), "1920x1440": (1920, 1440), "4032x3024": (4032, 3024)}
TABLE_PHOTO = "coffee"
QUALITY = 90
# scikit-image's colour photographs (and one grayscale), at their own sizes 300–1,411 px a side.
SOURCES = ("astronaut", "camera", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry",
           "motorcycle", "retina", "rocket")
# Sizes for the faithfulness measurement: every draft scale (1/1 to 1/8) for a 256 resize, both
# orientations, sides that are not multiples of 8 (where a reduced decode has a partial last
# block), and the sizes of common cameras and screens.
MANY_SIZES = ((300, 400), (640, 480), (500, 750), (1001, 751), (1280, 720), (1080, 1920), (1920, 1440),
              (2000, 1333), (2592, 1944), (3000, 4000), (4032, 3024), (4000, 2250), (5472, 3648))


def source_photo(name: str) -> np.ndarray:
    """One of scikit-image's photos as uint8 H×W×3 (or H×W)."""
    from skimage import data

    if name == "motorcycle":
        return data.stereo_motorcycle()[0]
    return getattr(data, name)()


def photo_jpeg(pixels: np.ndarray, size: tuple[int, int], *, quality: int = QUALITY) -> bytes:
    """``pixels`` cut to ``size``'s aspect ratio around the centre, resampled to ``size`` (width,
    height) and saved as JPEG."""
    image = Image.fromarray(pixels)
    width, height = image.size
    aspect = size[0] / size[1]
    if width / height > aspect:
        cut = round(height * aspect)
        image = image.crop(((width - cut) // 2, 0, (width - cut) // 2 + cut, height))
    else:
        cut = round(width / aspect)
        image = image.crop((0, (height - cut) // 2, width, (height - cut) // 2 + cut))
    buffer = io.BytesIO()
    image.resize(size, Image.Resampling.LANCZOS).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def table_photos() -> dict[str, bytes]:
    """The table's files: size name → the coffee photo as a JPEG of that size."""
    pixels = source_photo(TABLE_PHOTO)
    return {name: photo_jpeg(pixels, size) for name, size in TABLE_SIZES.items()}


def many_photos() -> dict[str, bytes]:
    """Every source photo at its own size and at each of MANY_SIZES: file name → JPEG bytes."""
    photos = {}
    for name in SOURCES:
        pixels = source_photo(name)
        own = (pixels.shape[1], pixels.shape[0])
        for size in (own, *MANY_SIZES):
            photos[f"{name}-{size[0]}x{size[1]}.jpg"] = photo_jpeg(pixels, size)
    return photos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("photos"))
    parser.add_argument("--many", action="store_true",
                        help="also write every source photo at many sizes into OUTPUT/many")
    args = parser.parse_args()
    for name, data in table_photos().items():
        (args.output / name).mkdir(parents=True, exist_ok=True)
        (args.output / name / f"{TABLE_PHOTO}.jpg").write_bytes(data)
        print(f"{args.output / name / TABLE_PHOTO}.jpg: {len(data):,} bytes")
    if args.many:
        (args.output / "many").mkdir(parents=True, exist_ok=True)
        for name, data in many_photos().items():
            (args.output / "many" / name).write_bytes(data)
        print(f"{args.output / 'many'}: {len(list((args.output / 'many').iterdir()))} files")


if __name__ == "__main__":
    main()
