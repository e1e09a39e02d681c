"""One page that says how good and how fast a served model is, built from the JSON results.

The inputs are the files `export --json`, `verify --json`, `evaluate --json` and `bench --json`
write; each is read defensively: at most 64 MiB of JSON, no deeper than Python's parser goes,
and a field of the wrong type is left out like a missing one (a `bench` file must be whole).
Names in the inputs are text: escaped in the HTML and the markdown, never read as matplotlib
mathtext (a `$` pair in a model name is two dollar signs). The page is written twice: a
self-contained HTML file (images as data: URIs, no external assets, so it can be mailed or
archived) and a markdown twin with the PNGs beside it.

Plots are drawn with matplotlib's Agg backend: latency (p50, p99) against throughput for one
or several benchmark runs, the per-request time split (client, network, server queue and
compute) per level, and the confusion matrix of an evaluation.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnet_serve.client.results import BenchmarkResult
from resnet_serve.errors import MissingDependencyError, ReportError, first_line
from resnet_serve.files import replacing_atomically

if TYPE_CHECKING:
    from resnet_serve.tuning.search import TuneResult

# The per-request time split, in the order perf_analyzer's CSV lists it, and the colours used.
SPLIT_PARTS = (
    ("client send", "client_send_us", "#9ecae1"),
    ("network + server I/O", "network_us", "#c6dbef"),
    ("server queue", "server_queue_us", "#fdae6b"),
    ("compute input", "server_compute_input_us", "#a1d99b"),
    ("compute infer", "server_compute_infer_us", "#31a354"),
    ("compute output", "server_compute_output_us", "#74c476"),
    ("client recv", "client_recv_us", "#6baed6"),
)
# A --json result of ours is kilobytes (an evaluation's confusion matrix of 1000 classes, a few MB).
MAX_RESULT_BYTES = 64 << 20
# A confusion matrix is drawn, one annotated cell per pair, for up to this many classes.
MAX_PLOTTED_CLASSES = 50
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
)


@dataclass(frozen=True)
class Figure:
    name: str  # the PNG's file name beside the markdown
    title: str
    png: bytes


@dataclass
class Section:
    title: str
    rows: list[tuple[str, str]] = field(default_factory=list)  # label, value
    tables: list[tuple[list[str], list[list[str]]]] = field(default_factory=list)  # header, rows
    figures: list[Figure] = field(default_factory=list)


@dataclass(frozen=True)
class ReportResult:
    html: Path
    markdown: Path
    images: list[Path]
    sections: list[str]


def read_result(path: Path) -> dict[str, Any]:
    """A JSON object written by one of our commands; one clear line if it is not one."""
    try:
        size = path.stat().st_size
        if size > MAX_RESULT_BYTES:
            raise ReportError(f"{path} is {size:,} bytes; a --json result is far smaller "
                              f"(at most {MAX_RESULT_BYTES:,})")
        data = json.loads(path.read_text())
    except RecursionError:
        raise ReportError(f"cannot read {path}: its JSON is nested deeper than any --json result") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ReportError(f"cannot read {path}: {first_line(exc)}") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path} holds a JSON {type(data).__name__}, not the object a --json result is")
    return data


def read_benchmark(path: Path) -> BenchmarkResult:
    try:
        return BenchmarkResult.from_dict(read_result(path))
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ReportError(f"{path} is not a `bench --json` result ({type(exc).__name__}: {first_line(exc)})") from None


def _object(value: Any) -> dict:
    """A JSON object field, or an empty one when it is anything else."""
    return value if isinstance(value, dict) else {}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    # Labels come from the inputs (model names, class names): text, never mathtext.
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(figure)
    return buffer.getvalue()


def run_label(run: BenchmarkResult) -> str:
    mode = "" if run.mode == "concurrency" else f", {run.distribution} rate"
    return f"{run.model} b{run.batch_size} {run.protocol} ({run.engine}{mode})"


def latency_throughput_png(runs: Sequence[BenchmarkResult]) -> bytes:
    """p50 (solid) and p99 (dashed) latency against throughput, one colour per run, each point
    marked with its concurrency level or request rate."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7.5, 4.5))
    for index, run in enumerate(runs):
        colour, label = f"C{index % 10}", run_label(run)
        x = [row.inferences_per_second for row in run.results]
        axes.plot(x, [row.p50_ms for row in run.results], "o-", color=colour, label=f"{label} p50")
        axes.plot(x, [row.p99_ms for row in run.results], "s--", color=colour, alpha=0.7, label=f"{label} p99")
        for row in run.results:
            level = f"c{row.concurrency}" if row.request_rate is None else f"{row.request_rate:g}/s"
            axes.annotate(level, (row.inferences_per_second, row.p50_ms), textcoords="offset points",
                          xytext=(4, -10), fontsize=8, color=colour)
    axes.set_xlabel("throughput (inferences/s)")
    axes.set_ylabel("latency (ms)")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    axes.set_title("latency vs throughput")
    return _png(figure)


