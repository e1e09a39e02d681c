"""Facts about the official Triton container images (`nvcr.io/nvidia/tritonserver:<yy.mm>-py3`)
that decide whether a repository entry loads in one, and about the image `deploy/` builds.

Sources, per release (read from the triton-inference-server/server repository at each release
tag v2.51.0 ... v2.71.0 and the r26.08 branch, and from NVIDIA's release notes):

- Triton version: `build.py`'s TRITON_VERSION_MAP at the tag.
- Backends: `build.py`'s `enable_all()` list at the tag (the backends of a full build), plus the
  built-in ensemble scheduler. The tensorflow backend leaves the list at 25.03 (v2.56.0).
- Python-backend packages: what `build.py` installs for the python backend at the tag
  (`python3`, `python3-pip`, wheel, setuptools, `numpy<2`, virtualenv), plus the stub's own
  `triton_python_backend_utils`. Nothing else: no onnxruntime, no Pillow.
- Lowest CUDA compute capability: the "GPU Requirements" paragraph of the release notes
  (docs.nvidia.com/deeplearning/triton-inference-server/release-notes/rel-<yy-mm>.html), for the
  releases whose notes were read: 24.10 (6.0); 25.03, 25.04, 25.06, 25.08, 25.10, 26.02, 26.06
  (7.5). The others are not recorded.
- TensorRT version: NVIDIA publishes it in the Deep Learning Frameworks Support Matrix, which
  was not among the sources read, so none is recorded. A plan loads only in the TensorRT
  version that built it (TensorRT "Version Compatibility" docs; Triton maintainers in
  triton-inference-server/server#3845), so `repo check` cannot confirm a plan for such a tag.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from resnet_serve.errors import RepositoryError
from resnet_serve.triton import TRITON_CONTAINER_TAG

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


def _release(tag: str, triton_version: str, *, tensorflow: bool = False, min_cc: str | None = None) -> OfficialImage:
    return OfficialImage(
        tag=tag,
        triton_version=triton_version,
        backends=_BACKENDS | ({"tensorflow"} if tensorflow else set()),
        python_packages=_PYTHON_PACKAGES,
        min_compute_capability=min_cc,
    )


OFFICIAL_IMAGES: dict[str, OfficialImage] = {
    image.tag: image
    for image in (
        _release("24.10-py3", "2.51.0", tensorflow=True, min_cc="6.0"),
        _release("24.11-py3", "2.52.0", tensorflow=True),
        _release("24.12-py3", "2.53.0", tensorflow=True),
        _release("25.01-py3", "2.54.0", tensorflow=True),
        _release("25.02-py3", "2.55.0", tensorflow=True),
        _release("25.03-py3", "2.56.0", min_cc="7.5"),
        _release("25.04-py3", "2.57.0", min_cc="7.5"),
        _release("25.05-py3", "2.58.0"),
        _release("25.06-py3", "2.59.0", min_cc="7.5"),
        _release("25.07-py3", "2.59.1"),
        _release("25.08-py3", "2.60.0", min_cc="7.5"),
        _release("25.09-py3", "2.61.0"),
        _release("25.10-py3", "2.62.0", min_cc="7.5"),
        _release("25.11-py3", "2.63.0"),
        _release("25.12-py3", "2.64.0"),
        _release("26.01-py3", "2.65.0"),
        _release("26.02-py3", "2.66.0", min_cc="7.5"),
        _release("26.03-py3", "2.67.0"),
        _release("26.04-py3", "2.68.0"),
        _release("26.05-py3", "2.69.0"),
        _release("26.06-py3", "2.70.0", min_cc="7.5"),
        _release("26.07-py3", "2.71.0"),
        _release("26.08-py3", "2.72.0"),
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
