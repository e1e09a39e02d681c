"""Recorded facts of the official Triton images and of the image deploy/ builds."""

from __future__ import annotations

import pytest

from resnet_serve.errors import RepositoryError
from resnet_serve.official_image import TRITON_CONTAINER_TAG
from resnet_serve.triton.images import DEPLOY_IMAGE, OFFICIAL_IMAGES, find_image


def test_every_release_from_24_10_is_recorded_in_order() -> None:
    tags = list(OFFICIAL_IMAGES)
    months = [tuple(int(part) for part in tag.removesuffix("-py3").split(".")) for tag in tags]
    assert tags[0] == "24.10-py3"
    assert months == sorted(months)
    # One image a month, none skipped.
    for (year, month), (next_year, next_month) in zip(months, months[1:], strict=False):
        assert (next_year, next_month) == ((year, month + 1) if month < 12 else (year + 1, 1))
    versions = [tuple(map(int, image.triton_version.split("."))) for image in OFFICIAL_IMAGES.values()]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert OFFICIAL_IMAGES["24.10-py3"].triton_version == "2.51.0"


def test_the_targets_backends_are_in_every_image_and_tensorflow_left_at_25_03() -> None:
    for image in OFFICIAL_IMAGES.values():
        assert {"onnxruntime", "openvino", "tensorrt", "python", "ensemble"} <= image.backends
    assert "tensorflow" in OFFICIAL_IMAGES["25.02-py3"].backends
    assert "tensorflow" not in OFFICIAL_IMAGES["25.03-py3"].backends


def test_the_python_backend_has_numpy_but_neither_onnxruntime_nor_pillow() -> None:
    for image in OFFICIAL_IMAGES.values():
        assert {"numpy", "triton_python_backend_utils"} <= image.python_packages
        assert not {"onnxruntime", "PIL", "torch"} & image.python_packages


def test_the_deploy_image_is_the_pinned_tag_plus_pillow() -> None:
    deploy = find_image(DEPLOY_IMAGE)
    pinned = find_image(TRITON_CONTAINER_TAG)

    assert deploy.tag == TRITON_CONTAINER_TAG
    assert deploy.python_packages == pinned.python_packages | {"PIL"}
    assert deploy.backends == pinned.backends
    assert "deploy/Dockerfile" in deploy.reference and TRITON_CONTAINER_TAG in deploy.reference


def test_an_unknown_tag_is_one_line_naming_the_known_ones() -> None:
    with pytest.raises(RepositoryError, match=r"no facts recorded for image '23.01-py3'; known: deploy, 24.10-py3"):
        find_image("23.01-py3")
