"""How results look: the tables the commands print, and the JSON files ``--json`` writes."""

from __future__ import annotations

import json
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from resnet_serve.errors import OutputError, first_line
from resnet_serve.files import replacing_atomically

if TYPE_CHECKING:
    from resnet_serve.client.results import BenchmarkResult
    from resnet_serve.demo import DemoSummary
    from resnet_serve.experiments import DegradationResult, GradientResult
    from resnet_serve.models import ArchitectureInfo
    from resnet_serve.parity import ParityResult
    from resnet_serve.training import TrainResult
    from resnet_serve.triton.repository import EntrySummary
    from resnet_serve.tuning.search import TuneResult
    from resnet_serve.verify import VerifyReport

__all__ = [
    "bench_table",
    "degradation_table",
    "demo_table",
    "gradients_table",
    "models_table",
    "parity_line",
    "repository_table",
    "step_lines",
    "trained_line",
    "tune_table",
    "verify_table",
    "write_json",
]


def write_json(path: Path | None, result: Any) -> None:
    """``result`` (a dataclass, or anything with ``to_dict``) as JSON, replaced atomically; None writes nothing."""
    if path is None:
        return
    data = result.to_dict() if hasattr(result, "to_dict") else asdict(result) if is_dataclass(result) else result
    try:
        with replacing_atomically(path) as temporary:
            temporary.write_text(json.dumps(data, indent=2, default=str) + "\n")
    except OSError as error:
        # Checked before the work; this is what changed since (a full disk, a folder made there).
        raise OutputError(f"cannot write {path}: {first_line(error)}") from None


def parity_line(parity: ParityResult) -> str:
    return f"max-abs {parity.max_abs:.1e} ({parity.max_abs_relative:.1e} of the largest logit)"


def models_table(infos: list[ArchitectureInfo]) -> Table:
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
    return table


def verify_table(report: VerifyReport, *, rtol: float | None) -> Table:
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
    return table


def bench_table(result: BenchmarkResult) -> Table:
    rate_mode = result.mode == "request-rate"
    table = Table(
        "rate/s" if rate_mode else "concurrency", "infer/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "std ms",
        "send µs", "recv µs", "queue µs", "compute µs", *(("late", "dropped") if rate_mode else ()),
        title=f"{result.model} over {result.protocol}, batch {result.batch_size} ({result.engine})",
    )
    for row in result.results:
        compute = row.server_compute_input_us + row.server_compute_infer_us + row.server_compute_output_us
        table.add_row(
            f"{row.request_rate:g}" if rate_mode else str(row.concurrency), f"{row.inferences_per_second:.1f}",
            f"{row.p50_ms:.2f}", f"{row.p90_ms:.2f}", f"{row.p95_ms:.2f}", f"{row.p99_ms:.2f}",
            "–" if row.std_ms is None else f"{row.std_ms:.2f}",
            f"{row.client_send_us:.0f}", f"{row.client_recv_us:.0f}", f"{row.server_queue_us:.0f}", f"{compute:.0f}",
            *((_count(row.late_requests), _count(row.dropped_requests)) if rate_mode else ()),
        )
    return table


def step_lines(result: BenchmarkResult) -> list[str]:
    """An ensemble's rows split by step (``bench --images``): where each level's server time went."""
    rate_mode = result.mode == "request-rate"
    return [
        f"  {row.request_rate if rate_mode else row.concurrency}: {step.model}: queue {step.queue_us:.0f} µs, "
        f"compute {step.compute_us:.0f} µs per request, {step.requests / max(step.executions, 1):.2f} requests per "
        "execution"
        for row in result.results for step in row.steps or ()
    ]


def _count(value: int | None) -> str:
    return "–" if value is None else str(value)