def _write_png(png: bytes, path: Path) -> Path:
    with replacing_atomically(path) as temporary:
        temporary.write_bytes(png)
    return path


def write_latency_throughput_plot(runs: Sequence[BenchmarkResult], path: Path) -> Path:
    """The latency-throughput PNG of one run, or of several overlaid."""
    return _write_png(latency_throughput_png(runs), path)


def server_split_png(run: BenchmarkResult) -> bytes:
    """Stacked bars of where a request's mean time goes, one bar per level."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7.5, 0.6 + 0.5 * len(run.results)))
    names = [f"c{row.concurrency}" if row.request_rate is None else f"{row.request_rate:g}/s" for row in run.results]
    left = [0.0] * len(run.results)
    for label, attribute, colour in SPLIT_PARTS:
        widths = [getattr(row, attribute) for row in run.results]
        axes.barh(names, widths, left=left, color=colour, label=label)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    axes.invert_yaxis()
    axes.set_xlabel("mean time per request (µs)")
    axes.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.35 - 0.1 / len(run.results)))
    axes.set_title(f"where the time goes: {run_label(run)}", fontsize=9)
    return _png(figure)


def tuning_png(result: TuneResult) -> bytes:
    """p99 latency against throughput of every configuration a tuning run measured, one colour
    per runtime: the Pareto front as a line, the p99 budget, the current configuration ringed
    and the chosen one starred."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7.5, 4.5))
    measured = [m for m in result.measurements if m.point is not None]
    runtimes = list(dict.fromkeys(m.candidate.runtime for m in measured))
    for index, runtime in enumerate(runtimes):
        points = [m.point for m in measured if m.candidate.runtime == runtime]
        axes.scatter([x for x, _ in points], [y for _, y in points], color=f"C{index % 10}", s=22, label=runtime)
    front = [result.measurement(label).point for label in result.pareto]
    axes.plot([x for x, _ in front], [y for _, y in front], "-", color="0.3", linewidth=1, label="Pareto front")
    if result.baseline.point is not None:
        axes.scatter(*result.baseline.point, s=160, facecolors="none", edgecolors="black", label="current")
    if result.chosen is not None:
        axes.scatter(*result.measurement(result.chosen).point, marker="*", s=220, color="gold",
                     edgecolors="black", zorder=3, label=f"chosen ({result.chosen})")
    if result.options.p99_budget_ms is not None:
        axes.axhline(result.options.p99_budget_ms, color="C3", linestyle="--", linewidth=1, label="p99 budget")
    left_out = len(result.measurements) - len(measured)
    axes.set_xlabel("throughput (inferences/s)")
    axes.set_ylabel("p99 latency (ms)")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    axes.set_title(
        f"tune {result.model}: concurrency {result.options.concurrency}, batch {result.options.batch_size}, "
        f"{len(measured)} measured" + (f", {left_out} unstable or failed" if left_out else ""),
        fontsize=9,
    )
    return _png(figure)


def write_tuning_plot(result: TuneResult, path: Path) -> Path:
    return _write_png(tuning_png(result), path)


