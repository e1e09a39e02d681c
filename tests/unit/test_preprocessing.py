"""The serving contract: Preprocessing's JSON form and arithmetic, and image decoding (pixel
limit, modes, resize and centre crop), on files written in the real formats."""

from __future__ import annotations

import ast
import io
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hostile import decompression_bomb, png_header_only
from PIL import ExifTags, Image

import resnet_serve.preprocessing as preprocessing_module
from resnet_serve.datasets import InMemoryDataset
from resnet_serve.errors import DatasetError, ImageError
from resnet_serve.preprocessing import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, Preprocessing

GRAY = Preprocessing(channels=1, height=2, width=2, mean=(0.5,), std=(0.25,))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def encoded(image: Image.Image, format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def imported_modules(path: str | None) -> list[str]:
    tree = ast.parse(Path(str(path)).read_text(encoding="utf-8"))
    names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    return names + [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]


def test_imports_only_what_a_triton_python_model_has() -> None:
    """preprocessing.py travels verbatim, beside errors.py, into a Triton python-backend model."""
    allowed = set(sys.stdlib_module_names) | {"numpy", "PIL"}
    imported = imported_modules(preprocessing_module.__file__)
    assert "resnet_serve.errors" in imported and "numpy" in imported and "PIL" in imported
    outside = [name for name in imported if name.split(".")[0] not in allowed and name != "resnet_serve.errors"]
    assert outside == []
    assert imported_modules(sys.modules["resnet_serve.errors"].__file__) == []


def test_preprocessing_round_trips_through_json() -> None:
    rgb = Preprocessing(channels=3, height=224, width=200, mean=(0.485, 0.456, 0.406),
                        std=(0.229, 0.224, 0.225), interpolation="bicubic")
    for original in (GRAY, rgb):
        again = Preprocessing.from_dict(json.loads(json.dumps(original.to_dict())))
        assert again == original
    assert rgb.input_shape == (3, 224, 200)
    # The exact keys that checkpoints and Triton configs already hold.
    assert list(GRAY.to_dict()) == ["channels", "height", "width", "mean", "std", "interpolation"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mean": [0.1, 0.2]}, "needs 1 mean and std values, got 2 and 1"),
        ({"std": [0.0]}, "std positive"),
        ({"channels": 2, "mean": [0, 0], "std": [1, 1]}, "channels must be 1 or 3"),
        ({"height": "28"}, "height must be an integer"),
        ({"mean": "0.5"}, "mean must be a list of numbers"),
        ({"interpolation": "fancy"}, "unknown interpolation 'fancy'"),
        ({"crop": 0.9}, "unknown crop"),
    ],
)
def test_preprocessing_from_dict_rejects_bad_dicts(change: dict, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        Preprocessing.from_dict({**GRAY.to_dict(), **change})
    with pytest.raises(DatasetError, match="missing height"):
        Preprocessing.from_dict({k: v for k, v in GRAY.to_dict().items() if k != "height"})
    with pytest.raises(DatasetError, match="must be a mapping"):
        Preprocessing.from_dict([1, 2])


def test_normalize_by_hand() -> None:
    images = np.array([[[0, 255], [51, 102]]], np.uint8)
    out = GRAY.normalize(images)
    assert out.dtype == np.float32 and out.shape == (1, 1, 2, 2) and out.flags.c_contiguous
    expected = (np.array([[0, 255], [51, 102]]) / 255 - 0.5) / 0.25  # [[-2, 2], [-1.2, -0.4]]
    np.testing.assert_allclose(out[0, 0], expected, atol=1e-6)
    # N×H×W×1 is the same grayscale.
    np.testing.assert_array_equal(GRAY.normalize(images[..., None]), out)

    rgb = Preprocessing(channels=3, height=1, width=2, mean=(0.0, 0.5, 1.0), std=(1.0, 0.5, 0.25))
    pixels = np.array([[[[255, 0, 51], [0, 255, 255]]]], np.uint8)  # 1×1×2×3
    got = rgb.normalize(pixels)
    assert got.shape == (1, 3, 1, 2)
    np.testing.assert_allclose(got[0, :, 0, 0], [1.0, -1.0, (0.2 - 1.0) / 0.25], atol=1e-6)
    np.testing.assert_allclose(got[0, :, 0, 1], [0.0, 1.0, 0.0], atol=1e-6)


def test_normalize_converts_channels_and_resizes_like_pil(rng: np.random.Generator) -> None:
    gray_to_rgb = Preprocessing(channels=3, height=2, width=2, mean=(0, 0, 0), std=(1, 1, 1))
    gray = np.array([[[0, 255], [51, 102]]], np.uint8)
    out = gray_to_rgb.normalize(gray)
    assert out.shape == (1, 3, 2, 2)
    for c in range(3):
        np.testing.assert_allclose(out[0, c], gray[0] / 255, atol=1e-6)

    red = np.zeros((1, 2, 2, 3), np.uint8)
    red[..., 0] = 255
    # ITU-R 601-2 luma, as PIL's "L" conversion computes it: 255 · 0.299 → 76.
    np.testing.assert_allclose(GRAY.normalize(red)[0, 0], (76 / 255 - 0.5) / 0.25, atol=1e-6)

    big = rng.integers(0, 256, (3, 9, 7), dtype=np.uint8)
    resized = GRAY.normalize(big)
    assert resized.shape == (3, 1, 2, 2)
    pil = np.asarray(Image.fromarray(big[1]).resize((2, 2), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(resized[1, 0], (pil / 255 - 0.5) / 0.25, atol=1e-6)
    assert GRAY.normalize(np.zeros((0, 9, 7), np.uint8)).shape == (0, 1, 2, 2)

    with pytest.raises(ImageError, match="expected uint8 images"):
        GRAY.normalize(np.zeros((1, 2, 2), np.float32))


def test_for_dataset_measures_mean_and_std() -> None:
    images = np.array([[[0, 255]], [[255, 0]]], np.uint8)  # half black, half white
    dataset = InMemoryDataset(images=images, labels=np.array([0, 1]), class_names=["a", "b"])
    preprocessing = Preprocessing.for_dataset(dataset)
    assert (preprocessing.channels, preprocessing.height, preprocessing.width) == (1, 1, 2)
    assert preprocessing.mean == (0.5,) and preprocessing.std == (0.5,)


def test_load_image_png_and_jpeg(tmp_path: Path, rng: np.random.Generator) -> None:
    gray = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    fashion = Preprocessing(channels=1, height=28, width=28, mean=(0.286,), std=(0.353,))
    np.testing.assert_array_equal(fashion.load_image(tmp_path / "gray.png"), fashion.normalize(gray[None])[0])

    # A smooth RGB photo-like gradient, saved lossy and read back at another size and mode.
    y, x = np.mgrid[0:60, 0:80]
    photo = np.stack([x * 3, y * 4, (x + y) * 3 // 2], axis=-1).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=95)
    rgb = Preprocessing(channels=3, height=30, width=40, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    loaded = rgb.load_image(tmp_path / "photo.jpg")
    assert loaded.shape == (3, 30, 40) and loaded.dtype == np.float32
    reference = np.asarray(Image.fromarray(photo).resize((40, 30), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(loaded, (reference.transpose(2, 0, 1) / 255 - 0.5) / 0.5, atol=0.06)
    assert fashion.load_image(tmp_path / "photo.jpg").shape == (1, 28, 28)
    # The bytes entry point is what load_image runs.
    np.testing.assert_array_equal(rgb.prepare_encoded((tmp_path / "photo.jpg").read_bytes()), loaded)


def test_load_image_rejects_corrupt_files(tmp_path: Path) -> None:
    (tmp_path / "photo.jpg").write_bytes(b"this is not a JPEG at all")
    with pytest.raises(ImageError, match=r"^photo.jpg: not a readable image \("):
        GRAY.load_image(tmp_path / "photo.jpg")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "whole.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:60])
    with pytest.raises(ImageError, match="cut.png: not a readable image"):
        GRAY.load_image(tmp_path / "cut.png")
    with pytest.raises(ImageError, match="no such file"):
        GRAY.load_image(tmp_path / "absent.png")
    with pytest.raises(ImageError, match=r"upload: not a readable image \("):
        GRAY.prepare_encoded(b"", name="upload")


def test_preprocessing_resize_then_center_crop(rng: np.random.Generator) -> None:
    imagenet = Preprocessing(channels=3, height=4, width=4, mean=(0.485, 0.456, 0.406),
                             std=(0.229, 0.224, 0.225), resize=6)
    data = imagenet.to_dict()
    assert data["resize"] == 6 and Preprocessing.from_dict(json.loads(json.dumps(data))) == imagenet
    # Dicts written before resize existed still load, and unset resize is not written out.
    assert "resize" not in GRAY.to_dict() and Preprocessing.from_dict(GRAY.to_dict()).resize is None
    with pytest.raises(DatasetError, match="resize must be an integer"):
        Preprocessing.from_dict({**data, "resize": 6.5})
    with pytest.raises(DatasetError, match="resize must be at least the 4×4 crop, got 3"):
        Preprocessing.from_dict({**data, "resize": 3})

    image = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
    plain = Preprocessing(**{**data, "resize": None})
    expected = np.asarray(Image.fromarray(image).resize((9, 6), Image.Resampling.BILINEAR))[1:5, 2:6]
    np.testing.assert_array_equal(imagenet.normalize(image[None]), plain.normalize(expected[None]))
    # A file of that image is resized and cropped the same way.
    np.testing.assert_array_equal(imagenet.prepare_encoded(encoded(Image.fromarray(image), "PNG")),
                                  plain.normalize(expected[None])[0])


# --- Modes: every value as its mode means it, never clipped at 255 ---

UNIT = Preprocessing(channels=1, height=4, width=64, mean=(0.0,), std=(1.0,))
UNIT_RGB = Preprocessing(channels=3, height=1, width=3, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


@pytest.mark.parametrize("format", ["PNG", "TIFF", "PPM"])
def test_sixteen_bit_grayscale_is_scaled_not_saturated(format: str) -> None:
    # A ramp over the whole 16-bit range: clipped at 255 it would be white from its 1st column.
    ramp = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (4, 1))
    data = encoded(Image.fromarray(ramp), format)
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.mode in ("I;16", "I")  # PPM (PGM) files open as 32-bit "I"
    got = UNIT.prepare_encoded(data)[0] * 255
    np.testing.assert_allclose(got, np.rint(ramp / 257), atol=1e-3)
    assert got[0, 0] == 0 and got[0, -1] == pytest.approx(255) and got[0, 32] == pytest.approx(130, abs=1e-3)


def test_twelve_bit_pgm_is_scaled_by_its_maximum() -> None:
    # A PGM may declare any maximum; 4095 (12-bit) means full white, as 65535 does.
    values = np.array([[0, 1365, 2730, 4095]], ">u2")
    got = Preprocessing(channels=1, height=1, width=4, mean=(0.0,), std=(1.0,)).prepare_encoded(
        b"P5\n4 1\n4095\n" + values.tobytes()
    )
    np.testing.assert_allclose(got[0, 0] * 255, [0, 85, 170, 255], atol=1e-3)


def test_float_images_are_read_on_the_zero_to_one_scale() -> None:
    values = np.array([[0.0, 0.25, 0.5, 1.0, 1.5, -0.5]], np.float32)
    data = encoded(Image.fromarray(values), "TIFF")
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.mode == "F"
    got = Preprocessing(channels=1, height=1, width=6, mean=(0.0,), std=(1.0,)).prepare_encoded(data)
    np.testing.assert_allclose(got[0, 0] * 255, [0, 64, 128, 255, 255, 0], atol=1e-3)


def blend(colour: int, alpha: int) -> float:
    """``colour`` at opacity ``alpha`` over white."""
    return (colour * alpha + 255 * (255 - alpha)) / 255


def test_transparent_pixels_are_composited_over_white() -> None:
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, :, 0] = 200  # a red whose alpha goes 0 → 128 → 255; hidden colour black
    rgba[0, :, 3] = [0, 128, 255]
    got = UNIT_RGB.prepare_encoded(encoded(Image.fromarray(rgba, "RGBA"), "PNG")) * 255
    expected = [[255, blend(200, 128), 200], [255, blend(0, 128), 0], [255, blend(0, 128), 0]]
    np.testing.assert_allclose(got[:, 0], expected, atol=1.0)

    la = Image.fromarray(np.array([[[30, 0], [30, 255], [30, 128]]], np.uint8), "LA")
    gray = Preprocessing(channels=1, height=1, width=3, mean=(0.0,), std=(1.0,))
    np.testing.assert_allclose(gray.prepare_encoded(encoded(la, "PNG"))[0, 0] * 255, [255, 30, blend(30, 128)], atol=1.0)

    palette = Image.fromarray(np.array([[0, 1, 1]], np.uint8), "P")
    palette.putpalette([0, 0, 255, 10, 200, 30] + [0] * 762)
    np.testing.assert_allclose(
        UNIT_RGB.prepare_encoded(encoded(palette, "PNG", transparency=0))[:, 0] * 255,
        [[255, 10, 10], [255, 200, 200], [255, 30, 30]], atol=1e-3,
    )


def test_cmyk_bilevel_and_palette_files_keep_their_colours() -> None:
    cmyk = Image.new("CMYK", (3, 1))
    cmyk.putdata([(0, 255, 255, 0), (255, 0, 255, 0), (0, 0, 0, 255)])  # red, green, black
    np.testing.assert_allclose(UNIT_RGB.prepare_encoded(encoded(cmyk, "TIFF"))[:, 0] * 255,
                               [[255, 0, 0], [0, 255, 0], [0, 0, 0]], atol=1e-3)
    bilevel = Image.fromarray(np.array([[True, False, True]]))
    assert bilevel.mode == "1"
    np.testing.assert_allclose(UNIT_RGB.prepare_encoded(encoded(bilevel, "PNG"))[0, 0] * 255, [255, 0, 255])
    palette = Image.fromarray(np.array([[0, 1, 0]], np.uint8), "P")
    palette.putpalette([0, 0, 255, 10, 200, 30] + [0] * 762)
    np.testing.assert_allclose(UNIT_RGB.prepare_encoded(encoded(palette, "GIF"))[:, 0] * 255,
                               [[0, 10, 0], [0, 200, 0], [255, 30, 255]], atol=1e-3)


# --- Decompression bombs: refused from the header, before any pixel is decoded ---


def test_pixel_limit_is_checked_before_decoding() -> None:
    # 8,000×8,000 is exactly the limit: only its (truncated) data stops it.
    with pytest.raises(ImageError, match="at-limit.png: not a readable image"):
        GRAY.prepare_encoded(png_header_only(8_000, 8_000), name="at-limit.png")
    assert 8_000 * 8_000 == MAX_IMAGE_PIXELS
    # One row more, under Pillow's own limit, and far over it (where Pillow itself refuses).
    with pytest.raises(ImageError, match=r"^big.png: 8000×8001 is 64,008,000 pixels, more than the 64,000,000 "
                                         r"an image may have; refused before decoding$"):
        GRAY.prepare_encoded(png_header_only(8_000, 8_001), name="big.png")
    with pytest.raises(ImageError, match=r"^bomb.png: more than the 64,000,000 pixels an image may have; refused"):
        GRAY.prepare_encoded(png_header_only(50_000, 50_000), name="bomb.png")


def test_a_real_bomb_is_refused_and_decodes_under_a_higher_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # A valid 3,000×2,000 PNG of 67 KB that decodes to 6 MB: a bomb for a 5-megapixel limit.
    data = decompression_bomb(3_000, 2_000)
    assert len(data) < 100_000
    monkeypatch.setattr(preprocessing_module, "MAX_IMAGE_PIXELS", 5_000_000)
    with pytest.raises(ImageError, match=r"3000×2000 is 6,000,000 pixels, more than the 5,000,000"):
        GRAY.prepare_encoded(data)
    monkeypatch.setattr(preprocessing_module, "MAX_IMAGE_PIXELS", 6_000_000)
    np.testing.assert_allclose(GRAY.prepare_encoded(data), (0 - 0.5) / 0.25)


# Pillow's notes on damaged TIFF tags and on sizes past its own limit; the CLI hides them too.
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("format", ["PNG", "JPEG", "GIF", "TIFF", "BMP", "WEBP", "PPM"])
def test_damaged_files_fail_as_image_errors_only(format: str, rng: np.random.Generator) -> None:
    """Cut short or with bytes changed (in the header, or anywhere), a file either still decodes
    or is one ImageError: never another exception that would end in a traceback."""
    y, x = np.mgrid[0:40, 0:50]
    data = encoded(Image.fromarray(np.stack([x * 5, y * 6, x + y], axis=-1).astype(np.uint8)), format)
    imagenet_like = Preprocessing(channels=3, height=8, width=8, mean=(0.5,) * 3, std=(0.25,) * 3, resize=10)
    refused = 0
    for attempt in range(60):
        damaged = bytearray(data)
        if attempt % 3 == 0:
            damaged = damaged[: rng.integers(1, len(damaged))]
        else:
            reach = 200 if attempt % 3 == 1 else len(damaged)
            for _ in range(int(rng.integers(1, 10))):
                damaged[rng.integers(0, min(reach, len(damaged)))] = rng.integers(0, 256)
        try:
            assert imagenet_like.prepare_encoded(bytes(damaged)).shape == (3, 8, 8)
        except ImageError as error:
            assert "\n" not in str(error)
            refused += 1
    assert refused > 0


def test_sizes_are_bounded_before_anything_is_allocated() -> None:
    at_limit = Preprocessing(channels=3, height=MAX_IMAGE_SIDE, width=224, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert at_limit.input_shape == (3, 4096, 224)
    for sizes in ({"height": MAX_IMAGE_SIDE + 1}, {"width": 20_000}, {"resize": MAX_IMAGE_SIDE + 1}):
        with pytest.raises(DatasetError, match="over the 4096 pixels a side may have"):
            Preprocessing(**{"channels": 1, "height": 28, "width": 28, "mean": (0.5,), "std": (0.25,)} | sizes)
    with pytest.raises(DatasetError, match="preprocessing width must be an integer, got True"):
        Preprocessing(channels=1, height=28, width=True, mean=(0.5,), std=(0.25,))


def test_an_image_too_elongated_to_resize_is_refused_before_resizing() -> None:
    # 64,000 × 1 pixels is a small image; with its shorter side scaled to 256 it would be 4 gigapixels.
    strip = encoded(Image.new("L", (64_000, 1)), "PNG")
    imagenet_like = Preprocessing(channels=1, height=224, width=224, mean=(0.5,), std=(0.25,), resize=256)
    with pytest.raises(DatasetError, match=r"strip.png: 64000×1 resized to a shorter side of 256 would be "
                                           r"16384000×256, more than the 64,000,000 pixels"):
        imagenet_like.prepare_encoded(strip, name="strip.png")


# --- The reduced-scale decode (the default) and the exact one ---

IMAGENET = Preprocessing(channels=3, height=224, width=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                         resize=256)
EXACT = replace(IMAGENET, exact_decode=True)


def photo(size: tuple[int, int], orientation: int = 1) -> bytes:
    """scikit-image's coffee photo resampled to ``size`` as a quality-90 JPEG, with an EXIF orientation."""
    from skimage import data

    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return encoded(Image.fromarray(data.coffee()).resize(size, Image.Resampling.BILINEAR), "JPEG", quality=90,
                   exif=exif)


def pil_reference(data: bytes, *, scale_target: tuple[int, int], upright: Image.Transpose | None) -> np.ndarray:
    """What the reduced-scale decode is documented to do, written with Pillow alone: draft to at
    least REDUCING_GAP × the resize target (stored orientation), resize from the draft's box with
    the same reducing gap, turn upright, cut the centre 224²."""
    gap = preprocessing_module.REDUCING_GAP
    with Image.open(io.BytesIO(data)) as opened:
        _, box = opened.draft(None, (int(scale_target[0] * gap), int(scale_target[1] * gap)))
        pil = opened.convert("RGB").resize(scale_target, Image.Resampling.BILINEAR, box=box, reducing_gap=gap)
    pil = pil if upright is None else pil.transpose(upright)
    top, left = round((pil.height - 224) / 2), round((pil.width - 224) / 2)
    return IMAGENET.standardize(np.asarray(pil.crop((left, top, left + 224, top + 224)))[None])[0]


def test_the_exact_decode_is_torchvisions_pil_path_and_its_flag_round_trips() -> None:
    data = photo((1001, 751))
    # torchvision's eval transform on a PIL image: Resize(256) (PIL bilinear, shorter side, int()
    # of the longer), CenterCrop(224) (round()), ToTensor and Normalize.
    pil = Image.open(io.BytesIO(data)).convert("RGB").resize((341, 256), Image.Resampling.BILINEAR)
    expected = IMAGENET.standardize(np.asarray(pil.crop((58, 16, 282, 240)))[None])[0]
    np.testing.assert_array_equal(EXACT.prepare_encoded(data), expected)
    assert EXACT.to_dict()["exact_decode"] is True and "exact_decode" not in IMAGENET.to_dict()
    assert Preprocessing.from_dict(json.loads(json.dumps(EXACT.to_dict()))) == EXACT
    with pytest.raises(DatasetError, match="exact_decode must be true or false, got 'yes'"):
        Preprocessing.from_dict({**IMAGENET.to_dict(), "exact_decode": "yes"})


def test_images_too_small_to_reduce_decode_exactly_bit_for_bit() -> None:
    # 640×480 → 341×256: a 1/2-scale draft would be 320 px, under 2 × 341, and the resize factor
    # 1.9 is under twice the gap, so both paths run the very same Pillow calls.
    for size in ((640, 480), (480, 640), (300, 400)):
        np.testing.assert_array_equal(IMAGENET.prepare_encoded(photo(size)), EXACT.prepare_encoded(photo(size)))


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_a_large_jpeg_is_decoded_at_a_reduced_scale_in_any_orientation(orientation: int) -> None:
    # 4032×3024 (stored) → 341×256: a 1/4-scale draft (1008×756) is the smallest ≥ 2 × the target.
    data = photo((4032, 3024), orientation)
    upright = {1: None, 3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_270, 8: Image.Transpose.ROTATE_90}
    got = IMAGENET.prepare_pixels(data)
    # Resized as stored (landscape, whatever the tag says), then turned upright.
    np.testing.assert_array_equal(IMAGENET.standardize(got[None])[0],
                                  pil_reference(data, scale_target=(341, 256), upright=upright[orientation]))
    assert got.shape == (224, 224, 3) and got.dtype == np.uint8


def test_a_flat_photo_decodes_to_the_same_colour_at_any_scale() -> None:
    # Every filter's weights sum to 1, so a flat image keeps its colour through a scaled IDCT, a
    # box reduce and a bilinear resize alike; each path rounds to whole levels, 1 level apart at most.
    flat = encoded(Image.new("RGB", (4032, 3024), (200, 120, 40)), "JPEG", quality=90)
    difference = np.abs(IMAGENET.prepare_encoded(flat) - EXACT.prepare_encoded(flat))
    assert difference.max() <= 1 / (255 * min(IMAGENET.std)) + 1e-6


def test_large_non_jpeg_images_are_reduced_with_the_gap() -> None:
    # A PNG has no reduced-scale decode: Pillow's reducing_gap box-reduces it by the largest whole
    # factor that leaves twice the target (3000/384/2 → 3), then resamples bilinearly.
    from skimage import data

    png = encoded(Image.fromarray(data.astronaut()).resize((3000, 2000)), "PNG", compress_level=1)
    pil = Image.open(io.BytesIO(png)).convert("RGB").resize((384, 256), Image.Resampling.BILINEAR,
                                                            reducing_gap=preprocessing_module.REDUCING_GAP)
    expected = IMAGENET.standardize(np.asarray(pil.crop((80, 16, 304, 240)))[None])[0]
    np.testing.assert_array_equal(IMAGENET.prepare_encoded(png), expected)
    assert not np.array_equal(EXACT.prepare_encoded(png), expected)