def tune_table(result: TuneResult, *, concurrency: int, batch_size: int, p99_ms: float | None) -> Table:
    # The -preprocess step's settings, where the image pipeline was searched with the classifier.
    pipeline = result.baseline.candidate.searches_pipeline
    table = Table(
        "", "runtime", "batch ≤", "pref.", "delay µs", "inst. × thr.",
        *(("preprocess",) if pipeline else ()), "infer/s", "p50 ms", "p99 ms", "",
        title=f"Pareto front of {result.model}: concurrency {concurrency}, batch {batch_size}"
        + (f", p99 ≤ {p99_ms:g} ms" if p99_ms is not None else "")
        + (f", image files from {result.options.images}" if pipeline else ""),
    )
    for label in dict.fromkeys([*result.pareto, "current"]):
        measured = result.measurement(label)
        candidate, row = measured.candidate, measured.result
        notes = (("chosen", label == result.chosen), ("not on the front", label not in result.pareto))
        figures = (f"{row.inferences_per_second:.1f}", f"{row.p50_ms:.1f}", f"{row.p99_ms:.1f}") if row else (
            measured.status, "", "")
        step = (f"{candidate.preprocess_instances} inst., batch ≤ {candidate.preprocess_max_batch_size}, "
                f"{candidate.preprocess_max_queue_delay_us} µs",) if pipeline else ()
        table.add_row(
            label, candidate.runtime, str(candidate.max_batch_size), str(candidate.preferred_batch_size or "–"),
            str(candidate.max_queue_delay_us), f"{candidate.instances} × {candidate.threads or 'default'}", *step,
            *figures, ", ".join(note for note, on in notes if on),
        )
    return table


def trained_line(result: TrainResult) -> str:
    """What a training run reached, and where its checkpoints are."""
    top5 = f", top-5 {result.val_top5:.2%}" if result.val_top5 is not None else ""
    processes = f"{result.processes} process" + ("es" if result.processes > 1 else "")
    line = (
        f"[green]✓[/] val top-1 {result.val_top1:.2%}{top5} on {result.val_images} images after {result.epochs} "
        f"epochs on {result.train_images} ({result.images_per_second:.0f} img/s, {result.seconds:.0f} s, "
        f"{processes}) → {result.checkpoint}; best {result.best_val_top1:.2%} → {result.best_checkpoint}"
    )
    if result.ema_checkpoint is not None:
        line += f"; EMA {result.ema_val_top1:.2%} → {result.ema_checkpoint}"
    return line


def degradation_table(result: DegradationResult) -> Table:
    table = Table(
        "net", "train error", "test error", "seconds",
        title=f"after {result.epochs} epochs on {result.train_images} images",
    )
    for run in result.runs:
        table.add_row(
            run.architecture, f"{run.train_error[-1]:.2%}", f"{run.test_error[-1]:.2%}", f"{run.seconds:.0f}"
        )
    return table


def gradients_table(result: GradientResult) -> Table:
    table = Table("net", "first block", "last block", f"first after {result.steps} steps", "last after",
                  title="‖∂loss/∂block input‖")
    for profile in result.profiles:
        table.add_row(profile.architecture, f"{profile.at_init[0]:.3g}", f"{profile.at_init[-1]:.3g}",
                      f"{profile.after_steps[0]:.3g}", f"{profile.after_steps[-1]:.3g}")
    return table


def demo_table(result: DemoSummary) -> Table:
    table = Table("", "value", title="resnet-serve demo")
    for label, value in result.summary_rows():
        table.add_row(label, value)
    return table


def repository_table(summaries: list[EntrySummary], *, title: str) -> Table:
    table = Table("entry", "target", "versions", "MB per version", "test accuracy", title=title)
    for summary in summaries:
        if summary.problem:
            table.add_row(escape(summary.name), "[red]unreadable[/] (below)", "", "", "")
            continue
        table.add_row(
            summary.name, summary.target, ", ".join(map(str, summary.versions)),
            ", ".join(f"{size / 1e6:.2f}" for size in summary.version_bytes),
            "" if summary.test_accuracy is None else f"{summary.test_accuracy:.2%}",
        )
    return table
