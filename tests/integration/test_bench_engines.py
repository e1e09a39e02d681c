"""Both benchmark engines and the report against the real embedded tritonserver serving the
session's trained ResNet-20: perf_analyzer (the real binary), our closed and open loops, and
the HTML report as headless Chromium renders it."""

from __future__ import annotations

import csv
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from resnet_serve.cli import app
from resnet_serve.client.inference import InferenceClient
from resnet_serve.client.results import PERF_ANALYZER_COLUMNS
from resnet_serve.report import CHROMIUM_FLAGS, find_chromium
from resnet_serve.triton.server import TritonServer, find_free_ports

pytestmark = pytest.mark.triton
runner = CliRunner()
MODEL = "r20bench"
# Short windows and a loose rule: these tests check what is measured, not how steady 2 shared
# cores are (the stability rule itself is tested in tests/unit/test_bench.py).
QUICK = ["--measurement-interval", "300", "--stability-percentage", "1000", "--max-trials", "8"]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="module")
def server(trained_resnet20: Path, results: Path, tmp_path_factory):
    repository = tmp_path_factory.mktemp("repo")
    exported = runner.invoke(app, ["export", str(trained_resnet20), "--repository", str(repository), "--name", MODEL,
                                   "--verify-images", "64", "--json", str(results / "export.json")])
    assert exported.exit_code == 0, exported.output
    http, grpc, metrics = find_free_ports(3)
    with TritonServer(repository=repository, http_port=http, grpc_port=grpc, metrics_port=metrics,
                      log_file=tmp_path_factory.mktemp("log") / "triton.log") as running:
        yield running


def served_requests(server: TritonServer) -> int:
    with InferenceClient(protocol="grpc", url=server.urls.grpc) as client:
        return client.statistics().success_count


def bench(server: TritonServer, report: Path, *args: str, protocol: str = "grpc") -> dict:
    """`bench --json report ARGS` with QUICK windows; the result it wrote."""
    result = runner.invoke(app, ["bench", "--url", getattr(server.urls, protocol), "--protocol", protocol, *QUICK,
                                 *args, "--json", str(report)])
    assert result.exit_code == 0, result.output
    return json.loads(report.read_text())


def check_row(row: dict, batch_size: int) -> None:
    assert row["requests"] > 0 and row["windows"] == 3
    assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p95_ms"] <= row["p99_ms"]
    assert row["std_ms"] > 0 and row["mean_ms"] > 0
    assert row["inferences_per_second"] == pytest.approx(batch_size * row["requests_per_second"])
    # perf_analyzer rounds to whole µs, so a small answer's receive time may read 0.
    assert row["server_compute_infer_us"] > 0 and row["client_send_us"] >= 0 and row["client_recv_us"] >= 0
    server_ms = (row["server_queue_us"] + row["server_compute_input_us"] + row["server_compute_infer_us"]
                 + row["server_compute_output_us"]) / 1000
    assert server_ms < row["mean_ms"]


@dataclass(frozen=True)
class Run:
    path: Path  # the bench --json file
    result: dict
    served: int  # requests the server counted while it ran


def run_bench(server: TritonServer, path: Path, *args: str, protocol: str = "grpc") -> Run:
    before = served_requests(server)
    result = bench(server, path, *args, protocol=protocol)
    return Run(path=path, result=result, served=served_requests(server) - before)


@pytest.fixture(scope="module")
def perf_analyzer_run(server, results) -> Run:
    return run_bench(server, results / "bench-perf_analyzer.json", "--engine", "perf_analyzer", "--concurrency", "1,2",
                     "--batch-size", "2", "--csv", str(results / "pa.csv"))


@pytest.fixture(scope="module")
def our_run(server, results) -> Run:
    return run_bench(server, results / "bench-resnet-serve.json", "--concurrency", "1,2", "--warmup", "0.2",
                     "--plot", str(results / "ours.png"))


