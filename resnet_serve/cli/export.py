"""Commands that turn a checkpoint into served files and check them: fold, export, verify."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resnet_serve.cli.console import check_outputs, command, console, err_console
from resnet_serve.cli.options import (
    DEFAULT_REPOSITORY,
    CalibrationImagesOption,
    DataOption,
    JsonOption,
    RtolOption,
    RuntimeName,
    Selection,
    Serving,
    levels,
)
from resnet_serve.cli.render import parity_line, verify_table, write_json
from resnet_serve.export import CalibrationMethod, Exporter, ExportFormat, Precision
from resnet_serve.parity import DEFAULT_MIN_AGREEMENT, DEFAULT_RTOL, Tolerance, check_parity
from resnet_serve.rich_progress import RichReporter
from resnet_serve.runtimes import RUNTIMES
from resnet_serve.selection import ImageSelection

__all__ = ["export", "fold", "verify"]

_SELECTION = ImageSelection()
_RUNTIME_HELP = "; ".join(f"{name}: {kind.help}" for name, kind in RUNTIMES.items())


@command
def fold(
    source: Annotated[Path, typer.Argument(help="A checkpoint (.safetensors) or an ONNX file (.onnx) to fold.")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o",
        help="Folded ONNX to write (default: SOURCE with its last suffix replaced by .folded.onnx; never SOURCE "
        "itself).",
    )] = None,
    selection: Selection = Selection(),
    rtol: RtolOption = DEFAULT_RTOL,
    json_path: JsonOption = None,
) -> None:
    """Fold every Conv→BatchNorm pair into the convolution and check the result on real images.

    Without preprocessing metadata, an ONNX file gets the test images at its input size, mean 0.5, std 0.25.
    """
    from resnet_serve.pipeline import default_fold_output, fold_file

    output = output or default_fold_output(source)
    check_outputs(output, json_path)
    report = fold_file(source, output, selection=selection.images(), tolerance=Tolerance(rtol=rtol))
    console.print(
        f"[green]✓[/] folded {report.folded} BatchNorms; parameters {report.params_before:,} → "
        f"{report.params_after:,}; folded vs unfolded {parity_line(report.fold_parity)} on "
        f"{report.fold_parity.n_images} test images ({report.preprocessing} preprocessing)"
    )
    if report.onnx_parity is not None:
        console.print(f"[green]✓[/] onnxruntime vs unfolded PyTorch {parity_line(report.onnx_parity)}")
    for name, reason in report.unfolded.items():
        console.print(f"  kept {name}: {reason}", highlight=False)
    console.print(f"[green]✓[/] wrote {report.output} ({report.batchnorm_nodes} BatchNormalization nodes left)")
    write_json(json_path, report)


@command
def export(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint written by `resnet-serve train`.")],
    repository: Annotated[Path, typer.Option(help="Triton model repository to write into.")] = DEFAULT_REPOSITORY,
    name: Annotated[str | None, typer.Option(
        help="Model name in the repository (default: the checkpoint's file name)."
    )] = None,
    serving: Serving = Serving(),
    opset: Annotated[int | None, typer.Option(
        help="ONNX opset (default: 17 with the legacy exporter, 18 with dynamo)."
    )] = None,
    exporter: Annotated[Exporter, typer.Option(
        help="legacy (TorchScript, fast, opset 10-20) or dynamo (torch.export, opset 18+)."
    )] = "legacy",
    dynamic_hw: Annotated[bool, typer.Option(
        "--dynamic-hw", help="Also make the ONNX input's height and width dynamic."
    )] = False,
    simplify: Annotated[bool, typer.Option(
        "--simplify",
        help="Simplify the graph with onnxruntime's basic optimisations, checked against the unsimplified graph.",
    )] = False,
    selection: Selection = Selection(),
    rtol: RtolOption = DEFAULT_RTOL,
    export_format: Annotated[ExportFormat, typer.Option(
        "--format",
        help="onnx, or tensorrt: build the verified ONNX into an engine served by Triton's tensorrt backend (needs "
        "TensorRT and an NVIDIA GPU).",
    )] = "onnx",
    precision: Annotated[Precision | None, typer.Option(
        help="onnx: fp32, int8 (static QDQ) or fp16; tensorrt: fp32, fp16 or int8. INT8 is calibrated on real "
        "training images (default: fp32 for onnx, fp16 for tensorrt)."
    )] = None,
    min_batch: Annotated[int, typer.Option(help="tensorrt: smallest batch of the optimisation profile.")] = 1,
    opt_batch: Annotated[int | None, typer.Option(
        help="tensorrt: batch the engine is tuned for (default: the max batch)."
    )] = None,
    max_batch: Annotated[int | None, typer.Option(
        help="tensorrt: largest batch of the profile (default: --max-batch-size)."
    )] = None,
    workspace_mb: Annotated[int, typer.Option(help="tensorrt: builder workspace limit in MiB.")] = 1024,
    timing_cache: Annotated[Path | None, typer.Option(
        help="tensorrt: timing cache file, read before and updated after the build."
    )] = None,
    calibration_images: CalibrationImagesOption = _SELECTION.calibration_images,
    calibration_method: Annotated[CalibrationMethod, typer.Option(
        help="onnx int8: minmax, entropy or percentile."
    )] = "minmax",
    min_agreement: Annotated[float, typer.Option(
        help="onnx int8/fp16: least top-1 agreement with the FP32 ONNX on the test images, a fraction."
    )] = DEFAULT_MIN_AGREEMENT,
    calibration_cache: Annotated[Path | None, typer.Option(
        help="tensorrt int8: calibration cache file, reused when present."
    )] = None,
    json_path: JsonOption = None,
) -> None:
    """Fold BatchNorm, export ONNX, verify it against PyTorch, and write the Triton repository entry."""
    from resnet_serve.export.onnx import OnnxOptions
    from resnet_serve.export.tensorrt import EngineOptions
    from resnet_serve.pipeline import ExportOptions, export_to_repository

    check_outputs(json_path, timing_cache, calibration_cache, folders=(repository,))
    options = ExportOptions(
        name=name, format=export_format, precision=precision, serving=serving.settings(),
        onnx=OnnxOptions(exporter=exporter, opset=opset, dynamic_hw=dynamic_hw, simplify=simplify),
        tolerance=Tolerance(rtol=rtol), selection=selection.images(calibration_images=calibration_images),
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
    batches = "/".join(str(p.batch_size) for p in onnx_parity.per_batch)
    console.print(
        f"[green]✓[/] folded {report.folding.folded} BatchNorms ({parity_line(report.fold_parity)}); "
        f"ONNX vs PyTorch {parity_line(onnx_parity)}, top-1 agreement {onnx_parity.top1_agreement:.2%} "
        f"on {onnx_parity.n_images} test images at batch {batches}"
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
    write_json(json_path, report)


@command
def verify(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint written by `resnet-serve train`.")],
    reference: Annotated[RuntimeName, typer.Option(help=f"Runtime to compare against. {_RUNTIME_HELP}.")] = "torch",
    candidate: Annotated[RuntimeName, typer.Option(help="Runtime to check (same choices).")] = "onnx-fp32",
    images: Annotated[int, typer.Option(
        help="Real test images (the first ones) that check each step."
    )] = _SELECTION.verify_images,
    calibration_images: CalibrationImagesOption = _SELECTION.calibration_images,
    calibration_method: Annotated[CalibrationMethod, typer.Option(
        help="INT8 calibration: minmax, entropy or percentile."
    )] = "minmax",
    batch_sizes: Annotated[str, typer.Option(help="Batch sizes the candidate runs at, comma-separated.")] = "1,64",
    rtol: Annotated[float | None, typer.Option(
        help=f"Fail if any logit differs by more than this fraction of the largest reference logit ({DEFAULT_RTOL:g} "
        f"in fold and export); near-ties within it count as agreeing."
    )] = None,
    max_mean_rel: Annotated[float | None, typer.Option(
        help="Fail if the mean relative error of the logits exceeds this."
    )] = None,
    min_agreement: Annotated[float | None, typer.Option(
        help="Fail if top-1 agreement is below this fraction (0.99)."
    )] = None,
    max_accuracy_drop: Annotated[float | None, typer.Option(
        help="Fail if the candidate loses more top-1 accuracy than this, in points (0.5)."
    )] = None,
    threads: Annotated[int | None, typer.Option(help="Threads for onnxruntime and OpenVINO.")] = None,
    data: DataOption = None,
    keep_artifacts: Annotated[Path | None, typer.Option(
        help="Keep the files the runtimes run (model-fp32.onnx, model-int8.onnx, ...) in this folder."
    )] = None,
    json_path: JsonOption = None,
) -> None:
    """Compare two runtimes of a checkpoint on real test images: logits, top-1 agreement and accuracy.

    Files and images are made and chosen as in `export`: an INT8 runtime runs the file `export --precision int8` serves.
    """
    from resnet_serve.verify import verify_runtimes

    check_outputs(json_path, folders=(keep_artifacts,))
    # Built first, so that a bad threshold is refused before any work.
    tolerance = Tolerance(
        rtol=rtol, max_mean_rel=max_mean_rel, min_top1_agreement=min_agreement,
        max_top1_drop=None if max_accuracy_drop is None else max_accuracy_drop / 100,
    )
    report = verify_runtimes(
        checkpoint=checkpoint, reference=reference, candidate=candidate,
        selection=ImageSelection(data_dir=data, verify_images=images, calibration_images=calibration_images),
        calibration_method=calibration_method, batch_sizes=levels(batch_sizes, option="--batch-sizes"),
        threads=threads, artifacts_dir=keep_artifacts,
    )
    write_json(json_path, report)
    # Judged before the table is shown, so that a miss is the one line the user sees.
    check_parity(report.parity, tolerance)
    console.print(verify_table(report, rtol=rtol))
    for kind, note in report.notes.items():
        console.print(f"{kind}: {note}", highlight=False)
    if report.artifacts is not None:
        console.print(f"files kept in {report.artifacts}", highlight=False)