def confusion_matrix_png(matrix: Sequence[Sequence[float]], class_names: Sequence[str]) -> bytes:
    plt = _pyplot()
    import numpy as np

    counts = np.asarray(matrix, dtype=float)
    figure, axes = plt.subplots(figsize=(6.5, 5.5))
    image = axes.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046)
    ticks = range(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(ticks, class_names, fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    threshold = counts.max() / 2 if counts.size else 0
    for (i, j), value in np.ndenumerate(counts):
        axes.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7,
                  color="white" if value > threshold else "black")
    axes.set_title("confusion matrix (served model)")
    return _png(figure)


def _percent(value: Any) -> str:
    return f"{value:.2%}" if isinstance(value, (int, float)) else "–"


def _number(value: Any, spec: str = ".3g") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "–"


def _export_section(data: dict) -> Section:
    section = Section("Export")
    for label, key, shown in (
        ("model", "name", str), ("architecture", "architecture", str), ("target", "target", str),
        ("precision", "precision", str), ("BatchNorms folded", "batchnorms_folded", str),
        ("folded vs original max-abs", "fold_max_abs", _number), ("ONNX vs PyTorch max-abs", "onnx_max_abs", _number),
        ("ONNX vs PyTorch top-1 agreement", "onnx_top1_agreement", _percent),
        ("verified on", "verify_images", lambda v: f"{v} test images"),
    ):
        if data.get(key) is not None:
            section.rows.append((label, shown(data[key])))
    parity = _object(data.get("precision_parity"))
    if parity.get("top1_agreement") is not None:
        section.rows.append((f"{data.get('precision')} vs FP32 top-1 agreement", _percent(parity["top1_agreement"])))
    return section


def _verify_section(data: dict) -> Section:
    parity = _object(data.get("parity"))
    section = Section(f"Verify: {parity.get('candidate', '?')} against {parity.get('reference', '?')}")
    for label, key, shown in (
        ("images", "n_images", str), ("max-abs logit difference", "max_abs", _number),
        ("mean relative error", "mean_rel", _number), ("top-1 agreement", "top1_agreement", _percent),
        (f"{parity.get('reference', 'reference')} top-1", "reference_top1", _percent),
        (f"{parity.get('candidate', 'candidate')} top-1", "candidate_top1", _percent),
    ):
        if parity.get(key) is not None:
            section.rows.append((label, shown(parity[key])))
    per_batch = parity.get("per_batch")
    batches = [b for b in per_batch if isinstance(b, dict)] if isinstance(per_batch, list) else []
    if batches:
        section.tables.append((
            ["batch", "max-abs", "mean rel", "top-1 agreement", "top-1"],
            [[str(b.get("batch_size")), _number(b.get("max_abs")), _number(b.get("mean_rel")),
              _percent(b.get("top1_agreement")), _percent(b.get("top1_accuracy"))] for b in batches],
        ))
    return section


def _evaluate_section(data: dict) -> Section:
    section = Section(f"Evaluate: {data.get('model', 'served model')} over {data.get('protocol', '?')}")
    for label, key, shown in (
        ("images", "images", str), ("top-1", "top1", _percent), ("top-5", "top5", _percent),
        ("top-1 agreement with PyTorch", "agreement", _percent), ("PyTorch top-1", "reference_top1", _percent),
        ("max-abs logit difference", "max_abs_logit_difference", _number),
        ("images/s", "images_per_second", lambda v: _number(v, ".0f")),
    ):
        if data.get(key) is not None:
            section.rows.append((label, shown(data[key])))
    matrix = _square_matrix(data.get("confusion_matrix"))
    names = data.get("class_names")
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        names = [str(i) for i in range(len(matrix))]
    if matrix and len(names) == len(matrix):
        if len(matrix) <= MAX_PLOTTED_CLASSES:
            section.figures.append(
                Figure("confusion-matrix.png", "confusion matrix", confusion_matrix_png(matrix, names))
            )
        else:
            section.rows.append(("confusion matrix", f"{len(matrix)} classes: in the JSON, not drawn"))
    per_class = data.get("per_class_accuracy")
    if isinstance(per_class, dict):
        per_class = [per_class.get(name) for name in names] if names else list(per_class.values())
    if isinstance(per_class, list) and per_class and len(per_class) == len(names):
        rows = [[name, _percent(accuracy)] for name, accuracy in zip(names, per_class, strict=True)]
        section.tables.append((["class", "accuracy"], rows))
    return section


def _square_matrix(value: Any) -> list[list[float]]:
    """A JSON confusion matrix: a square list of lists of numbers, else none."""
    if not isinstance(value, list) or not all(isinstance(row, list) and len(row) == len(value) for row in value):
        return []
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for row in value for x in row):
        return []
    return value


def _bench_sections(runs: Sequence[BenchmarkResult]) -> list[Section]:
    sections = []
    for index, run in enumerate(runs):
        section = Section(f"Benchmark: {run_label(run)}")
        windows = f"{run.measurement_seconds:g} s each, stable within ±{run.stability_percentage:g}%"
        section.rows += [("engine", run.engine), ("url", run.url), ("windows", windows)]
        if run.machine:
            section.rows.append(("machine", run.machine))
        level = "concurrency" if run.mode == "concurrency" else "request rate"
        section.tables.append((
            [level, "infer/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "mean ms", "std ms",
             "client send µs", "client recv µs", "queue µs", "compute µs"],
            [[str(r.concurrency) if r.request_rate is None else f"{r.request_rate:g}/s",
              f"{r.inferences_per_second:.1f}", f"{r.p50_ms:.2f}", f"{r.p90_ms:.2f}", f"{r.p95_ms:.2f}",
              f"{r.p99_ms:.2f}", f"{r.mean_ms:.2f}", _number(r.std_ms, ".2f"), f"{r.client_send_us:.0f}",
              f"{r.client_recv_us:.0f}", f"{r.server_queue_us:.0f}",
              f"{r.server_compute_input_us + r.server_compute_infer_us + r.server_compute_output_us:.0f}"]
             for r in run.results],
        ))
        section.figures.append(Figure(f"server-split-{index}.png", "where the time goes", server_split_png(run)))
        sections.append(section)
    if runs:
        sections[0].figures.insert(0, Figure("latency-throughput.png", "latency vs throughput",
                                             latency_throughput_png(runs)))
    return sections