def test_perf_analyzer_engine_reads_the_real_binarys_csv(perf_analyzer_run, results):
    bench_result = perf_analyzer_run.result
    assert bench_result["engine"] == "perf_analyzer" and bench_result["batch_size"] == 2
    assert [r["concurrency"] for r in bench_result["results"]] == [1, 2]
    for row in bench_result["results"]:
        check_row(row, 2)
    # Every request perf_analyzer counted reached our server (it also sends some outside its windows).
    assert perf_analyzer_run.served >= sum(r["requests"] for r in bench_result["results"])
    rows = list(csv.reader((results / "pa.csv").open()))
    assert tuple(rows[0]) == PERF_ANALYZER_COLUMNS and len(rows) == 3


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_our_engine_measures_client_and_server_time(server, our_run, tmp_path, protocol):
    run = our_run if protocol == "grpc" else run_bench(
        server, tmp_path / "http.json", "--concurrency", "1,2", "--warmup", "0.2", protocol="http")
    assert run.result["engine"] == "resnet-serve" and run.result["client"] == "threads"
    for row in run.result["results"]:
        check_row(row, 1)
        # gRPC writes the prepared bytes inside the call: no send work of ours to time.
        assert (row["client_send_us"] > 0) == (protocol == "http") and row["client_recv_us"] > 0
    assert run.served >= sum(r["requests"] for r in run.result["results"])
    if protocol == "grpc":
        with Image.open(run.path.with_name("ours.png")) as plot:
            assert plot.format == "PNG" and plot.width > 400


def test_asyncio_client_measures_the_same_model(server, tmp_path):
    bench_result = bench(server, tmp_path / "asyncio.json", "--client", "asyncio", "--concurrency", "2", "--warmup", "0.2")
    assert bench_result["client"] == "asyncio"
    check_row(bench_result["results"][0], 1)


def test_request_rate_mode_keeps_its_schedule_and_counts_drops(server, tmp_path):
    table = tmp_path / "rate.csv"
    steady = bench(server, tmp_path / "steady.json", "--request-rate", "40", "--distribution", "poisson", "--warmup", "0.2",
                   "--measurement-interval", "1000", "--csv", str(table))
    row = steady["results"][0]
    assert steady["mode"] == "request-rate" and steady["distribution"] == "poisson"
    assert row["request_rate"] == 40 and row["dropped_requests"] == 0
    # Poisson arrivals over 3 s: about 120 requests (a 99.9% band around the expected count).
    assert 85 <= row["requests"] <= 160
    assert list(csv.reader(table.open()))[0][0] == "Request Rate"
    # One slot and far more requests than the server can answer: the schedule does not wait.
    overloaded = bench(server, tmp_path / "overloaded.json", "--request-rate", "20000", "--max-outstanding", "1", "--warmup", "0")
    row = overloaded["results"][0]
    assert row["dropped_requests"] > row["requests"] > 0
    assert row["requests_per_second"] < 20000 / 4


def test_bad_options_are_one_line(server):
    for args in (["--engine", "ab"], ["--client", "fibers"], ["--request-rate", "0"], ["--stability-percentage", "0"], ["--batch-size", "1000"]):
        result = runner.invoke(app, ["bench", "--url", server.urls.grpc, *args])
        assert result.exit_code != 0 and "Traceback" not in result.output, args
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_report_renders_in_chromium_with_its_images_and_numbers(
    server, results, perf_analyzer_run, our_run, trained_resnet20, tmp_path
):
    evaluation = results / "evaluate.json"
    evaluated = runner.invoke(app, ["evaluate", "--url", server.urls.grpc, "--limit", "200", "--checkpoint",
                                    str(trained_resnet20), "--json", str(evaluation)])
    assert evaluated.exit_code == 0, evaluated.output
    out = tmp_path / "report"
    made = runner.invoke(app, ["report", "-o", str(out), "--export", str(results / "export.json"),
                               "--evaluate", str(evaluation), "--bench", str(our_run.path),
                               "--bench", str(perf_analyzer_run.path)])
    assert made.exit_code == 0, made.output
    page = (out / "report.html").read_text()
    assert "http://" not in page.replace(server.urls.grpc, "") and "src='data:image/png;base64," in page
    dom = subprocess.run(
        [str(find_chromium()), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
         (out / "report.html").as_uri()], capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    images = re.findall(r"<img [^>]*>", dom)
    assert len(images) == 3 + bool(json.loads(evaluation.read_text()).get("confusion_matrix"))
    # Each image's onload wrote its decoded width: a broken image never fires onload.
    assert all(int(re.search(r'data-decoded="(\d+)"', img).group(1)) > 100 for img in images), images
    top1 = f"{json.loads(evaluation.read_text())['top1']:.2%}"
    fastest = max(perf_analyzer_run.result["results"], key=lambda r: r["inferences_per_second"])
    for number in (top1, f"{fastest['inferences_per_second']:.1f}", f"{fastest['p99_ms']:.2f}", "perf_analyzer"):
        assert number in dom, number
    markdown = (out / "report.md").read_text()
    assert top1 in markdown and all((out / name).is_file() for name in re.findall(r"\]\(([^)]+\.png)\)", markdown))
