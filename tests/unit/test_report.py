"""The report from result files: what a missing or broken input does, and the markdown twin."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from resnet_serve.cli import app
from resnet_serve.client.results import BenchmarkResult, ConcurrencyResult
from resnet_serve.errors import ReportError
from resnet_serve.report import build_report

runner = CliRunner()


def bench_json(path, engine: str, throughput: float) -> None:
    rows = [ConcurrencyResult(
        concurrency=level, batch_size=1, requests=1000, inferences_per_second=throughput * level,
        requests_per_second=throughput * level, p50_ms=1.5 * level, p90_ms=2.0 * level, p95_ms=2.5 * level,
        p99_ms=4.0 * level, mean_ms=1.8 * level, std_ms=0.5, server_queue_us=200.0, server_compute_input_us=15.0,
        server_compute_infer_us=1200.0, server_compute_output_us=100.0, client_recv_us=20.0, windows=3,
    ) for level in (1, 2)]
    result = BenchmarkResult(model="r20", protocol="grpc", url="localhost:8001", batch_size=1, warmup_seconds=1,
                             measurement_seconds=5, results=rows, engine=engine)
    path.write_text(json.dumps(result.to_dict()))


def test_bench_runs_overlay_and_the_markdown_twin_names_its_pngs(tmp_path):
    bench_json(tmp_path / "a.json", "resnet-serve", 400.0)
    bench_json(tmp_path / "b.json", "perf_analyzer", 437.5)
    # An evaluation written before the confusion matrix existed: that part is just absent.
    (tmp_path / "eval.json").write_text(json.dumps({"model": "r20", "top1": 0.9045, "images": 10000}))
    result = build_report(output_dir=tmp_path / "out", evaluate=tmp_path / "eval.json",
                          bench=[tmp_path / "a.json", tmp_path / "b.json"])
    assert [p.name for p in result.images] == ["latency-throughput.png", "server-split-0.png", "server-split-1.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in result.images)
    markdown = result.markdown.read_text()
    assert "90.45%" in markdown and "| 2 | 875.0 |" in markdown and "![latency vs throughput](latency-throughput.png)" in markdown
    page = result.html.read_text()
    assert page.count("src='data:image/png;base64,") == 3 and "<script" not in page


@pytest.mark.parametrize("content", ["not json {", "[1, 2]"])
def test_a_broken_input_is_one_line_and_writes_nothing(tmp_path, content):
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(ReportError, match="bad.json"):
        build_report(output_dir=tmp_path / "out", export=tmp_path / "bad.json")
    assert not (tmp_path / "out").exists()
    result = runner.invoke(app, ["report", "-o", str(tmp_path / "out"), "--bench", str(tmp_path / "bad.json")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert runner.invoke(app, ["report", "-o", str(tmp_path / "out")]).exit_code == 1


def test_an_evaluation_with_a_confusion_matrix_gets_its_plot_and_per_class_table(tmp_path):
    names = ["T-shirt/top", "Trouser", "Pullover"]
    (tmp_path / "eval.json").write_text(json.dumps({
        "model": "r20", "protocol": "grpc", "top1": 0.8, "images": 30, "class_names": names,
        "confusion_matrix": [[9, 0, 1], [0, 10, 0], [4, 1, 5]], "per_class_accuracy": [0.9, 1.0, 0.5],
    }))
    result = build_report(output_dir=tmp_path / "out", evaluate=tmp_path / "eval.json")
    assert [p.name for p in result.images] == ["confusion-matrix.png"]
    markdown = result.markdown.read_text()
    assert "| T-shirt/top | 90.00% |" in markdown and "| Pullover | 50.00% |" in markdown


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ('{"model": "r20", "results": "notalist"}', "is not a `bench --json` result"),
        ('{"results": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested deeper than any --json result"),
        (None, "is 67,108,865 bytes; a --json result is far smaller"),
    ],
    ids=["results-not-a-list", "nested-100000-deep", "over-64-MiB"],
)
def test_a_hostile_bench_file_is_one_line_through_the_command(tmp_path, content, says):
    path = tmp_path / "bench.json"
    if content is None:
        with path.open("wb") as sparse:
            sparse.truncate((64 << 20) + 1)
    else:
        path.write_text(content)

    result = runner.invoke(app, ["report", "--bench", str(path), "-o", str(tmp_path / "out")])

    assert result.exit_code == 1 and result.exception is None or isinstance(result.exception, SystemExit)
    assert says in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not (tmp_path / "out" / "report.html").exists()


def test_names_from_the_inputs_are_text_in_the_plots_the_page_and_the_markdown(tmp_path):
    """A `$` pair is no mathtext, and a name's markup is shown, never run, in either file."""
    bench_json(tmp_path / "a.json", "resnet-serve", 400.0)
    data = json.loads((tmp_path / "a.json").read_text())
    # "$\\oops$" is mathtext matplotlib cannot parse: it raised from savefig.
    data["model"] = "r$\\oops$ <script>alert(1)</script> *bold* [link](x)"
    (tmp_path / "a.json").write_text(json.dumps(data))
    (tmp_path / "eval.json").write_text(json.dumps({
        "model": "$\\oops$", "class_names": ["$\\oops$", "<b>b</b>", "c|d"],
        "confusion_matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]], "per_class_accuracy": [1, 1, 1],
        # Fields of the wrong type are left out, as missing ones are.
        "top1": "high", "per_class": {"nested": [1, 2]},
    }))

    result = build_report(output_dir=tmp_path / "out", bench=[tmp_path / "a.json"], evaluate=tmp_path / "eval.json")

    markdown = result.markdown.read_text()
    assert "<script>" not in markdown and "&lt;script&gt;" in markdown and "<b>" not in markdown
    assert "\\*bold\\*" in markdown and "\\[link\\]" in markdown and "c\\|d" in markdown
    assert "<script>" not in result.html.read_text()
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in result.images)
