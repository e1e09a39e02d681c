"""Facts about the official Triton container images (`nvcr.io/nvidia/tritonserver:<yy.mm>-py3`)
that decide whether a repository entry loads in one, and about the image `deploy/` builds.

Sources, per release (read from the triton-inference-server/server repository at each release
tag v2.51.0 ... v2.71.0, the r26.08 branch and, for 26.09, main at e1db8a6 "Update default branch
to track 2.73.0 / 26.09", the snapshot read having no v2.73.0 tag; and from NVIDIA's release notes):

- Triton version: `build.py`'s TRITON_VERSION_MAP at the tag; 26.09 is 2.73.0 (GitHub release
  v2.73.0, "Release 2.73.0 corresponding to NGC container 26.09", see `TRITON_CONTAINER_TAG`).
- Backends: `build.py`'s `enable_all()` list at the tag (the backends of a full build), plus the
  built-in ensemble scheduler. The tensorflow backend leaves the list at 25.03 (v2.56.0). Main at
  e1db8a6 has the same list as r26.08.
- Python-backend packages: what `build.py` installs for the python backend at the tag
  (`python3`, `python3-pip`, wheel, setuptools, `numpy<2`, virtualenv), plus the stub's own
  `triton_python_backend_utils`. Nothing else: no onnxruntime, no Pillow.
- Lowest CUDA compute capability: the "GPU Requirements" paragraph of the Triton release notes,
  https://docs.nvidia.com/deeplearning/triton-inference-server/release-notes/rel-<yy-mm>.html:
  24.10 (6.0); 25.01, 25.02, 25.03, 25.04, 25.06, 25.08, 25.10, 25.12, 26.02, 26.04, 26.05,
  26.06, 26.07, 26.08, 26.09 (7.5). The 26.06 page's paragraph says "Release 26.05 supports ...
  7.5", a copying slip on that page. 24.12 (6.0) is read from the same notes as the Triton team
  committed them, docs/introduction/release_notes.md at v2.53.0. No page was read for 24.11,
  25.05, 25.09, 25.11, 26.01 and 26.03, and the release-notes index lists none for 25.07 (the
  2.59.1 patch release), so those are not recorded.
- TensorRT version: the "container also includes" list of the same release notes. The stored
  copies of the docs.nvidia.com pages drop that list, so it is read from the Markdown copy in
  triton-inference-server/server, docs/introduction/release_notes.md: 24.10 "NVIDIA TensorRT
  10.5.0.18" (main at 0194c3d, #7807), 24.12 "10.7.0.23" (v2.53.0), 25.01 "10.8.0.43" (main at
  d3ee577, r25.01). From 25.02 that file only links to the GitHub release page, and neither those
  release texts nor the Deep Learning Frameworks Support Matrix
  (https://docs.nvidia.com/deeplearning/frameworks/support-matrix/) nor the TensorRT container
  release notes were among the sources that could be read, so no other release has one. The
  TensorRT column of docs/introduction/compatibility.md is for the `-trtllm-python-py3` images
  (24.10 there: 10.4.0), not these; and the same month's TensorRT container is not taken as a
  stand-in: for 23.05 it shipped 8.6.1.6 against Triton's 8.6.1.2 (triton-inference-server/server
  #5975).
  A plan loads only in the TensorRT that built it, down to the build number (#5975: "expecting
  library version 8.6.1.2 got 8.6.1.6"; TensorRT "Version Compatibility" docs; #3845), so the
  full version is recorded as the notes give it and `repo check` compares the sidecar's string
  with it exactly. A sidecar written by a tensorrt wheel whose `__version__` has three parts
  (10.5.0, 10.6.0, 10.7.0 on PyPI) does not equal "10.5.0.18" and is reported as a mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from resnet_serve.errors import RepositoryError
from resnet_serve.official_image import TRITON_CONTAINER_TAG

__all__ = [
    "DEPLOY_IMAGE",
    "OFFICIAL_IMAGES",
    "OfficialImage",
    "deploy_image",
    "find_image",
]

# What `image` of `repo check --image` means by default: the image deploy/Dockerfile builds.
DEPLOY_IMAGE = "deploy"

_BACKENDS = frozenset({"ensemble", "onnxruntime", "python", "dali", "pytorch", "openvino", "fil", "tensorrt"})
# Import names the python backend's interpreter has besides the standard library.
_PYTHON_PACKAGES = frozenset(
    {"numpy", "pip", "setuptools", "pkg_resources", "wheel", "virtualenv", "triton_python_backend_utils"}
)


@dataclass(frozen=True)
class OfficialImage:
    """What one image offers to the models of a repository."""

    tag: str
    triton_version: str
    backends: frozenset[str]
    python_packages: frozenset[str]
    min_compute_capability: str | None = None
    tensorrt_version: str | None = None
    description: str = ""

    @property
    def reference(self) -> str:
        return self.description or f"nvcr.io/nvidia/tritonserver:{self.tag}"


def _release(
    tag: str,
    triton_version: str,
    *,
    tensorflow: bool = False,
    min_cc: str | None = None,
    tensorrt: str | None = None,
) -> OfficialImage:
    return OfficialImage(
        tag=tag,
        triton_version=triton_version,
        backends=_BACKENDS | ({"tensorflow"} if tensorflow else set()),
        python_packages=_PYTHON_PACKAGES,
        min_compute_capability=min_cc,
        tensorrt_version=tensorrt,
    )


OFFICIAL_IMAGES: dict[str, OfficialImage] = {
    image.tag: image
    for image in (
        _release("24.10-py3", "2.51.0", tensorflow=True, min_cc="6.0", tensorrt="10.5.0.18"),
        _release("24.11-py3", "2.52.0", tensorflow=True),
        _release("24.12-py3", "2.53.0", tensorflow=True, min_cc="6.0", tensorrt="10.7.0.23"),
        _release("25.01-py3", "2.54.0", tensorflow=True, min_cc="7.5", tensorrt="10.8.0.43"),
        _release("25.02-py3", "2.55.0", tensorflow=True, min_cc="7.5"),
        _release("25.03-py3", "2.56.0", min_cc="7.5"),
        _release("25.04-py3", "2.57.0", min_cc="7.5"),
        _release("25.05-py3", "2.58.0"),
        _release("25.06-py3", "2.59.0", min_cc="7.5"),
        _release("25.07-py3", "2.59.1"),
        _release("25.08-py3", "2.60.0", min_cc="7.5"),
        _release("25.09-py3", "2.61.0"),
        _release("25.10-py3", "2.62.0", min_cc="7.5"),
        _release("25.11-py3", "2.63.0"),
        _release("25.12-py3", "2.64.0", min_cc="7.5"),
        _release("26.01-py3", "2.65.0"),
        _release("26.02-py3", "2.66.0", min_cc="7.5"),
        _release("26.03-py3", "2.67.0"),
        _release("26.04-py3", "2.68.0", min_cc="7.5"),
        _release("26.05-py3", "2.69.0", min_cc="7.5"),
        _release("26.06-py3", "2.70.0", min_cc="7.5"),
        _release("26.07-py3", "2.71.0", min_cc="7.5"),
        _release("26.08-py3", "2.72.0", min_cc="7.5"),
        _release("26.09-py3", "2.73.0", min_cc="7.5"),
    )
}


def deploy_image() -> OfficialImage:
    """The image deploy/Dockerfile builds: the pinned official image plus Pillow, which the
    `<name>-preprocess` models import to decode images."""
    base = find_image(TRITON_CONTAINER_TAG)
    return replace(
        base,
        python_packages=base.python_packages | {"PIL"},
        description=f"deploy/Dockerfile (nvcr.io/nvidia/tritonserver:{base.tag} + Pillow)",
    )


def find_image(tag: str) -> OfficialImage:
    """Facts of an official tag (`24.10-py3`), or of `deploy` (the image deploy/ builds)."""
    if tag == DEPLOY_IMAGE:
        return deploy_image()
    try:
        return OFFICIAL_IMAGES[tag]
    except KeyError:
        raise RepositoryError(
            f"no facts recorded for image {tag!r}; known: {DEPLOY_IMAGE}, "
            f"{', '.join(OFFICIAL_IMAGES)} (resnet_serve/triton/images.py)"
        ) from None
