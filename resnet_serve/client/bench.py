"""Serving benchmark in perf_analyzer's vocabulary: a concurrency sweep with a warm-up that is
not measured, a fixed measurement window, latency percentiles, throughput, and the server-side
split (queue, compute input/infer/output) from Triton's statistics API."""

from __future__ import annotations

import csv
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from resnet_serve.client.inference import InferenceClient, Protocol
from resnet_serve.errors import ClientError
from resnet_serve.progress import Reporter, SilentReporter

# perf_analyzer's CSV header, so tools that plot its output read ours (values in µs).
PERF_ANALYZER_COLUMNS = (
    "Concurrency",
    "Inferences/Second",
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
    "p50 latency",
    "p90 latency",
    "p95 latency",
    "p99 latency",
)


@dataclass(frozen=True)
class ConcurrencyResult:
    """One point of the sweep. Latencies are per request, in milliseconds; server figures are
    averages per request, in microseconds."""

    concurrency: int
    batch_size: int
    requests: int
    inferences_per_second: float
    requests_per_second: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    server_queue_us: float
    server_compute_input_us: float
    server_compute_infer_us: float
    server_compute_output_us: float

    def perf_analyzer_row(self) -> list[float]:
        server_us = (
            self.server_queue_us
            + self.server_compute_input_us
            + self.server_compute_infer_us
            + self.server_compute_output_us
        )
        # We time whole requests, so client send/recv cannot be split from the network part:
        # they are reported as 0 and the remainder goes to "Network+Server Send/Recv".
        return [
            self.concurrency,
            round(self.inferences_per_second, 2),
            0,
            round(max(self.mean_ms * 1000 - server_us, 0.0)),
            round(self.server_queue_us),
            round(self.server_compute_input_us),
            round(self.server_compute_infer_us),
            round(self.server_compute_output_us),
            0,
            round(self.p50_ms * 1000),
            round(self.p90_ms * 1000),
            round(self.p95_ms * 1000),
            round(self.p99_ms * 1000),
        ]


@dataclass(frozen=True)
class BenchmarkResult:
    model: str
    protocol: str
    url: str
    batch_size: int
    warmup_seconds: float
    measurement_seconds: float
    results: list[ConcurrencyResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BenchmarkResult:
        rows = [ConcurrencyResult(**row) for row in data["results"]]
        return cls(**{**data, "results": rows})

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def write_csv(self, path: Path) -> None:
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(PERF_ANALYZER_COLUMNS)
            writer.writerows(row.perf_analyzer_row() for row in self.results)


def benchmark(
    *,
    connect: Callable[[], InferenceClient],
    batch: np.ndarray,
    concurrency: Sequence[int] = (1, 2),
    warmup_seconds: float = 2.0,
    measurement_seconds: float = 5.0,
    reporter: Reporter | None = None,
) -> BenchmarkResult:
    """Measure the served model with ``batch`` ([N, C, H, W], preprocessed) sent by each of
    ``concurrency`` closed-loop workers; every level warms up before its window opens."""
    reporter = reporter or SilentReporter()
    _check_levels(concurrency)
    probe = connect()
    rows = []
    try:
        for level in concurrency:
            reporter.start(f"concurrency {level}", total=None)
            rows.append(_measure(connect, probe, batch, level, warmup_seconds, measurement_seconds))
            reporter.finish()
    finally:
        probe.close()
    return BenchmarkResult(
        model=probe.model.name,
        protocol=probe.protocol,
        url=probe.url,
        batch_size=len(batch),
        warmup_seconds=warmup_seconds,
        measurement_seconds=measurement_seconds,
        results=rows,
    )


def _check_levels(concurrency: Sequence[int]) -> None:
    if not concurrency or any(level < 1 for level in concurrency):
        raise ClientError(f"concurrency levels must be ≥ 1, got {list(concurrency)}")


def _measure(
    connect: Callable[[], InferenceClient],
    probe: InferenceClient,
    batch: np.ndarray,
    level: int,
    warmup_seconds: float,
    measurement_seconds: float,
) -> ConcurrencyResult:
    latencies: list[list[float]] = [[] for _ in range(level)]
    errors: list[Exception] = []
    measuring = threading.Event()
    stop = threading.Event()

    def worker(index: int) -> None:
        try:
            # Opened in the worker's own thread: the HTTP client is bound to the thread that
            # created it. Connecting happens during the warm-up, outside the window.
            with connect() as client:
                while not stop.is_set():
                    began = time.perf_counter()
                    client.infer(batch)
                    elapsed = time.perf_counter() - began
                    # Requests completing inside the window count; those of the warm-up do not.
                    if measuring.is_set() and not stop.is_set():
                        latencies[index].append(elapsed)
        except Exception as exc:  # surfaced once all workers have stopped
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(level)]
    try:
        for thread in threads:
            thread.start()
        stop.wait(warmup_seconds)
        before = probe.statistics()
        measuring.set()
        window_began = time.perf_counter()
        stop.wait(measurement_seconds)
        stop.set()
        window = time.perf_counter() - window_began
        for thread in threads:
            thread.join()
        after = probe.statistics()
    finally:
        stop.set()
    if errors:
        raise errors[0] if isinstance(errors[0], ClientError) else ClientError(str(errors[0]))
    samples = np.array([value for worker in latencies for value in worker]) * 1000.0
    if samples.size == 0:
        raise ClientError(
            f"no request finished inside the {measurement_seconds:g} s window at concurrency "
            f"{level}; lengthen --measurement-seconds"
        )
    delta = after - before
    # Requests that finish after the window closes still reach the server's counters;
    # averaging per executed request keeps the split right regardless.
    per_request = max(delta.success_count, 1)
    p50, p90, p95, p99 = np.percentile(samples, [50, 90, 95, 99])
    return ConcurrencyResult(
        concurrency=level,
        batch_size=len(batch),
        requests=int(samples.size),
        inferences_per_second=samples.size * len(batch) / window,
        requests_per_second=samples.size / window,
        p50_ms=float(p50),
        p90_ms=float(p90),
        p95_ms=float(p95),
        p99_ms=float(p99),
        mean_ms=float(samples.mean()),
        server_queue_us=delta.queue_ns / per_request / 1000,
        server_compute_input_us=delta.compute_input_ns / per_request / 1000,
        server_compute_infer_us=delta.compute_infer_ns / per_request / 1000,
        server_compute_output_us=delta.compute_output_ns / per_request / 1000,
    )


def benchmark_served_model(
    *,
    model: str | None = None,
    protocol: Protocol = "grpc",
    url: str | None = None,
    batch_size: int = 1,
    concurrency: Sequence[int] = (1, 2, 4),
    warmup_seconds: float = 2.0,
    measurement_seconds: float = 5.0,
    seed: int = 0,
    reporter: Reporter | None = None,
) -> BenchmarkResult:
    """Benchmark a served model with a batch of the shape it declares.

    The pixel values do not change a ResNet's cost, so a seeded random batch stands in for
    images and the benchmark works for any served classifier.
    """
    if batch_size < 1:
        raise ClientError(f"batch size must be ≥ 1, got {batch_size}")
    _check_levels(concurrency)
    with InferenceClient(model=model, protocol=protocol, url=url) as probe:
        served = probe.model
    batch = np.random.default_rng(seed).standard_normal((batch_size, *served.input_shape), dtype=np.float32)
    return benchmark(
        connect=partial(InferenceClient, model=served.name, protocol=protocol, url=url),
        batch=batch,
        concurrency=concurrency,
        warmup_seconds=warmup_seconds,
        measurement_seconds=measurement_seconds,
        reporter=reporter,
    )
