"""The serving contract: how an image file or a pixel array becomes a model input.

One ``Preprocessing`` definition (channels, size, optional shorter-side resize before a centre
crop, interpolation, mean and std) is stored with every checkpoint and in every Triton model
config, and training, export verification, the dataset readers and the clients all prepare
images through it, so every stage feeds the model identically.

Files are decoded one of two ways (``Preprocessing.exact_decode``). The exact way decodes every
pixel, then resizes with Pillow's filter: PIL's path through torchvision's evaluation transform.
The default decodes a large JPEG at a reduced scale in the DCT domain (``Image.draft``: 1/2, 1/4
or 1/8) and resizes with a reducing gap, as ``Image.thumbnail`` does, so that an image is never
resampled from more than ``REDUCING_GAP`` times the size it is resized to: a 12-megapixel photo
costs a tenth of its full decode, and its tensor differs from the exact one by a few grey levels
(docs/image-path.md has the measurements).

This module imports only the standard library, numpy, Pillow and ``resnet_serve.errors``
(which imports nothing): the Triton python-backend model that decodes images on the server
carries a verbatim copy of it, so server and client decode with exactly the same code. A unit
test holds it to that.
"""

from __future__ import annotations

import io
import math
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from resnet_serve.errors import DatasetError, ImageError

__all__ = ["MAX_IMAGE_PIXELS", "MAX_IMAGE_SIDE", "REDUCING_GAP", "Preprocessing", "decode_image", "resize_and_crop"]

# The most pixels an image may declare in its header; larger ones are refused before their
# pixels are decoded, so a small file that expands to gigabytes (a decompression bomb) costs
# nothing. 64 megapixels (e.g. 9,248×6,936) is above what cameras write by default, and below
# Pillow's own limit (about 89.5 megapixels), which only warns.
MAX_IMAGE_PIXELS = 64_000_000
# The largest model input side (height, width, resize) a preprocessing, a checkpoint header or an
# ONNX input may declare. Arrays are allocated from these numbers (256 verification images of
# 20,000² would take 400 GB), so a few bytes of a hostile header must not choose them. ResNets
# are trained at 224–600 px; 4,096 leaves room for any real model.
MAX_IMAGE_SIDE = 4096

# What transparent pixels are composited over: white, as image viewers and browsers show them.
# The colour stored under a fully transparent pixel is arbitrary (often black, sometimes noise).
_ALPHA_BACKGROUND = (255, 255, 255, 255)
_ALPHA_MODES = frozenset({"LA", "PA", "RGBA", "RGBa"})
# Pillow opens 16-bit PNG, TIFF and PGM files as one of these; "I" (32-bit) holds the 16-bit
# range too, as Pillow rescales PGM files with a smaller maximum (e.g. 12-bit) to 0..65535.
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})

_INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
_PIL_MODES = {1: "L", 3: "RGB"}
# The fast decode reads a JPEG at the smallest DCT scale, and box-reduces any other image by the
# largest whole factor, that leaves at least this many times the resize target for the filter.
# Chosen by benchmarks/image_preprocessing.py: at 2 a 12-megapixel photo is read at 1/4 scale
# (1008×756 for a 341×256 target) and the tensors stay within a few grey levels of the exact ones;
# at 1 (1/8 scale) they move by up to 12 levels for a third less time, at 3 (1/2 scale) by 1 for
# 1.7× the time.
REDUCING_GAP = 2.0
# EXIF orientation → the transposition that makes the image upright, as ImageOps.exif_transpose
# has it; 5 to 8 swap width and height.
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPPING = frozenset({Image.Transpose.TRANSPOSE, Image.Transpose.ROTATE_270, Image.Transpose.TRANSVERSE,
                       Image.Transpose.ROTATE_90})
# (stored width, stored height, transposition to upright) → the smallest size to decode at.
_DraftSize = Callable[[int, int, "Image.Transpose | None"], tuple[int, int]]
# Statistics are rounded so configs stay readable; 1e-4 is far below one grey level (1/255).
_STAT_DECIMALS = 4
# Images counted at a time when measuring statistics (a few MB of temporaries at 32×32×3).
_STAT_CHUNK = 1024


