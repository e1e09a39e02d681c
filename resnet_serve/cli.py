"""The `resnet-serve` command line: one thin command per pipeline stage.

This is the only module that prints or exits. Every command hands its work to a library
function and turns our errors into one readable line and a non-zero exit code.
"""

from __future__ import annotations

import functools
import json
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from resnet_serve import __version__
from resnet_serve.errors import ClientError, OutputError, ResnetServeError, first_line
from resnet_serve.export import CalibrationMethod, Exporter, ExportFormat, Precision
from resnet_serve.files import check_output_file, check_output_folder, replacing_atomically
from resnet_serve.parity import DEFAULT_MIN_AGREEMENT, DEFAULT_RTOL, ParityResult, Tolerance, check_parity
from resnet_serve.rich_progress import RichReporter
from resnet_serve.runtimes import RUNTIMES
from resnet_serve.selection import ImageSelection
from resnet_serve.triton.config import SERVING_TARGETS, TENSORRT_PLAN, InstanceKind
from resnet_serve.tuning.space import SearchSpace

app = typer.Typer(
    name="resnet-serve",
    help="Train or load a ResNet, fold and export it, serve it on Triton, and prove it over HTTP/gRPC.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
# Pillow warns about what it reads (damaged TIFF tags, sizes over its own pixel limit, which are
# all over ours); a file that cannot be used is refused with one line, which the warnings would bury.
warnings.filterwarnings("ignore", module=r"PIL(\.|$)")

DEFAULT_REPOSITORY = Path("model_repository")
ProtocolOption = Annotated[str, typer.Option("--protocol", "-p", help="http or grpc.")]
UrlOption = Annotated[str | None, typer.Option(help="Server address [scheme://]host[:port] (default localhost:8000 for http, :8001 for grpc); https:// or grpcs:// connect over TLS, and nothing else does.")]
HeaderOption = Annotated[list[str] | None, typer.Option("--header", "-H", help="K=V: a header sent with every request (an auth token, or Host for KServe's routing); repeat it for more.")]
CaCertOption = Annotated[Path | None, typer.Option(help="TLS: a PEM file of the CA that signed the server's certificate (default: the system's CAs).")]
InsecureOption = Annotated[bool, typer.Option("--insecure", help="TLS over HTTP: accept any certificate (encrypted, but not verified).")]
AdminKeyOption = Annotated[str | None, typer.Option("--admin-key", envvar="RESNET_SERVE_ADMIN_KEY", show_envvar=False, help="The key of the server's restricted APIs (model repository, shared memory, logging, trace); also read from RESNET_SERVE_ADMIN_KEY.")]
ModelOption = Annotated[str | None, typer.Option("--model", "-m", help="Served model name (default: the server's only ready model).")]
JsonOption = Annotated[Path | None, typer.Option("--json", help="Also write the result as JSON to this file.")]
PadOption = Annotated[int | None, typer.Option(help="Random crops: pad each side by N pixels, crop back; 0 turns them off (default: the recipe's).")]
FlipOption = Annotated[bool | None, typer.Option("--flip/--no-flip", help="Random horizontal flips; --no-flip for digits and text, which a mirror changes (default: the recipe's).")]
DataOption = Annotated[Path | None, typer.Option("--data", help="An IDX folder, a CIFAR-10/100 archive or folder, or an ImageFolder tree of images of any size, prepared as the model says (default: Fashion-MNIST from the Debian package).")]
# One image-selection policy and one tolerance for fold, export and verify: the same defaults everywhere.
_SELECTION = ImageSelection()
VerifyImagesOption = Annotated[int, typer.Option(help="Real test images (the first ones) that check each step.")]
CalibrationImagesOption = Annotated[int, typer.Option(help="int8: real training images to calibrate on (a seeded sample).")]
RtolOption = Annotated[float, typer.Option(help="Largest logit difference allowed from the original model, as a fraction of its largest logit; top-1 classes must agree, up to near-ties within it.")]
# The choices of `verify --reference/--candidate`, from the one runtime registry.
RuntimeName = Literal[tuple(RUNTIMES)]  # built from the registry when the CLI is imported
# The targets an ONNX file can be served by; an engine is always served by tensorrt-plan.
OnnxTargetName = Literal[tuple(name for name in SERVING_TARGETS if name != TENSORRT_PLAN.name)]
_RUNTIME_HELP = "; ".join(f"{name}: {kind.help}" for name, kind in RUNTIMES.items())
_TUNING_SPACE = SearchSpace()


def _command(function: Callable[..., Any]) -> Callable[..., Any]:
    """Turn our errors (and Ctrl-C) into one line on stderr and an exit code, never a traceback."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except ResnetServeError as error:
            # Escaped: a message may hold brackets ([::1]:8000, [scheme://]) that rich would read as markup.
            err_console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def _check_outputs(*files: Path | None, folders: tuple[Path | None, ...] = ()) -> None:
    """Refuse unusable output paths (a folder for a file, a file for a folder, a parent that
    is a file, no write permission) before a command does any work, so that no training run
    or export is lost to a path that cannot be written at its end. None is an option not given."""
    for path in files:
        if path is not None:
            check_output_file(path)
    for folder in folders:
        if folder is not None:
            check_output_folder(folder)


def _connection(headers: list[str] | None, ca_cert: Path | None, insecure: bool, admin_key: str | None) -> Any:
    """The client's ConnectionOptions from the command line's --header K=V, --ca-cert, --insecure, --admin-key."""
    from resnet_serve.client.connection import ConnectionOptions

    pairs = {}
    for header in headers or []:
        name, separator, value = header.partition("=")
        if not separator or not name.strip():
            raise typer.BadParameter(f"expected K=V, got {header!r}", param_hint="--header")
        pairs[name.strip()] = value.strip()
    return ConnectionOptions(headers=pairs, ca_cert=ca_cert, insecure=insecure, admin_key=admin_key)


def _write_json(path: Path | None, result: Any) -> None:
    if path is None:
        return
    data = result.to_dict() if hasattr(result, "to_dict") else asdict(result) if is_dataclass(result) else result
    try:
        with replacing_atomically(path) as temporary:
            temporary.write_text(json.dumps(data, indent=2, default=str) + "\n")
    except OSError as error:
        # Checked before the work; this is what changed since (a full disk, a folder made there).
        raise OutputError(f"cannot write {path}: {first_line(error)}") from None


def _version(value: bool) -> None:
    if value:
        console.print(f"resnet-serve {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Train or load a ResNet, fold and export it, serve it on Triton, and prove it over HTTP/gRPC."""


@app.command()
@_command
def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")] = False,
) -> None:
    """List every architecture with its parameters and MACs at its default input size."""
    from resnet_serve.models import list_models

    infos = list_models()
    if as_json:
        print(json.dumps([info.to_dict() for info in infos], indent=2))
        return
    table = Table(caption="MACs: multiply-accumulates of one image at the input size")
    table.add_column("name", no_wrap=True)
    table.add_column("block")
    table.add_column("shortcut")
    for column in ("params", "GMACs", "input"):
        table.add_column(column, justify="right", no_wrap=True)
    for info in infos:
        table.add_row(
            info.name, info.block, info.shortcut or "none",
            f"{info.params:,}", f"{info.macs / 1e9:.3f}", f"{info.default_input_size}²",
        )
    console.print(table)


