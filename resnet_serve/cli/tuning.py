"""`tune`: search an entry's serving configurations on the embedded server."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from resnet_serve.cli.console import check_outputs, command, console, err_console, fail
from resnet_serve.cli.options import (
    DEFAULT_REPOSITORY,
    AskedInstanceKind,
    CalibrationImagesOption,
    DataOption,
    Measurement,
    levels,
)
from resnet_serve.cli.render import tune_table, write_json
from resnet_serve.export import CalibrationMethod
from resnet_serve.parity import DEFAULT_MIN_AGREEMENT
from resnet_serve.rich_progress import RichReporter
from resnet_serve.selection import ImageSelection
from resnet_serve.tuning.space import SearchSpace

__all__ = ["tune"]

_SELECTION = ImageSelection()
_SPACE = SearchSpace()


def _listed(values: tuple) -> str:
    return ",".join(map(str, values))


@command
def tune(
    name: Annotated[str, typer.Argument(
        help="The classifier entry to tune (onnxruntime or openvino target); with --images, with its image pipeline."
    )],
    repository: Annotated[Path, typer.Option(help="Triton model repository holding the entry.")] = DEFAULT_REPOSITORY,
    p99_ms: Annotated[float | None, typer.Option(
        "--p99-ms", help="Largest p99 latency the chosen configuration may have, in ms (default: no limit)."
    )] = None,
    concurrency: Annotated[int, typer.Option(help="Requests in flight while measuring (closed loop).")] = 4,
    batch_size: Annotated[int, typer.Option(help="Images per request.")] = 1,
    runtimes: Annotated[str, typer.Option(
        help="Runtimes to search, comma-separated: onnxruntime (the entry's FP32 ONNX), openvino (the same file in "
        "OpenVINO), openvino-int8 (that file quantized as export --precision int8 does, in OpenVINO)."
    )] = _listed(_SPACE.runtimes),
    max_batch_sizes: Annotated[str, typer.Option(
        help="max_batch_size values, comma-separated. OpenVINO pads every execution to it, so for OpenVINO those "
        "that --concurrency × --batch-size images can fill (a full execution after a padded one fails) or that are "
        "twice them or more (half padding) are left out, unless equal to --batch-size."
    )] = _listed(_SPACE.max_batch_sizes),
    preferred_batch_sizes: Annotated[str, typer.Option(
        help="Preferred batch sizes of the dynamic batcher, one per candidate, comma-separated; 0 is none."
    )] = _listed(_SPACE.preferred_batch_sizes),
    queue_delays_us: Annotated[str, typer.Option(
        help="Max queue delays of the dynamic batcher in µs, comma-separated."
    )] = _listed(_SPACE.max_queue_delays_us),
    instances: Annotated[str, typer.Option(help="Instance counts, comma-separated.")] = _listed(_SPACE.instances),
    threads: Annotated[str, typer.Option(
        help="Intra-op threads per instance, comma-separated; combinations with instances × threads above the CPU "
        "cores are left out."
    )] = _listed(_SPACE.threads),
    images: Annotated[Path | None, typer.Option(
        help="A folder of image files (any format and size) to measure with: every candidate then also sets the "
        "<name>-preprocess step (--preprocess-*), and is measured by sending --batch-size files per request to "
        "<name>-image, as bench --images does; the chosen settings are written to all three entries."
    )] = None,
    preprocess_instances: Annotated[str, typer.Option(
        help="--images: instance counts of the -preprocess step, comma-separated."
    )] = _listed(_SPACE.preprocess_instances),
    preprocess_max_batch_sizes: Annotated[str, typer.Option(
        help="--images: max_batch_size values of the -preprocess step, comma-separated (the ensemble takes the "
        "smaller of its steps' limits)."
    )] = _listed(_SPACE.preprocess_max_batch_sizes),
    preprocess_queue_delays_us: Annotated[str, typer.Option(
        help="--images: max queue delays of the -preprocess step's dynamic batcher in µs, comma-separated."
    )] = _listed(_SPACE.preprocess_max_queue_delays_us),
    quick: Annotated[bool, typer.Option(
        "--quick",
        help="Vary one setting at a time from the current configuration instead of measuring every combination.",
    )] = False,
    max_candidates: Annotated[int, typer.Option(
        help="Most configurations measured; a larger grid is refused before measuring (quick mode stops there)."
    )] = 64,
    measurement: Measurement = Measurement(),
    data: DataOption = None,
    verify_images: Annotated[int, typer.Option(
        help="Real test images that check the OpenVINO runtimes against onnxruntime FP32."
    )] = _SELECTION.verify_images,
    calibration_images: CalibrationImagesOption = _SELECTION.calibration_images,
    calibration_method: Annotated[CalibrationMethod, typer.Option(
        help="openvino-int8: minmax, entropy or percentile."
    )] = "minmax",
    min_agreement: Annotated[float, typer.Option(
        help="Least top-1 agreement of an OpenVINO runtime with onnxruntime FP32, a fraction."
    )] = DEFAULT_MIN_AGREEMENT,
    write: Annotated[bool, typer.Option(
        "--write/--no-write",
        help="Write the chosen configuration as the entry's next version (and its -preprocess/-image pipeline to the "
        "same batch limit).",
    )] = True,
    instance_kind: Annotated[AskedInstanceKind | None, typer.Option(
        help="Instance kind of the written version: auto, cpu or gpu (default: the entry's own; cpu for an OpenVINO "
        "winner). Candidates are measured on this machine's CPU either way."
    )] = None,
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Folder for tune.json (every measurement) and pareto.png."
    )] = Path("tune-output"),
) -> None:
    """Search serving configurations of an entry on the embedded server (Model Analyzer style).

    The fastest within --p99-ms is written as the entry's next version.
    """
    from resnet_serve.report import write_tuning_plot
    from resnet_serve.tuning.search import TuneOptions, tune_model_entry

    check_outputs(output / "tune.json", output / "pareto.png", folders=(output,))
    options = TuneOptions(
        p99_budget_ms=p99_ms, concurrency=concurrency, batch_size=batch_size,
        space=SearchSpace(
            runtimes=tuple(part.strip() for part in runtimes.split(",") if part.strip()),
            max_batch_sizes=tuple(levels(max_batch_sizes, option="--max-batch-sizes")),
            preferred_batch_sizes=tuple(levels(preferred_batch_sizes, option="--preferred-batch-sizes")),
            max_queue_delays_us=tuple(levels(queue_delays_us, option="--queue-delays-us")),
            instances=tuple(levels(instances, option="--instances")),
            threads=tuple(levels(threads, option="--threads")),
            preprocess_instances=tuple(levels(preprocess_instances, option="--preprocess-instances")),
            preprocess_max_batch_sizes=tuple(levels(preprocess_max_batch_sizes, option="--preprocess-max-batch-sizes")),
            preprocess_max_queue_delays_us=tuple(levels(preprocess_queue_delays_us,
                                                        option="--preprocess-queue-delays-us")),
        ),
        quick=quick, max_candidates=max_candidates, warmup_seconds=measurement.warmup,
        measurement_seconds=measurement.seconds, stability=measurement.rule(),
        selection=ImageSelection(data_dir=data, verify_images=verify_images, calibration_images=calibration_images),
        calibration_method=calibration_method, min_agreement=min_agreement, write=write, instance_kind=instance_kind,
        images=images,
    )
    result = tune_model_entry(repository=repository, name=name, options=options, reporter=RichReporter(err_console))
    for check in result.runtimes:
        agreement = "" if check.parity is None else (
            f", top-1 agreement with onnxruntime FP32 {check.parity.top1_agreement:.2%}")
        line = f"{check.runtime}: computes in {check.computes_in or '?'}{agreement}"
        console.print(line + (f" [yellow]left out[/]: {check.refused}" if check.refused else ""),
                      highlight=False, soft_wrap=True)
    console.print(tune_table(result, concurrency=concurrency, batch_size=batch_size, p99_ms=p99_ms))
    left_out = [m for m in result.measurements if m.point is None]
    for measured in left_out:
        err_console.print(
            f"[yellow]{measured.label} {measured.status}[/]: {measured.candidate.describe()}: {measured.reason}",
            highlight=False, soft_wrap=True,
        )
    pruned = "; ".join(f"{count} with {reason}" for reason, count in result.pruned.items())
    console.print(
        f"measured {len(result.measurements) - 1} configurations besides the current one"
        + (f" ({len(left_out)} unstable or failed)" if left_out else "")
        + (f"; left out {pruned}" if pruned else "")
        + ("" if result.search_complete else "; quick search stopped at --max-candidates"),
        highlight=False, soft_wrap=True,
    )
    output_json = output / "tune.json"
    write_json(output_json, result)
    plot = write_tuning_plot(result, output / "pareto.png")
    console.print(f"[green]✓[/] wrote {output_json} and {plot}")
    if result.chosen is None:
        if not any(m.point for m in result.measurements):
            statuses = Counter(m.status for m in result.measurements)
            counted = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
            raise fail(f"no configuration could be measured: {counted} (each with why, above); nothing written")
        raise fail(f"no configuration met p99 ≤ {p99_ms:g} ms; nothing written")
    chosen = result.measurement(result.chosen)
    speedup = "" if result.speedup is None else f" ({result.speedup:.2f}× the current configuration)"
    if result.written_version is not None:
        console.print(
            f"[green]✓[/] wrote {result.chosen} ({chosen.candidate.describe()}) as version {result.written_version} "
            f"of {result.model}{speedup}; earlier versions stay on disk; figures measured on this machine's CPU",
            highlight=False, soft_wrap=True,
        )
    elif result.chosen == "current":
        console.print(
            f"[green]✓[/] the current configuration of {result.model} is the fastest within the budget; nothing "
            "written", highlight=False,
        )
    else:
        console.print(f"best: {result.chosen} ({chosen.candidate.describe()}){speedup}; not written (--no-write)",
                      highlight=False, soft_wrap=True)
