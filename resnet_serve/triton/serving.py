"""How an entry serves its model: the serving targets (which Triton backend runs which file)
and ``ServingOptions``, the one serving-settings object that `export`, the repository writer and
`tune` share: a new setting is one field here (and its CLI option)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from resnet_serve.errors import RepositoryError
from resnet_serve.triton.config import ExecutionAccelerator, VersionPolicy

if TYPE_CHECKING:
    from resnet_serve.preprocessing import Preprocessing

__all__ = [
    "GPU_ACCELERATORS",
    "ONNXRUNTIME",
    "OPENVINO",
    "PYTHON_ONNXRUNTIME",
    "SERVING_TARGETS",
    "TENSORRT_PLAN",
    "TRITON_INSTANCE_KINDS",
    "GpuAccelerator",
    "InstanceKind",
    "ServingOptions",
    "ServingTarget",
    "get_serving_target",
]

# What an export asks for, and Triton's kind for it. "auto" leaves the kind to the target
# (KIND_AUTO for onnxruntime: the GPU where there is one, so one repository serves on a GPU box
# and in compose's CPU profile); "model" lets the model's own code place itself.
InstanceKind = Literal["auto", "cpu", "gpu", "model"]
TRITON_INSTANCE_KINDS: dict[str, str | None] = {"auto": None, "cpu": "KIND_CPU", "gpu": "KIND_GPU",
                                                "model": "KIND_MODEL"}


@dataclass(frozen=True)
class ServingTarget:
    """How a model is served: which Triton backend or platform runs which file.

    `model_filename` is the name the exported model gets inside the version folder, and also
    the config's `default_model_filename` when Triton loads it directly. `python_model` names a
    template in `resnet_serve/triton/python_model/` that is copied in as `model.py`, for targets
    where Triton's python backend runs the model file itself. `threads_parameter` is the config
    parameter through which the target's runtime takes its thread count. `max_batch_size` is
    the batch limit an entry gets unless another is asked for.
    """

    name: str
    backend: str
    platform: str
    model_filename: str
    instance_kind: str
    threads_parameter: str = ""
    python_model: str = ""
    description: str = ""
    max_batch_size: int = 64

    @property
    def copies_python_model(self) -> bool:
        return bool(self.python_model)

    @property
    def default_model_filename(self) -> str:
        # The python backend loads model.py; the model file is found by model.py itself.
        return "" if self.copies_python_model else self.model_filename


ONNXRUNTIME = ServingTarget(
    name="onnxruntime",
    backend="onnxruntime",
    platform="onnxruntime_onnx",
    model_filename="model.onnx",
    # KIND_AUTO: on the GPU where the container has one (compose's GPU profile reserves one),
    # on the CPU otherwise, so one repository loads on both; KIND_GPU would fail without a GPU.
    instance_kind="KIND_AUTO",
    threads_parameter="intra_op_thread_count",
    description="Triton's onnxruntime backend: the default, served by every official image, "
    "on the GPU when there is one",
)
OPENVINO = ServingTarget(
    name="openvino",
    backend="openvino",
    platform="",
    # The backend reads IR (model.xml) by default and ONNX when default_model_filename says
    # so (openvino_backend README, "Loading non default model format"). ONNX is read by the
    # image's own OpenVINO, so no IR written by another OpenVINO version has to match it.
    model_filename="model.onnx",
    # The official images run OpenVINO on Intel CPUs only (openvino_backend README).
    instance_kind="KIND_CPU",
    threads_parameter="INFERENCE_NUM_THREADS",
    description="Triton's OpenVINO backend: CPU deployments, INT8 (QDQ ONNX) and BF16 "
    "(HINT_BF16) on CPUs that have the instructions",
    # The backend fixes the model's batch to max_batch_size and fails any other total (see
    # resnet_serve.triton.contract.openvino): one image per execution.
    max_batch_size=1,
)
TENSORRT_PLAN = ServingTarget(
    name="tensorrt-plan",
    backend="tensorrt",
    platform="tensorrt_plan",
    model_filename="model.plan",
    # An engine only runs on the GPU model it was built for.
    instance_kind="KIND_GPU",
    description="Triton's tensorrt backend running a serialized engine (official container "
    "images, on the GPU model and TensorRT version that built it)",
)
PYTHON_ONNXRUNTIME = ServingTarget(
    name="python-onnxruntime",
    backend="python",
    platform="",
    model_filename="model.onnx",
    instance_kind="KIND_CPU",
    threads_parameter="intra_op_thread_count",
    python_model="model.py",
    description="Triton's python backend running the ONNX model in onnxruntime; only when asked "
    "for: the official images' python backend has no onnxruntime",
)
SERVING_TARGETS: dict[str, ServingTarget] = {
    target.name: target for target in (ONNXRUNTIME, OPENVINO, TENSORRT_PLAN, PYTHON_ONNXRUNTIME)
}


# What `export --gpu-accelerator` writes into an onnxruntime entry: the onnxruntime backend's
# documented configurations (onnxruntime_backend README, "ONNX Runtime with TensorRT
# optimization" and "... with CUDA Execution Provider optimization"). Its GPU instances build
# TensorRT engines on first use, cached in /tmp, which the deploy files mount writable.
GpuAccelerator = Literal["tensorrt-fp16", "tensorrt-fp32", "cuda"]
_TENSORRT_COMMON = {"max_workspace_size_bytes": str(1 << 30), "trt_engine_cache_enable": "1",
                    "trt_engine_cache_path": "/tmp/onnxruntime-tensorrt-cache"}
GPU_ACCELERATORS: dict[str, ExecutionAccelerator] = {
    "tensorrt-fp16": ExecutionAccelerator("tensorrt", {"precision_mode": "FP16", **_TENSORRT_COMMON}),
    "tensorrt-fp32": ExecutionAccelerator("tensorrt", {"precision_mode": "FP32", **_TENSORRT_COMMON}),
    "cuda": ExecutionAccelerator("cuda", {"cudnn_conv_use_max_workspace": "0", "use_ep_level_unified_stream": "1"}),
}


def get_serving_target(name: str) -> ServingTarget:
    """Look a target up by its name; RepositoryError lists the known ones."""
    try:
        return SERVING_TARGETS[name]
    except KeyError:
        raise RepositoryError(
            f"unknown serving target {name!r} (one of {', '.join(SERVING_TARGETS)})"
        ) from None


@dataclass(frozen=True)
class ServingOptions:
    """How a repository entry serves its model, checked once, on construction.

    Attributes:
        target: the serving target: ``onnxruntime`` (the default) or ``openvino`` for the
            official container, ``python-onnxruntime`` for Triton's python backend,
            ``tensorrt-plan`` for a TensorRT engine (what ``export --format tensorrt`` serves).
        version: the version folder to write; None takes the next number. Earlier versions
            stay on disk.
        replace: replace the whole entry (all its versions) instead of adding a version.
        retarget: let this version change the target where Triton loads the same file from
            every version under both (``model.onnx`` for onnxruntime and openvino).
        version_policy: the config's version policy (None: Triton's, the latest version).
        max_batch_size / instances / instance_kind: Triton's batching limit (None: the target's,
            64, or 1 for openvino, whose backend fails any other total batch) and instance group.
        preferred_batch_sizes / max_queue_delay_us: the dynamic batcher's settings.
        threads: intra-op threads per instance (the key the target's backend reads).
        bf16: OpenVINO computes in bfloat16 (openvino target only).
        batch_padding: openvino: ENABLE_BATCH_PADDING, which lets max_batch_size exceed 1 by
            padding every execution to it (see resnet_serve.triton.contract.openvino).
        gpu_accelerator: onnxruntime: the execution accelerator its GPU instances use,
            ``tensorrt-fp16``, ``tensorrt-fp32`` or ``cuda`` (None: onnxruntime's CUDA
            provider alone).
        warmup_images: real test images written as Triton warm-up requests (0 for none).
        image_pipeline: also write ``<name>-preprocess`` and the ensemble ``<name>-image``,
            which take encoded JPEG/PNG bytes.
        exact_decode: serve preprocessing that decodes every pixel of an encoded file and
            resizes it exactly as torchvision's evaluation transform does, instead of decoding
            large JPEGs at a reduced scale (``Preprocessing.exact_decode``); the image pipeline
            and the clients that read the served config both follow it. Only switches it on:
            an entry whose preprocessing already decodes exactly keeps doing so.

    Raises:
        RepositoryError: a value out of range, or a setting its target does not take.
    """

    target: str = "onnxruntime"
    version: int | None = None
    replace: bool = False
    retarget: bool = False
    version_policy: VersionPolicy | None = None
    max_batch_size: int | None = None
    instances: int = 1
    instance_kind: InstanceKind = "auto"
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 100
    threads: int | None = None
    bf16: bool = False
    batch_padding: bool = False
    gpu_accelerator: GpuAccelerator | None = None
    warmup_images: int = 4
    image_pipeline: bool = True
    exact_decode: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "preferred_batch_sizes", tuple(int(s) for s in self.preferred_batch_sizes))
        target = get_serving_target(self.target)
        if self.instance_kind not in TRITON_INSTANCE_KINDS:
            raise RepositoryError(
                f"unknown instance kind {self.instance_kind!r}; choose one of {', '.join(TRITON_INSTANCE_KINDS)}"
            )
        if self.max_batch_size is None:
            object.__setattr__(self, "max_batch_size", target.max_batch_size)
        for option in ("max_batch_size", "instances"):
            if getattr(self, option) < 1:
                raise RepositoryError(f"{option} must be ≥ 1, got {getattr(self, option)}")
        if self.version is not None and self.version < 1:
            raise RepositoryError(f"model versions start at 1, got {self.version}")
        if self.replace and self.version is not None:
            raise RepositoryError("--replace writes a new entry from version 1; it takes no --version")
        too_big = [size for size in self.preferred_batch_sizes if not 1 <= size <= self.max_batch_size]
        if too_big:
            raise RepositoryError(
                f"preferred batch sizes {too_big} are not within 1..{self.max_batch_size} (the max batch size)"
            )
        for option in ("max_queue_delay_us", "warmup_images"):
            if getattr(self, option) < 0:
                raise RepositoryError(f"{option} must be ≥ 0, got {getattr(self, option)}")
        if self.threads is not None:
            if self.threads < 1:
                raise RepositoryError(f"threads must be ≥ 1, got {self.threads}")
            if not target.threads_parameter:
                raise RepositoryError(f"the {target.name} target takes no thread count")
        for option, wants in (("bf16", OPENVINO), ("batch_padding", OPENVINO), ("gpu_accelerator", ONNXRUNTIME)):
            if getattr(self, option) and target is not wants:
                raise RepositoryError(f"{option} is an option of the {wants.name} target, not of {target.name}")
        if self.gpu_accelerator is not None and self.gpu_accelerator not in GPU_ACCELERATORS:
            raise RepositoryError(
                f"unknown GPU accelerator {self.gpu_accelerator!r}; choose one of {', '.join(GPU_ACCELERATORS)}"
            )

    @property
    def serving_target(self) -> ServingTarget:
        return get_serving_target(self.target)

    @property
    def triton_instance_kind(self) -> str | None:
        return TRITON_INSTANCE_KINDS[self.instance_kind]

    def served_preprocessing(self, preprocessing: Preprocessing) -> Preprocessing:
        """``preprocessing`` as the entry serves it (``exact_decode`` switched on when asked for)."""
        return dataclasses.replace(preprocessing, exact_decode=True) if self.exact_decode else preprocessing
