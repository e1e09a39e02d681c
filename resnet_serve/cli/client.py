"""Commands that talk to a running server, and the report of what they measured: classify,
evaluate, bench, report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resnet_serve.cli.console import check_outputs, command, console, err_console
from resnet_serve.cli.options import Connection, DataOption, JsonOption, Measurement, ModelOption, levels
from resnet_serve.cli.render import bench_table, step_lines, write_json
from resnet_serve.errors import ClientError
from resnet_serve.rich_progress import RichReporter

__all__ = ["bench", "classify", "evaluate", "report"]


@command
def classify(
    images: Annotated[list[Path], typer.Argument(help="PNG or JPEG files.")],
    model: ModelOption = None,
    connection: Connection = Connection(protocol="http"),
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Classes to show per image.")] = 3,
    server_side: Annotated[bool, typer.Option(
        "--server-side",
        help="Send the files' bytes to the image ensemble (<model>-image), which decodes and prepares them on the "
        "server; no preprocessing here.",
    )] = False,
    json_path: JsonOption = None,
) -> None:
    """Classify images on a running server: top-k labels with probabilities (or, --server-side, the model's scores)."""
    from resnet_serve.client.classify import classify_files, classify_files_server_side

    check_outputs(json_path)
    reach = {"protocol": connection.protocol, "url": connection.url, "connection": connection.options()}
    if server_side:
        labelled = classify_files_server_side(paths=images, model=model, top_k=top_k, **reach)
        for found in labelled.images:
            best = found.top[0]
            others = ", ".join(f"{s.label} {s.score:.3g}" for s in found.top[1:])
            console.print(
                f"{found.path}: [bold]{best.label}[/] {best.score:.3g}" + (f"  ({others})" if others else ""),
                soft_wrap=True, highlight=False,
            )
        write_json(json_path, labelled)
        return
    result = classify_files(paths=images, model=model, top_k=top_k, **reach)
    for item in result.images:
        best = item.predictions[0]
        others = ", ".join(f"{p.label} {p.probability:.1%}" for p in item.predictions[1:])
        console.print(
            f"{item.path}: [bold]{best.label}[/] {best.probability:.1%}" + (f"  ({others})" if others else "")
        )
    write_json(json_path, result)


@command
def evaluate(
    model: ModelOption = None,
    connection: Connection = Connection(),
    data: DataOption = None,
    checkpoint: Annotated[Path | None, typer.Option(help="PyTorch checkpoint to measure agreement against.")] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N test images.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per request.")] = 64,
    concurrency: Annotated[int, typer.Option(help="Requests in flight.")] = 2,
    json_path: JsonOption = None,
) -> None:
    """Accuracy of the served model on the whole test set, and its agreement with PyTorch."""
    from resnet_serve.client.evaluate import PartialEvaluationError, evaluate_test_set

    check_outputs(json_path)
    try:
        result = evaluate_test_set(
            model=model, protocol=connection.protocol, url=connection.url, data_dir=data, checkpoint=checkpoint,
            limit=limit, batch_size=batch_size, concurrency=concurrency, reporter=RichReporter(err_console),
            connection=connection.options(),
        )
    except PartialEvaluationError as stopped:
        # What was measured is kept, marked "partial": true; the run still fails.
        if json_path is None:
            raise
        write_json(json_path, stopped.result)
        raise ClientError(
            f"{stopped}; the {stopped.result.images} answered are in {json_path}, marked partial"
        ) from None
    line = f"[green]✓[/] {result.model}: top-1 {result.top1:.2%}, top-5 {result.top5:.2%} on {result.images} images"
    if result.agreement is not None:
        line += f"; top-1 agreement with PyTorch {result.agreement:.2%} (PyTorch top-1 {result.reference_top1:.2%})"
    console.print(line + f"; {result.images_per_second:.0f} images/s over {result.protocol}")
    write_json(json_path, result)


def _rates(text: str | None) -> list[float]:
    try:
        return [float(part) for part in (text or "").split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"expected comma-separated numbers, got {text!r}", param_hint="--request-rate"
        ) from None


@command
def bench(
    model: ModelOption = None,
    connection: Connection = Connection(),
    engine: Annotated[str, typer.Option(
        help="resnet-serve (our load generator) or perf_analyzer (Triton's, installed by `make perf-analyzer`)."
    )] = "resnet-serve",
    batch_size: Annotated[int, typer.Option(help="Images per request.")] = 1,
    concurrency: Annotated[str, typer.Option(help="Concurrency levels (closed loop), comma-separated.")] = "1,2,4",
    request_rate: Annotated[str | None, typer.Option(
        help="Request rates per second (open loop), comma-separated; replaces --concurrency."
    )] = None,
    distribution: Annotated[str, typer.Option(help="Request-rate schedule: constant or poisson.")] = "constant",
    max_outstanding: Annotated[int, typer.Option(
        help="Request-rate mode: most requests in flight (perf_analyzer: --max-threads)."
    )] = 16,
    client: Annotated[str, typer.Option(
        help="resnet-serve engine's closed loop: threads (one gRPC/HTTP connection per slot) or asyncio (gRPC only)."
    )] = "threads",
    measurement: Measurement = Measurement(),
    seed: Annotated[int, typer.Option(help="Seed of the input batch and of Poisson arrivals.")] = 0,
    retries: Annotated[int, typer.Option(
        help="resnet-serve engine: try a failed request again up to N times, after 0.1 s, 0.2 s, … (at most 2 s), on "
        "a new connection, to ride out a server restart; windows with a failed try are not measured."
    )] = 0,
    images: Annotated[Path | None, typer.Option(
        help="A folder of image files (any format and size) to send, --batch-size per request, to an image ensemble "
        "(--model <name>-image or <name>); perf_analyzer gets them as --input-data. Rows then split the server's "
        "time between the ensemble's steps."
    )] = None,
    json_path: JsonOption = None,
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Write perf_analyzer's CSV here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the latency-throughput plot (PNG) here.")] = None,
) -> None:
    """Throughput, latency percentiles and the client/server time split per level, measured until stable."""
    from resnet_serve.client.bench import benchmark_served_model
    from resnet_serve.client.retries import Retries
    from resnet_serve.report import write_latency_throughput_plot

    check_outputs(json_path, csv_path, plot)
    result = benchmark_served_model(
        model=model, protocol=connection.protocol, url=connection.url, engine=engine, batch_size=batch_size,
        concurrency=levels(concurrency, option="--concurrency"), request_rates=_rates(request_rate),
        distribution=distribution, max_outstanding=max_outstanding, client=client,
        warmup_seconds=measurement.warmup, measurement_seconds=measurement.seconds, stability=measurement.rule(),
        seed=seed, retries=Retries(count=retries), images=images, connection=connection.options(),
        reporter=RichReporter(err_console),
    )
    console.print(bench_table(result))
    for line in step_lines(result):
        console.print(line, highlight=False)
    retried = sum(row.retried_requests or 0 for row in result.results)
    if retried:
        console.print(f"{retried} failed tries were retried (the windows they fell in were not measured)")
    write_json(json_path, result)
    if csv_path is not None:
        result.write_csv(csv_path)
    if plot is not None:
        write_latency_throughput_plot([result], plot)


@command
def report(
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Folder for report.html, report.md and the PNGs."
    )] = Path("report"),
    export_json: Annotated[Path | None, typer.Option("--export", help="JSON written by `export --json`.")] = None,
    verify_json: Annotated[Path | None, typer.Option("--verify", help="JSON written by `verify --json`.")] = None,
    evaluate_json: Annotated[Path | None, typer.Option("--evaluate", help="JSON written by `evaluate --json`.")] = None,
    bench_json: Annotated[list[Path] | None, typer.Option(
        "--bench", help="JSON written by `bench --json`; repeat it to overlay several runs."
    )] = None,
    title: Annotated[str, typer.Option(help="The page's title.")] = "resnet-serve report",
    screenshot: Annotated[Path | None, typer.Option(
        help="Also render the page with headless Chromium into this PNG."
    )] = None,
) -> None:
    """One self-contained HTML page (and a markdown twin) from the export, verify, evaluate and bench results."""
    from resnet_serve.report import build_report
    from resnet_serve.report import screenshot as take_screenshot

    check_outputs(screenshot, folders=(output,))
    result = build_report(
        output_dir=output, export=export_json, verify=verify_json, evaluate=evaluate_json, bench=bench_json or [],
        title=title,
    )
    console.print(
        f"[green]✓[/] {result.html} and {result.markdown} ({len(result.images)} images): {', '.join(result.sections)}"
    )
    if screenshot is not None:
        console.print(f"[green]✓[/] {take_screenshot(result.html, screenshot)}")