def build_report(
    *,
    output_dir: Path,
    export: Path | None = None,
    verify: Path | None = None,
    evaluate: Path | None = None,
    bench: Sequence[Path] = (),
    title: str = "resnet-serve report",
) -> ReportResult:
    """Write ``report.html`` (self-contained) and ``report.md`` with its PNGs into ``output_dir``."""
    sections: list[Section] = []
    if export is not None:
        sections.append(_export_section(read_result(export)))
    if verify is not None:
        sections.append(_verify_section(read_result(verify)))
    if evaluate is not None:
        sections.append(_evaluate_section(read_result(evaluate)))
    sections += _bench_sections([read_benchmark(path) for path in bench])
    if not sections:
        raise ReportError("nothing to report: give at least one of --export, --verify, --evaluate or --bench")
    images = []
    for figure in (f for s in sections for f in s.figures):
        with replacing_atomically(output_dir / figure.name) as temporary:
            temporary.write_bytes(figure.png)
        images.append(output_dir / figure.name)
    page, markdown = output_dir / "report.html", output_dir / "report.md"
    with replacing_atomically(page) as temporary:
        temporary.write_text(render_html(sections, title=title), encoding="utf-8")
    with replacing_atomically(markdown) as temporary:
        temporary.write_text(render_markdown(sections, title=title), encoding="utf-8")
    return ReportResult(html=page, markdown=markdown, images=images, sections=[s.title for s in sections])


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; } img { max-width: 100%; }
"""


def render_html(sections: Sequence[Section], *, title: str) -> str:
    """The page, with every image inline; each image records that it decoded (data-decoded)."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for section in sections:
        parts.append(f"<section><h2>{html.escape(section.title)}</h2>")
        if section.rows:
            parts.append("<table>" + "".join(
                f"<tr><td>{html.escape(label)}</td><td class='value'>{html.escape(value)}</td></tr>"
                for label, value in section.rows) + "</table>")
        for header, rows in section.tables:
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" + "".join(
                "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
            ) + "</table>")
        for figure in section.figures:
            data = base64.b64encode(figure.png).decode("ascii")
            parts.append(
                f"<figure><img alt='{html.escape(figure.title)}' src='data:image/png;base64,{data}' "
                "onload=\"this.dataset.decoded = this.naturalWidth\">"
                f"<figcaption>{html.escape(figure.title)}</figcaption></figure>"
            )
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "".join(parts)


def _md(text: str) -> str:
    """Text for markdown: HTML escaped as in the page (a markdown renderer passes HTML through),
    and markdown's own punctuation backslashed, so a name is shown, never run or formatted."""
    return re.sub(r"([\\`*_\[\]|~])", r"\\\1", html.escape(text, quote=False))


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(sections: Sequence[Section], *, title: str) -> str:
    parts = [f"# {_md(title)}"]
    for section in sections:
        parts.append(f"## {_md(section.title)}")
        if section.rows:
            parts.append(_markdown_table(["", "value"], [list(row) for row in section.rows]))
        parts += [_markdown_table(header, rows) for header, rows in section.tables]
        parts += [f"![{_md(figure.title)}]({figure.name})" for figure in section.figures]
    return "\n\n".join(parts) + "\n"


def find_chromium() -> Path:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return Path(found)
    raise MissingDependencyError("a screenshot needs Chromium (Debian package chromium: make system-packages)")


def screenshot(page: Path, png: Path, *, width: int = 1280, height: int = 3000, timeout_s: float = 120.0) -> Path:
    """A PNG of ``page`` as headless Chromium renders it."""
    browser = find_chromium()
    with tempfile.TemporaryDirectory(prefix="chromium-") as scratch:
        # Chromium picks the image format from the name, so it writes a .png of its own first.
        shot = Path(scratch) / "screenshot.png"
        try:
            finished = subprocess.run(
                [str(browser), *CHROMIUM_FLAGS, f"--user-data-dir={scratch}/profile", f"--window-size={width},{height}",
                 f"--screenshot={shot}", page.resolve().as_uri()],
                capture_output=True, text=True, timeout=timeout_s, check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ReportError(f"Chromium could not render {page}: {first_line(exc)}") from None
        if finished.returncode != 0 or not shot.is_file():
            reason = finished.stderr.strip().splitlines()[-1] if finished.stderr.strip() else "no screenshot"
            raise ReportError(f"Chromium could not render {page}: {reason[:300]}")
        with replacing_atomically(png) as temporary:
            temporary.write_bytes(shot.read_bytes())
    return png
