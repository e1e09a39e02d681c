"""Options several commands share, defined once: the Annotated types of single options, and
option bundles, dataclasses whose fields are options, which a command takes as one parameter.

``bundled`` expands a parameter annotated with a bundle into the bundle's fields (as Typer
options, defaulting to the fields of the parameter's default instance, so a command can change
a default, as `classify` does for the protocol), and hands the command the bundle built back.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import typer

from resnet_serve.client.connection import ConnectionOptions
from resnet_serve.client.stability import StabilityRule
from resnet_serve.runtimes import RUNTIMES
from resnet_serve.selection import ImageSelection
from resnet_serve.triton import ADMIN_KEY_VARIABLE
from resnet_serve.triton.serving import SERVING_TARGETS, TENSORRT_PLAN, GpuAccelerator, InstanceKind, ServingOptions

__all__ = [
    "DEFAULT_REPOSITORY",
    "AskedInstanceKind",
    "CalibrationImagesOption",
    "Connection",
    "DataOption",
    "FlipOption",
    "JsonOption",
    "Measurement",
    "ModelOption",
    "OptionBundle",
    "PadOption",
    "RepositoryOption",
    "RtolOption",
    "RuntimeName",
    "Selection",
    "Serving",
    "bundled",
    "levels",
]

DEFAULT_REPOSITORY = Path("model_repository")
_SELECTION = ImageSelection()
_SERVING = ServingOptions()
_STABILITY = StabilityRule()

RepositoryOption = Annotated[Path, typer.Option(help="Triton model repository.")]
ModelOption = Annotated[
    str | None, typer.Option("--model", "-m", help="Served model name (default: the server's only ready model).")
]
JsonOption = Annotated[Path | None, typer.Option("--json", help="Also write the result as JSON to this file.")]
PadOption = Annotated[int | None, typer.Option(
    help="Random crops: pad each side by N pixels, crop back; 0 turns them off (default: the recipe's)."
)]
FlipOption = Annotated[bool | None, typer.Option(
    "--flip/--no-flip",
    help="Random horizontal flips; --no-flip for digits and text, which a mirror changes (default: the recipe's).",
)]
DataOption = Annotated[Path | None, typer.Option(
    "--data",
    help="An IDX folder, a CIFAR-10/100 archive or folder, or an ImageFolder tree of images of any size, prepared "
    "as the model says (default: Fashion-MNIST from the Debian package).",
)]
CalibrationImagesOption = Annotated[
    int, typer.Option(help="int8: real training images to calibrate on (a seeded sample).")
]
RtolOption = Annotated[float, typer.Option(
    help="Largest logit difference allowed from the original model, as a fraction of its largest logit; top-1 "
    "classes must agree, up to near-ties within it."
)]
# The choices of `verify --reference/--candidate`, from the one runtime registry.
RuntimeName = Literal[tuple(RUNTIMES)]  # built from the registry when the CLI is imported
# The targets an ONNX file can be served by; an engine is always served by tensorrt-plan.
OnnxTargetName = Literal[tuple(name for name in SERVING_TARGETS if name != TENSORRT_PLAN.name)]
# The kinds a user asks for; KIND_MODEL is only kept from an entry that has it (tune rewrites it).
AskedInstanceKind = Literal[tuple(kind for kind in typing.get_args(InstanceKind) if kind != "model")]


class OptionBundle:
    """A dataclass of options a command takes as one parameter (see ``bundled``)."""

    is_bundle: ClassVar[bool] = True


def levels(text: str, *, option: str | None = None) -> list[int]:
    """Comma-separated integers ("1,2,4")."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint=option) from None


@dataclasses.dataclass(frozen=True)
class Connection(OptionBundle):
    """How a client reaches a server."""

    protocol: Annotated[str, typer.Option("--protocol", "-p", help="http or grpc.")] = "grpc"
    url: Annotated[str | None, typer.Option(
        help="Server address [scheme://]host[:port] (default localhost:8000 for http, :8001 for grpc); https:// or "
        "grpcs:// connect over TLS, and nothing else does."
    )] = None
    header: Annotated[list[str] | None, typer.Option(
        "--header", "-H",
        help="K=V: a header sent with every request (an auth token, or Host for KServe's routing); repeat it for "
        "more.",
    )] = None
    ca_cert: Annotated[Path | None, typer.Option(
        help="TLS: a PEM file of the CA that signed the server's certificate (default: the system's CAs)."
    )] = None
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="TLS over HTTP: accept any certificate (encrypted, but not verified)."
    )] = False
    admin_key: Annotated[str | None, typer.Option(
        "--admin-key", envvar=ADMIN_KEY_VARIABLE, show_envvar=False,
        help="The key of the server's restricted APIs (model repository, shared memory, logging, trace); also read "
        "from RESNET_SERVE_ADMIN_KEY.",
    )] = None

    def options(self) -> ConnectionOptions:
        """The client's ConnectionOptions (--header K=V parsed)."""
        pairs = {}
        for header in self.header or []:
            name, separator, value = header.partition("=")
            if not separator or not name.strip():
                raise typer.BadParameter(f"expected K=V, got {header!r}", param_hint="--header")
            pairs[name.strip()] = value.strip()
        return ConnectionOptions(headers=pairs, ca_cert=self.ca_cert, insecure=self.insecure, admin_key=self.admin_key)


@dataclasses.dataclass(frozen=True)
class Selection(OptionBundle):
    """The real test images that check each step."""

    data: DataOption = None
    verify_images: Annotated[
        int, typer.Option(help="Real test images (the first ones) that check each step.")
    ] = _SELECTION.verify_images

    def images(self, **more: Any) -> ImageSelection:
        """The library's ImageSelection, with ``more`` of its fields (calibration_images)."""
        return ImageSelection(data_dir=self.data, verify_images=self.verify_images, **more)