def decode_image(
    data: bytes, *, channels: int, name: str = "image", reduce_to: tuple[int, int] | None = None
) -> Image.Image:
    """Decode an encoded image (PNG, JPEG or any format Pillow reads) into 8-bit grayscale
    (``channels`` 1) or RGB (``channels`` 3), upright as its EXIF orientation says.

    Other modes are converted by what their values mean: 16-bit and 32-bit integer images
    (``I;16``, ``I``) are scaled from 0..65535, floating-point ones (``F``) from 0..1, both
    rounded rather than clipped at 255; transparent images (``RGBA``, ``LA``, ``PA``, palettes
    or grayscale with a transparent colour) are composited over white; ``CMYK``, ``YCbCr``,
    palettes and bilevel images are converted by Pillow; RGB becomes grayscale as ITU-R 601-2
    luma. Multi-frame files give their first frame.

    Args:
        data: the file's bytes.
        channels: 1 or 3.
        name: how errors name the image (e.g. its file name).
        reduce_to: (width, height): a JPEG may decode at 1/2, 1/4 or 1/8 scale, the smallest
            still at least this size (Pillow's ``draft``); other formats decode at full size.

    Raises:
        ImageError: not a readable image, an image of more than ``MAX_IMAGE_PIXELS`` pixels
            (checked from the header, before decoding), or a mode that cannot be converted.
    """
    draft_size = None if reduce_to is None else (lambda width, height, upright: reduce_to)
    decoded = _decode(data, channels=channels, name=name, draft_size=draft_size)
    return decoded.pixels if decoded.upright is None else decoded.pixels.transpose(decoded.upright)


class _Decoded(NamedTuple):
    # In the mode asked for, as stored (not yet upright); smaller than stored_size where a JPEG
    # was decoded at a reduced scale.
    pixels: Image.Image
    stored_size: tuple[int, int]
    # The part of ``pixels`` the whole image covers after a reduced-scale decode (its last row
    # and column may be partly outside it), else None.
    region: tuple[float, float, float, float] | None
    # The transposition the EXIF orientation asks for; None when the pixels are upright.
    upright: Image.Transpose | None


def _decode(data: bytes, *, channels: int, name: str, draft_size: _DraftSize | None = None) -> _Decoded:
    """Decode ``data`` as :func:`decode_image` does, but leave it as stored. With ``draft_size``
    (stored width, height, upright → the smallest size wanted) a JPEG is decoded at the smallest
    DCT scale that is at least that size."""
    mode = _PIL_MODES[channels]
    try:
        # Image.open reads only the header; pixels are decoded by load().
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageError(
                    f"{name}: {width}×{height} is {width * height:,} pixels, more than the {MAX_IMAGE_PIXELS:,} "
                    "an image may have; refused before decoding"
                )
            # Cameras store rotation as an EXIF tag rather than rotating the pixels.
            upright = _UPRIGHT.get(opened.getexif().get(ExifTags.Base.Orientation, 1))
            # Only JPEG decodes at a reduced scale; draft() is a no-op returning None elsewhere.
            drafted = None if draft_size is None else opened.draft(None, draft_size(width, height, upright))
            opened.load()
            pil = _to_eight_bit(opened)
            try:
                converted = pil.convert(mode)
            except ValueError as exc:
                raise ImageError(f"{name}: cannot convert a {pil.mode} image to {mode} ({exc})") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(
            f"{name}: more than the {MAX_IMAGE_PIXELS:,} pixels an image may have; refused before decoding ({exc})"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{name}: not a readable image ({exc})") from None
    return _Decoded(converted, (width, height), None if drafted is None else drafted[1], upright)


def _to_eight_bit(pil: Image.Image) -> Image.Image:
    """Bring modes whose values Pillow's ``convert`` would clip at 255, or whose alpha it would
    drop, to an 8-bit mode with the same appearance."""
    if pil.mode in _SIXTEEN_BIT_MODES:
        # value / 257, rounded, in integers (65535 → 255); 4 bytes a pixel even for 64 megapixels.
        values = np.clip(np.asarray(pil), 0, 65535).astype(np.uint32)
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))
    if pil.mode == "F":
        values = np.clip(np.nan_to_num(np.asarray(pil, dtype=np.float32)), 0.0, 1.0) * 255.0
        return Image.fromarray(np.rint(values).astype(np.uint8))
    if pil.mode in _ALPHA_MODES or "transparency" in pil.info:
        rgba = pil.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _ALPHA_BACKGROUND), rgba)
    return pil


def resize_and_crop(
    pil: Image.Image,
    *,
    resize: int | None,
    crop: tuple[int, int] | None,
    resample: Image.Resampling = Image.Resampling.BILINEAR,
    name: str = "image",
) -> Image.Image:
    """Shorter side to ``resize``, then the centre ``crop`` (height, width): the ImageNet
    evaluation transform, with torchvision's rounding so accuracies stay comparable.

    Raises:
        DatasetError: the image is smaller than the crop, or so elongated that its resized copy
            would have more than ``MAX_IMAGE_PIXELS`` pixels.
    """
    if resize is not None:
        size = _shorter_side_to(resize, pil.size, name=name)
        if size != pil.size:
            pil = pil.resize(size, resample)
    if crop is not None:
        crop_height, crop_width = crop
        if crop_height > pil.height or crop_width > pil.width:
            raise DatasetError(
                f"{name}: {pil.width}×{pil.height} is smaller than the {crop_width}×{crop_height} crop; "
                "resize it to at least the crop size first"
            )
        top = int(round((pil.height - crop_height) / 2.0))
        left = int(round((pil.width - crop_width) / 2.0))
        pil = pil.crop((left, top, left + crop_width, top + crop_height))
    return pil


def _shorter_side_to(resize: int, size: tuple[int, int], *, name: str) -> tuple[int, int]:
    """width×height with the shorter side scaled to ``resize``, rounded as torchvision rounds."""
    width, height = size
    if width <= height:
        resized = (resize, int(resize * height / width))
    else:
        resized = (int(resize * width / height), resize)
    if resized[0] * resized[1] > MAX_IMAGE_PIXELS:
        # A 64-megapixel strip one pixel high would become terabytes at its shorter side's new size.
        raise DatasetError(
            f"{name}: {width}×{height} resized to a shorter side of {resize} would be {resized[0]}×{resized[1]}, "
            f"more than the {MAX_IMAGE_PIXELS:,} pixels an image may have"
        )
    return resized


class _HoldsImages(Protocol):
    """Anything with uint8 ``images`` N×H×W or N×H×W×C, such as an in-memory dataset."""

    images: np.ndarray