@app.command()
@_command
def train(
    arch: Annotated[str, typer.Option("--arch", "-a", help="Architecture (see `resnet-serve models`).")] = "resnet20",
    data: DataOption = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint to write (.safetensors).")] = Path("checkpoints/model.safetensors"),
    epochs: Annotated[float | None, typer.Option(help="Epochs, fractions allowed (default: the recipe's).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Weight decay.")] = None,
    limit: Annotated[int | None, typer.Option(help="Use only the first N training images (quick runs).")] = None,
    pad: PadOption = None,
    flip: FlipOption = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    recipe: Annotated[str, typer.Option(help="demo (Fashion-MNIST in minutes), cifar (the paper's: step schedule, 164 epochs) or imagenet (cosine, warm-up, label smoothing).")] = "demo",
    resume: Annotated[Path | None, typer.Option(help="Continue the interrupted run that wrote this checkpoint (same options); usually the --output path.")] = None,
    no_skip: Annotated[bool, typer.Option("--no-skip", help="Remove every shortcut: train the architecture's plain twin.")] = False,
    amp: Annotated[bool, typer.Option("--amp/--no-amp", help="bfloat16 autocast when training on a CUDA GPU (no effect on the CPU).")] = True,
    json_path: JsonOption = None,
) -> None:
    """Train an architecture on Fashion-MNIST (or a dataset given by --data) and write a checkpoint."""
    from resnet_serve.models import architecture_info
    from resnet_serve.train import train_on_folder

    _check_outputs(output, json_path)
    if no_skip:
        # The plain twin's own name, so the checkpoint rebuilds the network that was trained.
        arch = architecture_info(arch, residual=False).name
    result = train_on_folder(
        architecture=arch, data_dir=data, output=output, recipe=recipe, epochs=epochs, batch_size=batch_size,
        lr=lr, weight_decay=weight_decay, limit=limit, pad=pad, flip=flip, seed=seed, amp=amp, resume_from=resume,
        reporter=RichReporter(err_console),
    )
    console.print(
        f"[green]✓[/] {arch}: test accuracy {result.test_accuracy:.2%} after {result.epochs} epochs "
        f"in {result.seconds:.0f} s → {result.checkpoint}"
    )
    _write_json(json_path, result)


@app.command("import")
@_command
def import_weights(
    weights: Annotated[Path, typer.Argument(help="torchvision/timm state dict (.pth, .pt, .bin) or a .safetensors file.")],
    arch: Annotated[str, typer.Option("--arch", "-a", help="Architecture the weights are for (see `resnet-serve models`).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint to write (.safetensors).")],
    num_classes: Annotated[int | None, typer.Option(help="Classes of the head; another number than the weights' replaces it with an untrained one (to fine-tune).")] = None,
    classes: Annotated[str | None, typer.Option(help="Class names: 'imagenet', or a file with one per line (default: ImageNet's for 1000 classes, else class_0…).")] = None,
) -> None:
    """Import torchvision/timm weights into a resnet-serve checkpoint, ready for `export`."""
    from resnet_serve.checkpoints import imagenet_class_names, import_foreign_weights, read_class_names, save_checkpoint

    _check_outputs(output)
    class_names = None
    if classes is not None:
        class_names = imagenet_class_names() if classes == "imagenet" else read_class_names(classes)
    imported = import_foreign_weights(weights, architecture=arch, num_classes=num_classes, class_names=class_names)
    save_checkpoint(output, model=imported.model, meta=imported.meta)
    meta = imported.meta
    console.print(
        f"[green]✓[/] {meta.architecture}: {meta.num_classes} classes, input {'×'.join(map(str, meta.input_shape))} "
        f"from {imported.source} → {output}"
    )
    if imported.replaced_head:
        err_console.print(f"note: the {meta.num_classes}-class head is freshly initialised (untrained); fine-tune before serving")


def _parity_line(parity: ParityResult) -> str:
    return f"max-abs {parity.max_abs:.1e} ({parity.max_abs_relative:.1e} of the largest logit)"


@app.command()
@_command
def fold(
    source: Annotated[Path, typer.Argument(help="A checkpoint (.safetensors) or an ONNX file (.onnx) to fold.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Folded ONNX to write (default: SOURCE with its last suffix replaced by .folded.onnx; never SOURCE itself).")] = None,
    data: DataOption = None,
    verify_images: VerifyImagesOption = _SELECTION.verify_images,
    rtol: RtolOption = DEFAULT_RTOL,
    json_path: JsonOption = None,
) -> None:
    """Fold every Conv→BatchNorm pair into the convolution and check the result on real images.

    An ONNX file without preprocessing metadata gets the test images resized to its input size, with mean 0.5 and std 0.25.
    """
    from resnet_serve.pipeline import default_fold_output, fold_file

    output = output or default_fold_output(source)
    _check_outputs(output, json_path)
    report = fold_file(
        source, output, selection=ImageSelection(data_dir=data, verify_images=verify_images), tolerance=Tolerance(rtol=rtol)
    )
    console.print(
        f"[green]✓[/] folded {report.folded} BatchNorms; parameters {report.params_before:,} → "
        f"{report.params_after:,}; folded vs unfolded {_parity_line(report.fold_parity)} on "
        f"{report.fold_parity.n_images} test images ({report.preprocessing} preprocessing)"
    )
    if report.onnx_parity is not None:
        console.print(f"[green]✓[/] onnxruntime vs unfolded PyTorch {_parity_line(report.onnx_parity)}")
    for name, reason in report.unfolded.items():
        console.print(f"  kept {name}: {reason}", highlight=False)
    console.print(f"[green]✓[/] wrote {report.output} ({report.batchnorm_nodes} BatchNormalization nodes left)")
    _write_json(json_path, report)