@dataclasses.dataclass(frozen=True)
class Serving(OptionBundle):
    """How `export` serves the model (ServingOptions, field for field)."""

    target: Annotated[OnnxTargetName, typer.Option(
        help="onnxruntime (Triton's onnxruntime backend, CPU or GPU), openvino (Triton's OpenVINO backend: CPU, "
        "INT8, BF16) or python-onnxruntime (Triton's python backend running onnxruntime, only where it is "
        "installed). An engine (--format tensorrt) is served by tensorrt-plan."
    )] = "onnxruntime"
    version: Annotated[int | None, typer.Option(
        help="Version folder to write (default: the next number); earlier versions stay."
    )] = None
    replace: Annotated[bool, typer.Option(
        "--replace", help="Replace the whole entry, all its versions, instead of adding a version."
    )] = False
    max_batch_size: Annotated[int | None, typer.Option(
        help="Largest batch the server accepts (default: 64; 1 for openvino, whose backend fails any other total "
        "batch)."
    )] = None
    instances: Annotated[int, typer.Option(help="Model instances in the server.")] = _SERVING.instances
    instance_kind: Annotated[AskedInstanceKind, typer.Option(
        help="auto (the GPU where there is one), cpu or gpu."
    )] = _SERVING.instance_kind
    preferred_batch_sizes: Annotated[str, typer.Option(
        help="Dynamic batcher's preferred batch sizes, comma-separated (default: none)."
    )] = ""
    max_queue_delay_us: Annotated[int, typer.Option(
        help="Longest a request waits for others to batch with, in µs."
    )] = _SERVING.max_queue_delay_us
    threads: Annotated[int | None, typer.Option(
        help="Intra-op threads per instance (default: the backend's)."
    )] = None
    bf16: Annotated[bool, typer.Option("--bf16", help="openvino target: compute in bfloat16.")] = False
    batch_padding: Annotated[bool, typer.Option(
        "--batch-padding",
        help="openvino target: ENABLE_BATCH_PADDING, so a --max-batch-size above 1 pads every execution to it (its "
        "pad size is never reset: see docs/backend-contract.md).",
    )] = False
    gpu_accelerator: Annotated[GpuAccelerator | None, typer.Option(
        help="onnxruntime target: the execution accelerator of its GPU instances: tensorrt-fp16, tensorrt-fp32 "
        "(onnxruntime's TensorRT provider, engines cached in /tmp) or cuda."
    )] = None
    warmup_images: Annotated[int, typer.Option(
        help="Real test images written as Triton warm-up requests (0: none)."
    )] = _SERVING.warmup_images
    image_pipeline: Annotated[bool, typer.Option(
        "--image-pipeline/--no-image-pipeline",
        help="Also write <name>-preprocess and the ensemble <name>-image, which take encoded JPEG/PNG files.",
    )] = True
    exact_decode: Annotated[bool, typer.Option(
        "--exact-decode",
        help="Serve preprocessing that decodes every pixel of an image file, as torchvision's eval transform does, "
        "instead of decoding large JPEGs at a reduced scale (docs/image-path.md).",
    )] = False

    def settings(self) -> ServingOptions:
        fields = dataclasses.asdict(self)
        fields["preferred_batch_sizes"] = tuple(levels(self.preferred_batch_sizes, option="--preferred-batch-sizes"))
        return ServingOptions(**fields)


@dataclasses.dataclass(frozen=True)
class Measurement(OptionBundle):
    """How long `bench` measures each level, and `tune` each configuration, and when it is stable."""

    warmup: Annotated[float, typer.Option(
        help="Warm-up seconds per level or configuration, not measured (resnet-serve engine)."
    )] = 2.0
    measurement_interval: Annotated[int, typer.Option(
        "--measurement-interval", help="Measurement window in milliseconds (perf_analyzer's -p; here -p is --protocol)."
    )] = 5000
    stability_percentage: Annotated[float, typer.Option(
        "--stability-percentage", "-s",
        help="The last 3 windows must agree within this percentage in throughput and p99.",
    )] = _STABILITY.percentage
    max_trials: Annotated[int, typer.Option(
        "--max-trials", "-r", help="Windows per level or configuration before it is reported unstable."
    )] = _STABILITY.max_trials

    @property
    def seconds(self) -> float:
        return self.measurement_interval / 1000

    def rule(self) -> StabilityRule:
        return StabilityRule(percentage=self.stability_percentage, max_trials=self.max_trials)


def bundled(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` with each parameter annotated with an OptionBundle expanded into the
    bundle's fields, as Typer sees them; the call gets the bundle built back from them."""
    signature = inspect.signature(function)
    hints = typing.get_type_hints(function, include_extras=True)
    parameters: list[inspect.Parameter] = []
    bundles: dict[str, tuple[type, list[str]]] = {}
    for name, parameter in signature.parameters.items():
        hint = hints[name]
        if isinstance(hint, type) and getattr(hint, "is_bundle", False):
            default = parameter.default if parameter.default is not inspect.Parameter.empty else hint()
            fields = typing.get_type_hints(hint, include_extras=True)
            names = [field.name for field in dataclasses.fields(hint)]
            parameters += [inspect.Parameter(field, inspect.Parameter.KEYWORD_ONLY, annotation=fields[field],
                                             default=getattr(default, field)) for field in names]
            bundles[name] = (hint, names)
        else:
            parameters.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hint))

    @functools.wraps(function)
    def wrapper(**values: Any) -> Any:
        for name, (bundle, names) in bundles.items():
            values[name] = bundle(**{field: values.pop(field) for field in names})
        return function(**values)

    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper
