"""The benchmark's arithmetic without a server: stability windows, schedules, perf_analyzer's CSV."""

from __future__ import annotations

import base64
import csv
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import typer

from resnet_serve.cli import app
from resnet_serve.client.bench import summarize_windows
from resnet_serve.client.inference import ModelStatistics
from resnet_serve.client.load import Schedule, Window
from resnet_serve.client.perf_analyzer import find_perf_analyzer, read_perf_analyzer_csv
from resnet_serve.client.results import PERF_ANALYZER_COLUMNS, BenchmarkResult, ConcurrencyResult
from resnet_serve.client.stability import StabilityRule, UnstableMeasurementError, measure_until_stable
from resnet_serve.errors import ClientError, MissingDependencyError
from resnet_serve.machine import describe_machine

# Written by perf_analyzer 2.40 (-f out.csv --verbose-csv) against the embedded server.
PERF_ANALYZER_CSV = """\
Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,Avg latency,request/response,response wait
1,512.377,3,337,250,17,1211,128,1,1370,3764,5082,7493,1949,4,1935
2,708.186,3,703,516,20,1396,179,1,1988,5332,6655,11858,2821,4,2806
"""


def stats(count: int, scale: int) -> ModelStatistics:
    return ModelStatistics(
        inference_count=count, execution_count=count, success_count=count, success_ns=count * scale * 10,
        queue_ns=count * scale, compute_input_ns=count * scale // 10, compute_infer_ns=count * scale * 5,
        compute_output_ns=count * scale // 5,
    )


def window(latencies_ms: list[float], *, seconds: float = 1.0, batch: int = 1, count: tuple[int, int] = (0, 0)) -> Window:
    latencies = np.array(latencies_ms) * 1e6
    return Window(
        seconds=seconds, batch_size=batch, latencies_ns=latencies.astype(np.int64),
        send_ns=np.full(latencies.size, 2_000), recv_ns=np.full(latencies.size, 30_000), late=0, dropped=0,
        server_before=stats(count[0], 1000), server_after=stats(count[1], 1000),
    )


def test_a_noisy_source_is_reported_unstable_with_every_window():
    # Throughput jumps between 100 and 200 per second: never three windows within 10%.
    source = iter([window([1.0] * n) for n in [100, 200] * 10])
    with pytest.raises(UnstableMeasurementError) as error:
        measure_until_stable(lambda: next(source), rule=StabilityRule(percentage=10, max_trials=6), label="concurrency 4")
    message = str(error.value)
    assert message.startswith("concurrency 4: no 3 consecutive windows within ±10% in 6 windows")
    assert message.count("/s p99") == 6 and "\n" not in message
    assert isinstance(error.value, ClientError)  # the CLI turns it into one line and exit 1
    # Once it named --measurement-seconds, which bench does not have.
    named = set(re.findall(r"--[a-z-]+", message))
    assert named and named <= bench_options()


def bench_options() -> set[str]:
    command = typer.main.get_command(app).commands["bench"]  # type: ignore[attr-defined]
    return {name for parameter in command.params for name in parameter.opts}


def test_p99_that_jumps_is_unstable_even_at_a_steady_throughput():
    tails = iter([window([1.0] * 95 + [tail] * 5) for tail in [2.0, 9.0] * 5])
    with pytest.raises(UnstableMeasurementError):
        measure_until_stable(lambda: next(tails), rule=StabilityRule(max_trials=10), label="c1")


def test_a_source_that_settles_is_extended_until_three_windows_agree():
    counts = iter([50, 300, 120, 200, 205, 198, 202])
    taken = []

    def next_window() -> Window:
        taken.append(next(counts))
        return window([1.0] * taken[-1])

    stable = measure_until_stable(next_window, rule=StabilityRule(percentage=10, max_trials=10), label="c1")
    assert taken == [50, 300, 120, 200, 205, 198]
    assert [w.requests for w in stable] == [200, 205, 198]


def test_perf_analyzers_rule_is_max_over_min():
    rule = StabilityRule(percentage=10)
    assert rule.holds([window([1.0] * 100), window([1.0] * 105), window([1.0] * 110)])  # 110/100 = 1.10
    assert not rule.holds([window([1.0] * 100), window([1.0] * 105), window([1.0] * 111)])
    assert not rule.holds([window([]), window([]), window([])])  # nothing answered is not stable
    with pytest.raises(ClientError):
        StabilityRule(max_trials=2)


def test_stable_windows_summarize_to_pooled_percentiles_and_the_servers_split():
    windows = [window(list(np.arange(1, 101, dtype=float)), batch=4, count=(0, 100)),
               window([50.0] * 100, batch=4, count=(100, 200))]
    row = summarize_windows(windows, concurrency=2, request_rate=None)
    pooled = np.concatenate([np.arange(1, 101), np.full(100, 50.0)])
    assert row.requests == 200 and row.inferences_per_second == pytest.approx(400.0)
    assert row.p50_ms == pytest.approx(np.percentile(pooled, 50))
    assert row.p99_ms == pytest.approx(np.percentile(pooled, 99))
    assert row.std_ms == pytest.approx(pooled.std())
    assert row.server_queue_us == pytest.approx(1.0) and row.server_compute_infer_us == pytest.approx(5.0)
    assert (row.client_send_us, row.client_recv_us) == (2.0, 30.0)
    assert row.late_requests is None and row.dropped_requests is None  # closed loop: no schedule
    assert row.network_us == pytest.approx(row.mean_ms * 1000 - 32 - row.server_us)


def test_a_constant_schedule_has_equal_gaps_and_poisson_is_seeded_with_the_asked_mean():
    constant = Schedule(rate=250, distribution="constant", seed=0)
    constant.begin(1_000)
    assert [constant.take() for _ in range(4)] == [1_000, 4_001_000, 8_001_000, 12_001_000]

    def gaps(seed: int) -> np.ndarray:
        poisson = Schedule(rate=500, distribution="poisson", seed=seed)
        poisson.begin(0)
        return np.diff([poisson.take() for _ in range(20_001)])

    first = gaps(7)
    assert np.array_equal(first, gaps(7)) and not np.array_equal(first, gaps(8))
    assert first.mean() == pytest.approx(2e6, rel=0.03)  # 1/500 s
    assert first.std() == pytest.approx(first.mean(), rel=0.05)  # exponential: std = mean
    with pytest.raises(ClientError, match="poisson"):
        Schedule(rate=10, distribution="uniform", seed=0)  # type: ignore[arg-type]


def row(**overrides) -> ConcurrencyResult:
    values = dict(
        concurrency=2, batch_size=1, requests=100, inferences_per_second=512.3456, requests_per_second=512.3456,
        p50_ms=1.37, p90_ms=3.764, p95_ms=5.082, p99_ms=7.493, mean_ms=1.949, std_ms=1.5, server_queue_us=250,
        server_compute_input_us=17, server_compute_infer_us=1211, server_compute_output_us=128,
        client_send_us=3, client_recv_us=1,
    )
    return ConcurrencyResult(**{**values, **overrides})


def test_csv_has_perf_analyzers_columns_with_the_client_split_filled(tmp_path):
    result = BenchmarkResult(model="m", protocol="grpc", url="u", batch_size=1, warmup_seconds=0,
                             measurement_seconds=1, results=[row()])
    result.write_csv(tmp_path / "c.csv")
    header, values = list(csv.reader((tmp_path / "c.csv").open()))
    assert tuple(header) == PERF_ANALYZER_COLUMNS
    # PERF_ANALYZER_CSV's first row; the network part is what the mean leaves, 1949 - 3 - 1 - 1606
    # (perf_analyzer, summing unrounded parts, wrote 337).
    assert values == ["2", "512.35", "3", "339", "250", "17", "1211", "128", "1", "1370", "3764", "5082", "7493"]
    rate = BenchmarkResult(model="m", protocol="grpc", url="u", batch_size=1, warmup_seconds=0, measurement_seconds=1,
                           mode="request-rate", results=[row(request_rate=150.0)])
    rate.write_csv(tmp_path / "r.csv")
    header, values = list(csv.reader((tmp_path / "r.csv").open()))
    assert header[0] == "Request Rate" and tuple(header[1:]) == PERF_ANALYZER_COLUMNS[1:] and values[0] == "150.0"


def test_perf_analyzers_csv_reads_into_our_rows(tmp_path):
    path = tmp_path / "pa.csv"
    path.write_text(PERF_ANALYZER_CSV)
    first, second = read_perf_analyzer_csv(path, batch_size=1, requests=1854, std_ms=1.593, windows=3)
    assert (first.concurrency, second.concurrency) == (1, 2)
    assert first.inferences_per_second == 512.377 and first.requests == 1854 and first.windows == 3
    assert (first.p50_ms, first.p90_ms, first.p95_ms, first.p99_ms) == (1.370, 3.764, 5.082, 7.493)
    assert first.mean_ms == 1.949 and first.std_ms == 1.593
    assert (first.server_queue_us, first.server_compute_infer_us, first.client_send_us) == (250, 1211, 3)
    # Without --verbose-csv the mean is the sum of the parts, which perf_analyzer's columns are.
    plain = tmp_path / "plain.csv"
    plain.write_text("\n".join(",".join(line.split(",")[:13]) for line in PERF_ANALYZER_CSV.splitlines()) + "\n")
    assert read_perf_analyzer_csv(plain, batch_size=1)[1].mean_ms == pytest.approx(2.818)
    broken = tmp_path / "broken.csv"
    broken.write_text("Concurrency,Inferences/Second\n1,oops\n")
    with pytest.raises(ClientError, match="not a perf_analyzer CSV"):
        read_perf_analyzer_csv(broken, batch_size=1)


def test_results_of_older_versions_still_read(tmp_path):
    old = row().__dict__ | {}
    for key in ("std_ms", "client_send_us", "client_recv_us", "request_rate", "late_requests", "dropped_requests",
                "windows"):
        old.pop(key)
    data = {"model": "m", "protocol": "http", "url": "u", "batch_size": 1, "warmup_seconds": 2,
            "measurement_seconds": 5, "results": [old], "a_future_field": 1}
    result = BenchmarkResult.from_dict(json.loads(json.dumps(data)))
    assert result.engine == "resnet-serve" and result.results[0].client_send_us == 0.0
    assert BenchmarkResult.from_dict(result.to_dict()) == result


def test_a_missing_perf_analyzer_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingDependencyError, match="make perf-analyzer"):
        find_perf_analyzer()


def test_the_machine_is_named_with_its_cpu_features():
    described = describe_machine()
    cpuinfo = Path("/proc/cpuinfo").read_text()
    assert "CPUs" in described and ("avx2" in described) == (" avx2" in cpuinfo)


def test_image_requests_go_round_the_files_and_perf_analyzer_gets_them_length_prefixed(tmp_path):
    from tritonclient.grpc import service_pb2
    from tritonclient.utils import deserialize_bytes_tensor

    from resnet_serve.client.classify import EncodedImageModel
    from resnet_serve.client.connection import parse_endpoint
    from resnet_serve.client.perf_analyzer import write_input_data
    from resnet_serve.client.prepared import prepare_image_requests

    files = [b"first", b"second file", b"third"]
    model = EncodedImageModel(name="m-image", input_name="image", output_name="logits", max_batch_size=8, num_classes=4)
    request = prepare_image_requests(model=model, files=files, batch_size=2, endpoint=parse_endpoint(
        "localhost:8001", protocol="grpc"))
    sent = []
    for body in request.bodies:
        message = service_pb2.ModelInferRequest.FromString(body)
        assert message.model_name == "m-image" and list(message.inputs[0].shape) == [2, 1]
        assert message.inputs[0].datatype == "BYTES"
        sent.append(list(deserialize_bytes_tensor(message.raw_input_contents[0])))
    # lcm(3 files, 2 per request) / 2 = 3 requests: every file sent twice, in order.
    assert sent == [[b"first", b"second file"], [b"third", b"first"], [b"second file", b"third"]]
    with pytest.raises(ClientError, match="not within 1..8"):
        prepare_image_requests(model=model, files=files, batch_size=9, endpoint=request.endpoint)

    write_input_data(tmp_path / "input.json", inputs={"image": files})
    entries = json.loads((tmp_path / "input.json").read_text())["data"]
    decoded = [base64.b64decode(entry["image"]["b64"]) for entry in entries]
    assert decoded == [len(f).to_bytes(4, "little") + f for f in files]