@dataclass(frozen=True)
class Preprocessing:
    """How raw pixels become a model input: channel mode, size, then (x/255 - mean) / std.

    ``mean`` and ``std`` are per channel, on the 0..1 scale. Images are resized straight to
    height×width, or, when ``resize`` is set, their shorter side is resized to it and the centre
    height×width cropped (the ImageNet evaluation transform, e.g. resize 256 → crop 224), so
    images of any size and aspect ratio fit. ``to_dict``/``from_dict`` is the JSON form stored
    in checkpoints and Triton model configs.

    Encoded files are decoded at a reduced scale where they are much larger than the resize
    target (see the module's notes), unless ``exact_decode`` is set: then every pixel is decoded
    and resized, exactly as torchvision's evaluation transform does on a PIL image. Pixel arrays
    (:meth:`normalize`) are always resized exactly.
    """

    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    resize: int | None = None
    exact_decode: bool = False

    def __post_init__(self) -> None:
        # Lists from JSON become tuples so instances stay hashable and comparable.
        for key in ("mean", "std"):
            values = getattr(self, key)
            try:
                object.__setattr__(self, key, tuple(float(v) for v in values))
            except (TypeError, ValueError, OverflowError):
                shown = reprlib.repr(values)
                raise DatasetError(f"preprocessing {key} must be a list of numbers, got {shown}") from None
        for key in ("channels", "height", "width", "resize"):
            value = getattr(self, key)
            if key == "resize" and value is None:
                continue
            # bool is an int in Python: a JSON `true` must not become a size of 1.
            if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
                raise DatasetError(f"preprocessing {key} must be an integer, got {reprlib.repr(value)}")
            object.__setattr__(self, key, int(value))
        if self.channels not in _PIL_MODES:
            raise DatasetError(f"preprocessing channels must be 1 or 3, got {self.channels}")
        if self.height < 1 or self.width < 1:
            raise DatasetError(f"preprocessing size must be positive, got {self.height}×{self.width}")
        largest = max(self.height, self.width, self.resize or 0)
        if largest > MAX_IMAGE_SIDE:
            raise DatasetError(
                f"preprocessing size {self.height}×{self.width}"
                + (f" (resize {self.resize})" if self.resize is not None else "")
                + f" is over the {MAX_IMAGE_SIDE} pixels a side may have"
            )
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise DatasetError(
                f"preprocessing needs {self.channels} mean and std values, "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if not all(math.isfinite(v) for v in self.mean) or not all(
            math.isfinite(v) and v > 0 for v in self.std
        ):
            raise DatasetError(f"preprocessing mean must be finite and std positive, got {self.mean}, {self.std}")
        if not isinstance(self.exact_decode, (bool, np.bool_)):
            shown = reprlib.repr(self.exact_decode)
            raise DatasetError(f"preprocessing exact_decode must be true or false, got {shown}")
        object.__setattr__(self, "exact_decode", bool(self.exact_decode))
        if not isinstance(self.interpolation, str) or self.interpolation not in _INTERPOLATIONS:
            raise DatasetError(
                f"unknown interpolation {reprlib.repr(self.interpolation)}; choose one of: {', '.join(_INTERPOLATIONS)}"
            )
        # The shorter side must cover the crop, or the centre crop would run off the image.
        if self.resize is not None and self.resize < max(self.height, self.width):
            raise DatasetError(
                f"preprocessing resize must be at least the {self.height}×{self.width} crop, got {self.resize}"
            )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The model input of one image, C×H×W."""
        return (self.channels, self.height, self.width)

    @classmethod
    def for_dataset(cls, dataset: _HoldsImages, *, interpolation: str = "bilinear") -> Preprocessing:
        """The dataset's native size and channels, with mean and std measured on its images."""
        images = dataset.images if dataset.images.ndim == 4 else dataset.images[..., None]
        if len(images) == 0:
            raise DatasetError("cannot measure mean and std of an empty dataset")
        # Exact, from a histogram of the 256 levels per channel, counted a slice at a time: a
        # float64 copy of the pixels (8× the images) is never made, and no accumulator drifts.
        counts = np.zeros((images.shape[-1], 256), np.int64)
        for start in range(0, len(images), _STAT_CHUNK):
            chunk = images[start : start + _STAT_CHUNK]
            for c in range(images.shape[-1]):
                counts[c] += np.bincount(chunk[..., c].ravel(), minlength=256)
        levels = np.arange(256, dtype=np.float64)
        mean = counts @ levels / counts.sum(axis=1)
        std = np.sqrt(counts @ levels**2 / counts.sum(axis=1) - mean**2)
        mean, std = mean / 255.0, std / 255.0
        return cls(
            channels=images.shape[-1],
            height=images.shape[1],
            width=images.shape[2],
            mean=tuple(round(float(v), _STAT_DECIMALS) for v in mean),
            std=tuple(round(float(v), _STAT_DECIMALS) for v in std),
            interpolation=interpolation,
        )

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }
        # Omitted when unset, so configs written before these fields existed stay byte-identical.
        if self.resize is not None:
            data["resize"] = self.resize
        if self.exact_decode:
            data["exact_decode"] = True
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Preprocessing:
        """Rebuild from ``to_dict()``'s output (e.g. parsed JSON), checking every field."""
        if not isinstance(data, dict):
            raise DatasetError(f"preprocessing must be a mapping, got {type(data).__name__}")
        required = {"channels", "height", "width", "mean", "std"}
        missing = sorted(required - data.keys())
        unknown = sorted(map(str, data.keys() - required - {"interpolation", "resize", "exact_decode"}))
        if missing or unknown:
            problems = [f"missing {', '.join(missing)}"] if missing else []
            shown = ", ".join(reprlib.repr(key).strip("'") for key in unknown[:5]) + (", …" if len(unknown) > 5 else "")
            problems += [f"unknown {shown}"] if unknown else []
            raise DatasetError(f"invalid preprocessing: {'; '.join(problems)}")
        for key in ("mean", "std"):
            values = data[key]
            if not isinstance(values, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
            ):
                raise DatasetError(f"preprocessing {key} must be a list of numbers, got {reprlib.repr(values)}")
        return cls(
            channels=data["channels"],
            height=data["height"],
            width=data["width"],
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
            interpolation=data.get("interpolation", "bilinear"),
            resize=data.get("resize"),
            exact_decode=data.get("exact_decode", False),
        )

    def _fit(self, pil: Image.Image, *, name: str) -> np.ndarray:
        """An image already in this channel mode → uint8 H×W or H×W×C pixels of the input size."""
        resample = _INTERPOLATIONS[self.interpolation]
        if self.resize is not None:
            pil = resize_and_crop(pil, resize=self.resize, crop=(self.height, self.width), resample=resample, name=name)
        elif pil.size != (self.width, self.height):
            pil = pil.resize((self.width, self.height), resample)
        return np.asarray(pil)

    @cached_property
    def _scale_and_shift(self) -> tuple[np.ndarray, np.ndarray]:
        # (x/255 - mean)/std as x·scale - shift, worked out once in float64 and kept in float32, so
        # the per-image work is one float32 multiply-subtract with no float64 temporaries.
        std = np.asarray(self.std, np.float64)
        return (1.0 / (255.0 * std)).astype(np.float32), (np.asarray(self.mean, np.float64) / std).astype(np.float32)

    def standardize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels already of the input size (N×H×W or N×H×W×C) → contiguous float32
        N×C×H×W: (x/255 - mean) / std per channel."""
        nhwc = pixels.reshape(len(pixels), self.height, self.width, self.channels)
        scale, shift = self._scale_and_shift
        out = np.empty((len(pixels), self.channels, self.height, self.width), np.float32)
        for c in range(self.channels):
            np.multiply(nhwc[..., c], scale[c], out=out[:, c], dtype=np.float32)
            out[:, c] -= shift[c]
        return out

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """uint8 N×H×W or N×H×W×C (C = 1 or 3) → contiguous float32 N×C×H×W model input.

        Images of another size or channel count are converted and resized first, through
        Pillow, exactly as decoded files are.
        """
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or (
            images.ndim == 4 and images.shape[3] not in (1, 3)
        ):
            raise ImageError(
                f"expected uint8 images N×H×W or N×H×W×C with C = 1 or 3, "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        channels = 1 if images.ndim == 3 else images.shape[3]
        # With resize set even an image of the crop size is scaled first, as torchvision does.
        if self.resize is not None or images.shape[1:3] != (self.height, self.width) or channels != self.channels:
            mode = _PIL_MODES[self.channels]
            fitted = [
                self._fit(Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
                          .convert(mode), name="image")
                for image in images
            ]
            images = np.stack(fitted) if fitted else np.zeros((0, self.height, self.width, self.channels), np.uint8)
        return self.standardize(images)

    def prepare_encoded(self, data: bytes, *, name: str = "image") -> np.ndarray:
        """An encoded image's bytes (PNG, JPEG, any format Pillow reads, of any size) → the
        C×H×W float32 model input: :meth:`prepare_pixels`, then :meth:`standardize`.

        Raises:
            ImageError: see :func:`decode_image`.
        """
        return self.standardize(self.prepare_pixels(data, name=name)[None])[0]

    def prepare_pixels(self, data: bytes, *, name: str = "image") -> np.ndarray:
        """An encoded image's bytes → uint8 pixels of the input size (H×W, or H×W×3): decoded by
        :func:`decode_image`'s rules (pixel limit, modes, EXIF orientation), then resized (and
        centre-cropped). With ``exact_decode`` every pixel is decoded and resized; otherwise a
        JPEG is decoded at a reduced DCT scale and any image resized with ``REDUCING_GAP``.

        Raises:
            ImageError: see :func:`decode_image`.
        """
        if self.exact_decode:
            return self._fit(decode_image(data, channels=self.channels, name=name), name=name)

        def draft_size(width: int, height: int, upright: Image.Transpose | None) -> tuple[int, int]:
            target = self._stored_target((width, height), upright, name=name)
            return int(target[0] * REDUCING_GAP), int(target[1] * REDUCING_GAP)

        decoded = _decode(data, channels=self.channels, name=name, draft_size=draft_size)
        pil, region = decoded.pixels, decoded.region
        # Resized as stored and turned upright after: the region is in stored coordinates, and
        # the transposition then moves a few thousand pixels instead of millions.
        target = self._stored_target(decoded.stored_size, decoded.upright, name=name)
        if pil.size != target or (region is not None and region != (0, 0, *pil.size)):
            pil = pil.resize(target, _INTERPOLATIONS[self.interpolation], box=region, reducing_gap=REDUCING_GAP)
        if decoded.upright is not None:
            pil = pil.transpose(decoded.upright)
        if self.resize is not None:
            pil = resize_and_crop(pil, resize=None, crop=(self.height, self.width), name=name)
        return np.asarray(pil)

    def _stored_target(self, size: tuple[int, int], upright: Image.Transpose | None, *, name: str) -> tuple[int, int]:
        """The size the resize step gives an image stored at ``size`` (width, height), in stored
        orientation: the shorter side at ``resize``, or the input's width×height."""
        swapped = upright in _SWAPPING
        width, height = size[::-1] if swapped else size
        target = (self.width, self.height) if self.resize is None else _shorter_side_to(
            self.resize, (width, height), name=name)
        return target[::-1] if swapped else target

    def load_image(self, path: Path | str) -> np.ndarray:
        """Read an image file into a C×H×W float32 model input, as :meth:`prepare_encoded` does."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ImageError(f"{path}: no such file") from None
        except OSError as exc:
            raise ImageError(f"{path}: cannot read it ({exc.strerror or exc})") from None
        return self.prepare_encoded(data, name=path.name)