@app.command()
@_command
def export(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint written by `resnet-serve train`.")],
    repository: Annotated[Path, typer.Option(help="Triton model repository to write into.")] = DEFAULT_REPOSITORY,
    name: Annotated[str | None, typer.Option(help="Model name in the repository (default: the checkpoint's file name).")] = None,
    target: Annotated[OnnxTargetName, typer.Option(help="onnxruntime (Triton's onnxruntime backend, CPU or GPU), openvino (Triton's OpenVINO backend: CPU, INT8, BF16) or python-onnxruntime (Triton's python backend running onnxruntime, only where it is installed). An engine (--format tensorrt) is served by tensorrt-plan.")] = "onnxruntime",
    version: Annotated[int | None, typer.Option(help="Version folder to write (default: the next number); earlier versions stay.")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Replace the whole entry, all its versions, instead of adding a version.")] = False,
    max_batch_size: Annotated[int, typer.Option(help="Largest batch the server accepts.")] = 64,
    instances: Annotated[int, typer.Option(help="Model instances in the server.")] = 1,
    instance_kind: Annotated[InstanceKind, typer.Option(help="auto (the GPU where there is one), cpu or gpu.")] = "auto",
    preferred_batch_sizes: Annotated[str, typer.Option(help="Dynamic batcher's preferred batch sizes, comma-separated (default: none).")] = "",
    max_queue_delay_us: Annotated[int, typer.Option(help="Longest a request waits for others to batch with, in µs.")] = 100,
    threads: Annotated[int | None, typer.Option(help="Intra-op threads per instance (default: the backend's).")] = None,
    bf16: Annotated[bool, typer.Option("--bf16", help="openvino target: compute in bfloat16.")] = False,
    warmup_images: Annotated[int, typer.Option(help="Real test images written as Triton warm-up requests (0: none).")] = 4,
    image_pipeline: Annotated[bool, typer.Option("--image-pipeline/--no-image-pipeline", help="Also write <name>-preprocess and the ensemble <name>-image, which take encoded JPEG/PNG files.")] = True,
    exact_decode: Annotated[bool, typer.Option("--exact-decode", help="Serve preprocessing that decodes every pixel of an image file, as torchvision's eval transform does, instead of decoding large JPEGs at a reduced scale (docs/image-path.md).")] = False,
    opset: Annotated[int | None, typer.Option(help="ONNX opset (default: 17 with the legacy exporter, 18 with dynamo).")] = None,
    exporter: Annotated[Exporter, typer.Option(help="legacy (TorchScript, fast, opset 10-20) or dynamo (torch.export, opset 18+).")] = "legacy",
    dynamic_hw: Annotated[bool, typer.Option("--dynamic-hw", help="Also make the ONNX input's height and width dynamic.")] = False,
    simplify: Annotated[bool, typer.Option("--simplify", help="Simplify the graph with onnxruntime's basic optimisations, checked against the unsimplified graph.")] = False,
    data: DataOption = None,
    verify_images: VerifyImagesOption = _SELECTION.verify_images,
    rtol: RtolOption = DEFAULT_RTOL,
    export_format: Annotated[ExportFormat, typer.Option("--format", help="onnx, or tensorrt: build the verified ONNX into an engine served by Triton's tensorrt backend (needs TensorRT and an NVIDIA GPU).")] = "onnx",
    precision: Annotated[Precision | None, typer.Option(help="onnx: fp32, int8 (static QDQ) or fp16; tensorrt: fp32, fp16 or int8. INT8 is calibrated on real training images (default: fp32 for onnx, fp16 for tensorrt).")] = None,
    min_batch: Annotated[int, typer.Option(help="tensorrt: smallest batch of the optimisation profile.")] = 1,
    opt_batch: Annotated[int | None, typer.Option(help="tensorrt: batch the engine is tuned for (default: the max batch).")] = None,
    max_batch: Annotated[int | None, typer.Option(help="tensorrt: largest batch of the profile (default: --max-batch-size).")] = None,
    workspace_mb: Annotated[int, typer.Option(help="tensorrt: builder workspace limit in MiB.")] = 1024,
    timing_cache: Annotated[Path | None, typer.Option(help="tensorrt: timing cache file, read before and updated after the build.")] = None,
    calibration_images: CalibrationImagesOption = _SELECTION.calibration_images,
    calibration_method: Annotated[CalibrationMethod, typer.Option(help="onnx int8: minmax, entropy or percentile.")] = "minmax",
    min_agreement: Annotated[float, typer.Option(help="onnx int8/fp16: least top-1 agreement with the FP32 ONNX on the test images, a fraction.")] = DEFAULT_MIN_AGREEMENT,
    calibration_cache: Annotated[Path | None, typer.Option(help="tensorrt int8: calibration cache file, reused when present.")] = None,
    json_path: JsonOption = None,
) -> None:
    """Fold BatchNorm, export ONNX, verify it against PyTorch, and write the Triton repository entry."""
    from resnet_serve.export.onnx import OnnxOptions
    from resnet_serve.export.tensorrt import EngineOptions
    from resnet_serve.pipeline import ExportOptions, ServingOptions, export_to_repository

    _check_outputs(json_path, timing_cache, calibration_cache, folders=(repository,))
    options = ExportOptions(
        name=name, format=export_format, precision=precision,
        serving=ServingOptions(
            target=target, version=version, replace=replace, max_batch_size=max_batch_size, instances=instances,
            instance_kind=instance_kind, preferred_batch_sizes=tuple(_levels(preferred_batch_sizes)),
            max_queue_delay_us=max_queue_delay_us, threads=threads, bf16=bf16, warmup_images=warmup_images,
            image_pipeline=image_pipeline, exact_decode=exact_decode,
        ),
        onnx=OnnxOptions(exporter=exporter, opset=opset, dynamic_hw=dynamic_hw, simplify=simplify),
        tolerance=Tolerance(rtol=rtol),
        selection=ImageSelection(data_dir=data, verify_images=verify_images, calibration_images=calibration_images),
        calibration_method=calibration_method, min_agreement=min_agreement,
        engine=EngineOptions(
            min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch, workspace_bytes=workspace_mb << 20,
            timing_cache_path=timing_cache, calibration_cache_path=calibration_cache,
        ) if export_format == "tensorrt" else None,
    )
    report = export_to_repository(
        checkpoint=checkpoint, repository=repository, options=options, reporter=RichReporter(err_console)
    )
    onnx_parity = report.onnx_parity
    console.print(
        f"[green]✓[/] folded {report.folding.folded} BatchNorms ({_parity_line(report.fold_parity)}); "
        f"ONNX vs PyTorch {_parity_line(onnx_parity)}, top-1 agreement {onnx_parity.top1_agreement:.2%} "
        f"on {onnx_parity.n_images} test images at batch {'/'.join(str(p.batch_size) for p in onnx_parity.per_batch)}"
    )
    if report.precision_parity is not None:
        parity = report.precision_parity
        console.print(
            f"[green]✓[/] {report.precision} ONNX vs FP32 ONNX: top-1 agreement {parity.top1_agreement:.2%}, "
            f"max-abs {parity.max_abs:.2g} on {parity.n_images} test images"
        )
    if report.engine is not None:
        console.print(
            f"[green]✓[/] built a {report.precision} TensorRT engine ({report.engine.size_bytes:,} bytes) "
            f"in {report.engine.build_seconds:.0f} s"
        )
    console.print(f"[green]✓[/] wrote {report.entry} version {report.version} ({report.target})")
    if report.image_pipeline is not None:
        console.print(f"[green]✓[/] wrote {', '.join(str(path) for path in report.image_pipeline)} (encoded images in)")
    _write_json(json_path, report)


@app.command()
@_command
def serve(
    repository: Annotated[Path, typer.Option(help="Triton model repository to serve.")] = DEFAULT_REPOSITORY,
    http_port: Annotated[int, typer.Option(help="HTTP/REST port.")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port.")] = 8002,
    address: Annotated[str, typer.Option(help="Address to listen on: an IPv4 or IPv6 address or a host name; 0.0.0.0 or :: for every interface (the embedded server is for local use: see Security in the README).")] = "127.0.0.1",
    log_file: Annotated[Path | None, typer.Option(help="Write the server log here.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the models to load.")] = 180.0,
    admin_key: AdminKeyOption = None,
    restart: Annotated[bool, typer.Option("--restart/--no-restart", help="Restart tritonserver when it dies, after a backoff that doubles (1 s, 2 s, 4 s, …).")] = True,
    max_restarts: Annotated[int, typer.Option(help="Give up after more than this many crashes within 5 minutes.")] = 5,
) -> None:
    """Run the embedded Triton Inference Server on a repository until Ctrl-C or SIGTERM.

    The repository is only read: onnxruntime and OpenVINO entries run through python-backend
    proxies in a private copy, and entries this server cannot run are skipped. The restricted
    APIs need the admin key (generated and printed unless given)."""
    from resnet_serve.triton import ADMIN_KEY_HEADER, GRPC_ADMIN_KEY_HEADER
    from resnet_serve.triton.server import TritonServer, generate_admin_key
    from resnet_serve.triton.supervisor import RestartPolicy, ServerCrashed, Supervisor, SupervisorEvent

    policy = RestartPolicy(max_restarts=max_restarts)

    def report(event: SupervisorEvent) -> None:
        if isinstance(event, ServerCrashed):
            if event.restart_in_s is not None:  # when it gives up, its error is the line
                tail = f": {' | '.join(event.log_tail)}" if event.log_tail else ""
                err_console.print(
                    f"[bold red]crashed:[/] {escape(event.reason + tail)}; removed {event.removed_regions} shared-memory "
                    f"region(s); restarting in {event.restart_in_s:g} s (crash {event.crashes_in_window} of at most "
                    f"{policy.max_restarts} in {policy.window_s / 60:g} min; log: {event.log_file})", highlight=False, soft_wrap=True,
                )
        else:
            console.print(f"[green]✓[/] Triton restarted and is ready again (restart {event.restarts}, pid {event.pid}, {event.seconds:.1f} s)", highlight=False)

    generated = admin_key is None
    server = TritonServer(
        repository=repository, http_port=http_port, grpc_port=grpc_port,
        metrics_port=metrics_port, address=address, log_file=log_file,
        admin_key=generate_admin_key() if admin_key is None else admin_key,
    )
    supervisor = Supervisor(server, policy=policy if restart else None, ready_timeout_s=timeout, on_event=report)
    stopping = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        server.start()
        for entry in server.skipped:
            err_console.print(f"[yellow]skipped[/] {entry.name}: {entry.reason}", highlight=False, soft_wrap=True)
        with err_console.status("waiting for the models to load…"):
            server.wait_until_ready(timeout=timeout)
        urls = server.urls
        ready = server.ready_versions()
        console.print(f"[green]✓[/] Triton is ready with {', '.join(sorted(ready)) or 'no models'}")
        for entry in server.served:
            if entry.name not in ready:
                continue
            runs = f"{entry.runtime} (python-backend proxy)" if entry.served_as == "proxy" else entry.runtime
            versions = ready[entry.name]
            console.print(f"  {entry.name}: {runs}, version{'s' * (len(versions) > 1)} {', '.join(map(str, versions))}", highlight=False)
            for note in entry.notes:
                console.print(f"    note: {note}", highlight=False, soft_wrap=True)
        console.print(f"  HTTP    http://{urls.http}\n  gRPC    {urls.grpc}\n  metrics http://{urls.metrics}/metrics")
        console.print(f"  log     {server.log_file}", highlight=False)
        if generated:
            console.print(
                f"  admin key {server.admin_key}\n    (HTTP header {ADMIN_KEY_HEADER}, gRPC metadata {GRPC_ADMIN_KEY_HEADER}; "
                "clients take it as --admin-key or RESNET_SERVE_ADMIN_KEY)", highlight=False, soft_wrap=True,
            )
        console.print("Press Ctrl-C to stop.")
        supervisor.run(stopping)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if server.is_running:
            err_console.print("stopping Triton…")
        server.stop()


@app.command()
@_command
def classify(
    images: Annotated[list[Path], typer.Argument(help="PNG or JPEG files.")],
    model: ModelOption = None,
    protocol: ProtocolOption = "http",
    url: UrlOption = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Classes to show per image.")] = 3,
    server_side: Annotated[bool, typer.Option("--server-side", help="Send the files' bytes to the image ensemble (<model>-image), which decodes and prepares them on the server; no preprocessing here.")] = False,
    json_path: JsonOption = None,
    header: HeaderOption = None,
    ca_cert: CaCertOption = None,
    insecure: InsecureOption = False,
    admin_key: AdminKeyOption = None,
) -> None:
    """Classify images on a running server: top-k labels with probabilities (or, --server-side, the model's scores)."""
    _check_outputs(json_path)
    connection = _connection(header, ca_cert, insecure, admin_key)
    if server_side:
        from resnet_serve.client.classify import classify_files_server_side

        labelled = classify_files_server_side(paths=images, model=model, protocol=protocol, url=url, top_k=top_k, connection=connection)
        for found in labelled.images:
            best = found.top[0]
            others = ", ".join(f"{s.label} {s.score:.3g}" for s in found.top[1:])
            console.print(
                f"{found.path}: [bold]{best.label}[/] {best.score:.3g}" + (f"  ({others})" if others else ""),
                soft_wrap=True, highlight=False,
            )
        _write_json(json_path, labelled)
        return
    from resnet_serve.client.classify import classify_files

    result = classify_files(paths=images, model=model, protocol=protocol, url=url, top_k=top_k, connection=connection)
    for item in result.images:
        best = item.predictions[0]
        others = ", ".join(f"{p.label} {p.probability:.1%}" for p in item.predictions[1:])
        console.print(f"{item.path}: [bold]{best.label}[/] {best.probability:.1%}" + (f"  ({others})" if others else ""))
    _write_json(json_path, result)


@app.command()
@_command
def evaluate(
    model: ModelOption = None,
    protocol: ProtocolOption = "grpc",
    url: UrlOption = None,
    data: DataOption = None,
    checkpoint: Annotated[Path | None, typer.Option(help="PyTorch checkpoint to measure agreement against.")] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N test images.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per request.")] = 64,
    concurrency: Annotated[int, typer.Option(help="Requests in flight.")] = 2,
    json_path: JsonOption = None,
    header: HeaderOption = None,
    ca_cert: CaCertOption = None,
    insecure: InsecureOption = False,
    admin_key: AdminKeyOption = None,
) -> None:
    """Accuracy of the served model on the whole test set, and its agreement with PyTorch."""
    from resnet_serve.client.evaluate import PartialEvaluationError, evaluate_test_set

    _check_outputs(json_path)
    try:
        result = evaluate_test_set(
            model=model, protocol=protocol, url=url, data_dir=data, checkpoint=checkpoint, limit=limit,
            batch_size=batch_size, concurrency=concurrency, reporter=RichReporter(err_console),
            connection=_connection(header, ca_cert, insecure, admin_key),
        )
    except PartialEvaluationError as stopped:
        # What was measured is kept, marked "partial": true; the run still fails.
        if json_path is None:
            raise
        _write_json(json_path, stopped.result)
        raise ClientError(f"{stopped}; the {stopped.result.images} answered are in {json_path}, marked partial") from None
    line = f"[green]✓[/] {result.model}: top-1 {result.top1:.2%}, top-5 {result.top5:.2%} on {result.images} images"
    if result.agreement is not None:
        line += f"; top-1 agreement with PyTorch {result.agreement:.2%} (PyTorch top-1 {result.reference_top1:.2%})"
    console.print(line + f"; {result.images_per_second:.0f} images/s over {result.protocol}")
    _write_json(json_path, result)


def _levels(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from None


def _rates(text: str | None) -> list[float]:
    try:
        return [float(part) for part in (text or "").split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint="--request-rate") from None


@app.command()
@_command
def bench(
    model: ModelOption = None,
    protocol: ProtocolOption = "grpc",
    url: UrlOption = None,
    engine: Annotated[str, typer.Option(help="resnet-serve (our load generator) or perf_analyzer (Triton's, installed by `make perf-analyzer`).")] = "resnet-serve",
    batch_size: Annotated[int, typer.Option(help="Images per request.")] = 1,
    concurrency: Annotated[str, typer.Option(help="Concurrency levels (closed loop), comma-separated.")] = "1,2,4",
    request_rate: Annotated[str | None, typer.Option(help="Request rates per second (open loop), comma-separated; replaces --concurrency.")] = None,
    distribution: Annotated[str, typer.Option(help="Request-rate schedule: constant or poisson.")] = "constant",
    max_outstanding: Annotated[int, typer.Option(help="Request-rate mode: most requests in flight (perf_analyzer: --max-threads).")] = 16,
    client: Annotated[str, typer.Option(help="resnet-serve engine's closed loop: threads (one gRPC/HTTP connection per slot) or asyncio (gRPC only).")] = "threads",
    warmup: Annotated[float, typer.Option(help="Warm-up seconds per level, not measured (resnet-serve engine).")] = 2.0,
    measurement_interval: Annotated[int, typer.Option("--measurement-interval", help="Measurement window in milliseconds (perf_analyzer's -p; here -p is --protocol).")] = 5000,
    stability_percentage: Annotated[float, typer.Option("--stability-percentage", "-s", help="The last 3 windows must agree within this percentage in throughput and p99.")] = 10.0,
    max_trials: Annotated[int, typer.Option("--max-trials", "-r", help="Windows per level before it is reported unstable.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the input batch and of Poisson arrivals.")] = 0,
    retries: Annotated[int, typer.Option(help="resnet-serve engine: try a failed request again up to N times, after 0.1 s, 0.2 s, … (at most 2 s), on a new connection, to ride out a server restart; windows with a failed try are not measured.")] = 0,
    images: Annotated[Path | None, typer.Option(help="A folder of image files (any format and size) to send, --batch-size per request, to an image ensemble (--model <name>-image or <name>); perf_analyzer gets them as --input-data. Rows then split the server's time between the ensemble's steps.")] = None,
    json_path: JsonOption = None,
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Write perf_analyzer's CSV here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the latency-throughput plot (PNG) here.")] = None,
    header: HeaderOption = None,
    ca_cert: CaCertOption = None,
    insecure: InsecureOption = False,
    admin_key: AdminKeyOption = None,
) -> None:
    """Throughput, latency percentiles and the client/server time split per level, measured until stable."""
    from resnet_serve.client.bench import benchmark_served_model
    from resnet_serve.client.retries import Retries
    from resnet_serve.client.stability import StabilityRule
    from resnet_serve.report import write_latency_throughput_plot

    _check_outputs(json_path, csv_path, plot)
    result = benchmark_served_model(
        model=model, protocol=protocol, url=url, engine=engine, batch_size=batch_size,
        concurrency=_levels(concurrency), request_rates=_rates(request_rate),
        distribution=distribution, max_outstanding=max_outstanding, client=client,
        warmup_seconds=warmup, measurement_seconds=measurement_interval / 1000,
        stability=StabilityRule(percentage=stability_percentage, max_trials=max_trials), seed=seed,
        retries=Retries(count=retries), images=images, connection=_connection(header, ca_cert, insecure, admin_key),
        reporter=RichReporter(err_console),
    )
    rate_mode = result.mode == "request-rate"
    table = Table(
        "rate/s" if rate_mode else "concurrency", "infer/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "std ms",
        "send µs", "recv µs", "queue µs", "compute µs", *(("late", "dropped") if rate_mode else ()),
        title=f"{result.model} over {result.protocol}, batch {result.batch_size} ({result.engine})",
    )
    for row in result.results:
        table.add_row(
            f"{row.request_rate:g}" if rate_mode else str(row.concurrency), f"{row.inferences_per_second:.1f}",
            f"{row.p50_ms:.2f}", f"{row.p90_ms:.2f}", f"{row.p95_ms:.2f}", f"{row.p99_ms:.2f}",
            "–" if row.std_ms is None else f"{row.std_ms:.2f}", f"{row.client_send_us:.0f}", f"{row.client_recv_us:.0f}",
            f"{row.server_queue_us:.0f}",
            f"{row.server_compute_input_us + row.server_compute_infer_us + row.server_compute_output_us:.0f}",
            *((str(row.late_requests if row.late_requests is not None else "–"),
               str(row.dropped_requests if row.dropped_requests is not None else "–")) if rate_mode else ()),
        )
    console.print(table)
    for row in result.results:
        for step in row.steps or ():
            console.print(
                f"  {row.request_rate if rate_mode else row.concurrency}: {step.model}: queue {step.queue_us:.0f} µs, "
                f"compute {step.compute_us:.0f} µs per request, {step.requests / max(step.executions, 1):.2f} "
                "requests per execution", highlight=False,
            )
    retried = sum(row.retried_requests or 0 for row in result.results)
    if retried:
        console.print(f"{retried} failed tries were retried (the windows they fell in were not measured)")
    _write_json(json_path, result)
    if csv_path is not None:
        result.write_csv(csv_path)
    if plot is not None:
        write_latency_throughput_plot([result], plot)


def _tuning_space_default(values: tuple) -> str:
    return ",".join(map(str, values))


@app.command()
@_command
def tune(
    name: Annotated[str, typer.Argument(help="The repository entry to tune (onnxruntime or openvino target).")],
    repository: Annotated[Path, typer.Option(help="Triton model repository holding the entry.")] = DEFAULT_REPOSITORY,
    p99_ms: Annotated[float | None, typer.Option("--p99-ms", help="Largest p99 latency the chosen configuration may have, in ms (default: no limit).")] = None,
    concurrency: Annotated[int, typer.Option(help="Requests in flight while measuring (closed loop).")] = 4,
    batch_size: Annotated[int, typer.Option(help="Images per request.")] = 1,
    runtimes: Annotated[str, typer.Option(help="Runtimes to search, comma-separated: onnxruntime (the entry's FP32 ONNX), openvino (the same file in OpenVINO), openvino-int8 (that file quantized as export --precision int8 does, in OpenVINO).")] = _tuning_space_default(_TUNING_SPACE.runtimes),
    max_batch_sizes: Annotated[str, typer.Option(help="max_batch_size values, comma-separated.")] = _tuning_space_default(_TUNING_SPACE.max_batch_sizes),
    preferred_batch_sizes: Annotated[str, typer.Option(help="Preferred batch sizes of the dynamic batcher, one per candidate, comma-separated; 0 is none.")] = _tuning_space_default(_TUNING_SPACE.preferred_batch_sizes),
    queue_delays_us: Annotated[str, typer.Option(help="Max queue delays of the dynamic batcher in µs, comma-separated.")] = _tuning_space_default(_TUNING_SPACE.max_queue_delays_us),
    instances: Annotated[str, typer.Option(help="Instance counts, comma-separated.")] = _tuning_space_default(_TUNING_SPACE.instances),
    threads: Annotated[str, typer.Option(help="Intra-op threads per instance, comma-separated; combinations with instances × threads above the CPU cores are left out.")] = _tuning_space_default(_TUNING_SPACE.threads),
    quick: Annotated[bool, typer.Option("--quick", help="Vary one setting at a time from the current configuration instead of measuring every combination.")] = False,
    max_candidates: Annotated[int, typer.Option(help="Most configurations measured; a larger grid is refused before measuring (quick mode stops there).")] = 64,
    warmup: Annotated[float, typer.Option(help="Warm-up seconds per configuration, not measured.")] = 2.0,
    measurement_interval: Annotated[int, typer.Option("--measurement-interval", help="Measurement window in milliseconds.")] = 5000,
    stability_percentage: Annotated[float, typer.Option("--stability-percentage", "-s", help="The last 3 windows must agree within this percentage in throughput and p99.")] = 10.0,
    max_trials: Annotated[int, typer.Option("--max-trials", "-r", help="Windows per configuration before it is reported unstable.")] = 10,
    data: DataOption = None,
    verify_images: Annotated[int, typer.Option(help="Real test images that check the OpenVINO runtimes against onnxruntime FP32.")] = _SELECTION.verify_images,
    calibration_images: CalibrationImagesOption = _SELECTION.calibration_images,
    calibration_method: Annotated[CalibrationMethod, typer.Option(help="openvino-int8: minmax, entropy or percentile.")] = "minmax",
    min_agreement: Annotated[float, typer.Option(help="Least top-1 agreement of an OpenVINO runtime with onnxruntime FP32, a fraction.")] = DEFAULT_MIN_AGREEMENT,
    write: Annotated[bool, typer.Option("--write/--no-write", help="Write the chosen configuration as the entry's next version.")] = True,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for tune.json (every measurement) and pareto.png.")] = Path("tune-output"),
) -> None:
    """Search serving configurations of an entry on the embedded server (Model Analyzer style) and write the fastest within --p99-ms as its next version."""
    from resnet_serve.client.stability import StabilityRule
    from resnet_serve.report import write_tuning_plot
    from resnet_serve.tuning.search import TuneOptions, tune_model_entry

    _check_outputs(output / "tune.json", output / "pareto.png", folders=(output,))
    options = TuneOptions(
        p99_budget_ms=p99_ms, concurrency=concurrency, batch_size=batch_size,
        space=SearchSpace(
            runtimes=tuple(part.strip() for part in runtimes.split(",") if part.strip()),
            max_batch_sizes=tuple(_levels(max_batch_sizes)), preferred_batch_sizes=tuple(_levels(preferred_batch_sizes)),
            max_queue_delays_us=tuple(_levels(queue_delays_us)), instances=tuple(_levels(instances)),
            threads=tuple(_levels(threads)),
        ),
        quick=quick, max_candidates=max_candidates, warmup_seconds=warmup, measurement_seconds=measurement_interval / 1000,
        stability=StabilityRule(percentage=stability_percentage, max_trials=max_trials),
        selection=ImageSelection(data_dir=data, verify_images=verify_images, calibration_images=calibration_images),
        calibration_method=calibration_method, min_agreement=min_agreement, write=write,
    )
    result = tune_model_entry(repository=repository, name=name, options=options, reporter=RichReporter(err_console))
    for check in result.runtimes:
        agreement = "" if check.parity is None else f", top-1 agreement with onnxruntime FP32 {check.parity.top1_agreement:.2%}"
        line = f"{check.runtime}: computes in {check.computes_in or '?'}{agreement}"
        console.print(line + (f" [yellow]left out[/]: {check.refused}" if check.refused else ""), highlight=False, soft_wrap=True)
    table = Table(
        "", "runtime", "batch ≤", "pref.", "delay µs", "inst. × thr.", "infer/s", "p50 ms", "p99 ms", "",
        title=f"Pareto front of {result.model}: concurrency {concurrency}, batch {batch_size}"
        + (f", p99 ≤ {p99_ms:g} ms" if p99_ms is not None else ""),
    )
    for label in dict.fromkeys([*result.pareto, "current"]):
        measured = result.measurement(label)
        candidate, row = measured.candidate, measured.result
        note = ", ".join(note for note, on in (("chosen", label == result.chosen), ("not on the front", label not in result.pareto)) if on)
        table.add_row(
            label, candidate.runtime, str(candidate.max_batch_size), str(candidate.preferred_batch_size or "–"),
            str(candidate.max_queue_delay_us), f"{candidate.instances} × {candidate.threads or 'default'}",
            *((f"{row.inferences_per_second:.1f}", f"{row.p50_ms:.1f}", f"{row.p99_ms:.1f}") if row else (measured.status, "", "")),
            note,
        )
    console.print(table)
    left_out = [m for m in result.measurements if m.point is None]
    for measured in left_out:
        err_console.print(f"[yellow]{measured.label} {measured.status}[/]: {measured.candidate.describe()}: {measured.reason}", highlight=False, soft_wrap=True)
    pruned = "; ".join(f"{count} with {reason}" for reason, count in result.pruned.items())
    console.print(
        f"measured {len(result.measurements) - 1} configurations besides the current one"
        + (f" ({len(left_out)} unstable or failed)" if left_out else "")
        + (f"; left out {pruned}" if pruned else "")
        + ("" if result.search_complete else "; quick search stopped at --max-candidates"),
        highlight=False, soft_wrap=True,
    )
    output_json = output / "tune.json"
    _write_json(output_json, result)
    plot = write_tuning_plot(result, output / "pareto.png")
    console.print(f"[green]✓[/] wrote {output_json} and {plot}")
    if result.chosen is None:
        missed = "no configuration was measured" if p99_ms is None else f"no configuration met p99 ≤ {p99_ms:g} ms"
        err_console.print(f"[bold red]error:[/] {missed}; nothing written", highlight=False)
        raise typer.Exit(1)
    chosen = result.measurement(result.chosen)
    speedup = "" if result.speedup is None else f" ({result.speedup:.2f}× the current configuration)"
    if result.written_version is not None:
        console.print(f"[green]✓[/] wrote {result.chosen} ({chosen.candidate.describe()}) as version {result.written_version} of {result.model}{speedup}; earlier versions stay on disk", highlight=False, soft_wrap=True)
    elif result.chosen == "current":
        console.print(f"[green]✓[/] the current configuration of {result.model} is the fastest within the budget; nothing written", highlight=False)
    else:
        console.print(f"best: {result.chosen} ({chosen.candidate.describe()}){speedup}; not written (--no-write)", highlight=False, soft_wrap=True)


@app.command()
@_command
def report(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for report.html, report.md and the PNGs.")] = Path("report"),
    export_json: Annotated[Path | None, typer.Option("--export", help="JSON written by `export --json`.")] = None,
    verify_json: Annotated[Path | None, typer.Option("--verify", help="JSON written by `verify --json`.")] = None,
    evaluate_json: Annotated[Path | None, typer.Option("--evaluate", help="JSON written by `evaluate --json`.")] = None,
    bench_json: Annotated[list[Path] | None, typer.Option("--bench", help="JSON written by `bench --json`; repeat it to overlay several runs.")] = None,
    title: Annotated[str, typer.Option(help="The page's title.")] = "resnet-serve report",
    screenshot: Annotated[Path | None, typer.Option(help="Also render the page with headless Chromium into this PNG.")] = None,
) -> None:
    """One self-contained HTML page (and a markdown twin) from the export, verify, evaluate and bench results."""
    from resnet_serve.report import build_report
    from resnet_serve.report import screenshot as take_screenshot

    _check_outputs(screenshot, folders=(output,))
    result = build_report(
        output_dir=output, export=export_json, verify=verify_json, evaluate=evaluate_json, bench=bench_json or [],
        title=title,
    )
    console.print(f"[green]✓[/] {result.html} and {result.markdown} ({len(result.images)} images): {', '.join(result.sections)}")
    if screenshot is not None:
        console.print(f"[green]✓[/] {take_screenshot(result.html, screenshot)}")


@app.command()
@_command
def verify(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint written by `resnet-serve train`.")],
    reference: Annotated[RuntimeName, typer.Option(help=f"Runtime to compare against. {_RUNTIME_HELP}.")] = "torch",
    candidate: Annotated[RuntimeName, typer.Option(help="Runtime to check (same choices).")] = "onnx-fp32",
    images: VerifyImagesOption = _SELECTION.verify_images,
    calibration_images: CalibrationImagesOption = _SELECTION.calibration_images,
    calibration_method: Annotated[CalibrationMethod, typer.Option(help="INT8 calibration: minmax, entropy or percentile.")] = "minmax",
    batch_sizes: Annotated[str, typer.Option(help="Batch sizes the candidate runs at, comma-separated.")] = "1,64",
    rtol: Annotated[float | None, typer.Option(help=f"Fail if any logit differs by more than this fraction of the largest reference logit ({DEFAULT_RTOL:g} in fold and export); near-ties within it count as agreeing.")] = None,
    max_mean_rel: Annotated[float | None, typer.Option(help="Fail if the mean relative error of the logits exceeds this.")] = None,
    min_agreement: Annotated[float | None, typer.Option(help="Fail if top-1 agreement is below this fraction (0.99).")] = None,
    max_accuracy_drop: Annotated[float | None, typer.Option(help="Fail if the candidate loses more top-1 accuracy than this, in points (0.5).")] = None,
    threads: Annotated[int | None, typer.Option(help="Threads for onnxruntime and OpenVINO.")] = None,
    data: DataOption = None,
    keep_artifacts: Annotated[Path | None, typer.Option(help="Keep the files the runtimes run (model-fp32.onnx, model-int8.onnx, ...) in this folder.")] = None,
    json_path: JsonOption = None,
) -> None:
    """Compare two runtimes of a checkpoint on real test images: logits, top-1 agreement and accuracy.

    The files are made and the images chosen as `export` does, so with the same options an INT8 runtime runs the very file `export --precision int8` serves.
    """
    from resnet_serve.verify import verify_runtimes

    _check_outputs(json_path, folders=(keep_artifacts,))
    # Built first, so that a bad threshold is refused before any work.
    tolerance = Tolerance(
        rtol=rtol, max_mean_rel=max_mean_rel, min_top1_agreement=min_agreement,
        max_top1_drop=None if max_accuracy_drop is None else max_accuracy_drop / 100,
    )
    report = verify_runtimes(
        checkpoint=checkpoint, reference=reference, candidate=candidate,
        selection=ImageSelection(data_dir=data, verify_images=images, calibration_images=calibration_images),
        calibration_method=calibration_method, batch_sizes=_levels(batch_sizes), threads=threads,
        artifacts_dir=keep_artifacts,
    )
    _write_json(json_path, report)
    # Judged before the table is shown, so that a miss is the one line the user sees.
    check_parity(report.parity, tolerance)
    parity = report.parity
    table = Table(
        "batch", "max-abs", "of largest logit", "mean rel", "top-1 agreement", f"{parity.candidate} top-1",
        title=f"{parity.candidate} vs {parity.reference} on {parity.n_images} test images "
        f"({report.architecture}; {parity.reference} top-1 {parity.reference_top1:.2%}; "
        f"largest logit {parity.reference_max_abs:.3g})",
    )
    for row in parity.per_batch:
        ties = row.ties(rtol)
        table.add_row(
            str(row.batch_size), f"{row.max_abs:.3g}", f"{row.max_abs_relative:.3g}", f"{row.mean_rel:.3g}",
            f"{row.top1_agreement:.2%}" + (f" (+{ties} near-ties)" if ties else ""), f"{row.top1_accuracy:.2%}",
        )
    console.print(table)
    for kind, note in report.notes.items():
        console.print(f"{kind}: {note}", highlight=False)
    if report.artifacts is not None:
        console.print(f"files kept in {report.artifacts}", highlight=False)


@app.command()
@_command
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the checkpoint, images and logs go.")] = Path("demo-output"),
    repository: Annotated[Path, typer.Option(help="Triton model repository to write into.")] = DEFAULT_REPOSITORY,
    summary: Annotated[Path, typer.Option(help="Write the summary JSON here.")] = Path("demo-summary.json"),
    epochs: Annotated[float | None, typer.Option(help="Override the demo recipe's epochs (fractions allowed).")] = None,
) -> None:
    """Train ResNet-20 on Fashion-MNIST, export, serve, classify, evaluate and benchmark it."""
    from resnet_serve.demo import run_demo

    _check_outputs(summary, folders=(workdir, repository))
    result = run_demo(workdir=workdir, repository=repository, epochs=epochs, reporter=RichReporter(err_console))
    _write_json(summary, result)
    table = Table("", "value", title="resnet-serve demo")
    for label, value in result.summary_rows():
        table.add_row(label, value)
    console.print(table)
    console.print(f"summary written to {summary}")


experiment_app = typer.Typer(
    help="Re-run the paper's experiments: the degradation problem and the gradient highway.", no_args_is_help=True
)
app.add_typer(experiment_app, name="experiment")


@experiment_app.command()
@_command
def degradation(
    depths: Annotated[str, typer.Option(help="Depths (6n+2), comma-separated; each trains plain and residual.")] = "20,56",
    epochs: Annotated[float | None, typer.Option(help="Epochs (default: 5, or the recipe's with --full).")] = None,
    limit: Annotated[int | None, typer.Option(help="Training images (default: 10,000, or all with --full).")] = None,
    test_limit: Annotated[int | None, typer.Option(help="Test images (default: 2,000, or all with --full).")] = None,
    full: Annotated[bool, typer.Option("--full", help="All images and the recipe's whole schedule (a GPU job).")] = False,
    recipe: Annotated[str, typer.Option(help="Training recipe shared by every net.")] = "cifar",
    pad: PadOption = None,
    flip: FlipOption = None,
    data: DataOption = None,
    seed: Annotated[int, typer.Option(help="Random seed, the same for every net.")] = 0,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for checkpoints, CSV and plots.")] = Path("experiments/degradation"),
) -> None:
    """Train plain and residual nets at two depths; plot their errors per epoch (the paper's Fig. 6)."""
    from resnet_serve.experiments import run_degradation

    _check_outputs(folders=(output,))
    result = run_degradation(
        depths=_levels(depths), epochs=epochs, limit=limit, test_limit=test_limit, full=full,
        recipe=recipe, pad=pad, flip=flip, data_dir=data, seed=seed, output_dir=output,
        reporter=RichReporter(err_console),
    )
    table = Table("net", "train error", "test error", "seconds", title=f"after {result.epochs} epochs on {result.train_images} images")
    for run in result.runs:
        table.add_row(run.architecture, f"{run.train_error[-1]:.2%}", f"{run.test_error[-1]:.2%}", f"{run.seconds:.0f}")
    console.print(table)
    console.print(f"[green]✓[/] {result.csv}, {result.plot}")


@experiment_app.command()
@_command
def gradients(
    depths: Annotated[str, typer.Option(help="Depths (6n+2), comma-separated; each is measured plain and residual.")] = "20,56,110",
    steps: Annotated[int, typer.Option(help="SGD steps between the two measurements.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Images per step and in the probe batch.")] = 128,
    data: DataOption = None,
    seed: Annotated[int, typer.Option(help="Random seed, the same for every net.")] = 0,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the JSON and the plot.")] = Path("experiments/gradients"),
) -> None:
    """Gradient norm reaching each block of plain and residual nets, at init and after a few steps."""
    from resnet_serve.experiments import run_gradients

    _check_outputs(folders=(output,))
    result = run_gradients(
        depths=_levels(depths), steps=steps, batch_size=batch_size, data_dir=data, seed=seed,
        output_dir=output, reporter=RichReporter(err_console),
    )
    table = Table("net", "first block", "last block", f"first after {result.steps} steps", "last after",
                  title="‖∂loss/∂block input‖")
    for profile in result.profiles:
        table.add_row(profile.architecture, f"{profile.at_init[0]:.3g}", f"{profile.at_init[-1]:.3g}",
                      f"{profile.after_steps[0]:.3g}", f"{profile.after_steps[-1]:.3g}")
    console.print(table)
    console.print(f"[green]✓[/] {result.json}, {result.plot}")


repo_app = typer.Typer(help="Inspect a Triton model repository: its entries, and whether an official image would load them.", no_args_is_help=True)
app.add_typer(repo_app, name="repo")
RepositoryOption = Annotated[Path, typer.Option(help="Triton model repository.")]


@repo_app.command("list")
@_command
def repo_list(
    repository: RepositoryOption = DEFAULT_REPOSITORY,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Entries with their target, versions, file sizes and the test accuracy recorded at export."""
    from resnet_serve.triton.repository import summarize_repository

    summaries = summarize_repository(repository)
    if as_json:
        print(json.dumps([summary.to_dict() for summary in summaries], indent=2))
        return
    table = Table("entry", "target", "versions", "MB per version", "test accuracy", title=str(repository))
    for summary in summaries:
        table.add_row(
            summary.name, summary.target, ", ".join(map(str, summary.versions)),
            ", ".join(f"{size / 1e6:.2f}" for size in summary.version_bytes),
            "" if summary.test_accuracy is None else f"{summary.test_accuracy:.2%}",
        )
    console.print(table)


@repo_app.command("check")
@_command
def repo_check(
    repository: RepositoryOption = DEFAULT_REPOSITORY,
    image: Annotated[str, typer.Option(help="deploy (the image deploy/Dockerfile builds: the pinned official image plus Pillow) or an official tag such as 24.10-py3.")] = "deploy",
) -> None:
    """Would each entry load in that image? Backends, python imports, model vs config, labels, TensorRT plans; one line per problem."""
    from resnet_serve.triton.images import find_image
    from resnet_serve.triton.repository_check import check_repository

    facts = find_image(image)
    problems = check_repository(repository=repository, image=facts)
    for problem in problems:
        err_console.print(str(problem), highlight=False, soft_wrap=True, markup=False)
    if problems:
        raise typer.Exit(1)
    console.print(f"[green]✓[/] every entry of {repository} would load in {facts.reference}", highlight=False, soft_wrap=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
