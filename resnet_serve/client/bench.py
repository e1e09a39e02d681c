"""Serving benchmark in perf_analyzer's vocabulary, with two engines and one result schema.

- ``resnet-serve``: our own load generator (`client/load.py`) sending prepared requests
  (`client/prepared.py`), at fixed concurrency levels (closed loop) or request rates (open
  loop, constant or Poisson), measured in windows until stable (`client/stability.py`).
- ``perf_analyzer``: the real perf_analyzer binary (`client/perf_analyzer.py`), its CSV read
  into the same rows.

Either engine sends a seeded random batch of the shape a classifier declares, or, given a folder
of image files, those files (any sizes, as users send them) to an image ensemble such as
`<name>-image`; its rows then split the server's time between the ensemble's steps.

Both report throughput, p50/p90/p95/p99, mean and standard deviation of the latency, the
client's send/receive time and the server's split (queue, compute input/infer/output) over
the stable windows, and write perf_analyzer's CSV columns, so the two can be compared row by
row and plotted by the same tools.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from resnet_serve.client.classify import EncodedImageClient
from resnet_serve.client.connection import ConnectionOptions, Protocol
from resnet_serve.client.inference import InferenceClient
from resnet_serve.client.load import (
    AsyncClosedLoop,
    ClosedLoop,
    Distribution,
    LoadGenerator,
    OpenLoop,
    Window,
    measure_load,
)
from resnet_serve.client.perf_analyzer import run_perf_analyzer
from resnet_serve.client.prepared import PreparedRequest, prepare_image_requests, prepare_request
from resnet_serve.client.results import BenchmarkResult, ConcurrencyResult, StepResult
from resnet_serve.client.retries import Retries
from resnet_serve.client.stability import StabilityRule
from resnet_serve.errors import ClientError, ImageError
from resnet_serve.machine import describe_machine
from resnet_serve.progress import Reporter, SilentReporter

Engine = Literal["resnet-serve", "perf_analyzer"]
ENGINES: tuple[str, ...] = ("resnet-serve", "perf_analyzer")
ClientKind = Literal["threads", "asyncio"]


def summarize_windows(
    windows: Sequence[Window], *, concurrency: int, request_rate: float | None, retried: int | None = None
) -> ConcurrencyResult:
    """One row from the stable windows: their requests pooled, the server's counters over the
    same span. ``retried``: the level's failed tries that were retried (None without retries)."""
    latencies = np.concatenate([w.latencies_ns for w in windows]) / 1e6
    seconds = sum(w.seconds for w in windows)
    delta = windows[-1].server_after - windows[0].server_before
    # Requests that finish after the last edge still reach the server's counters; averaging
    # per executed request keeps the split right regardless.
    per_request = max(delta.success_count, 1) * 1000
    steps = StepResult.split(delta)
    p50, p90, p95, p99 = np.percentile(latencies, [50, 90, 95, 99])
    return ConcurrencyResult(
        concurrency=concurrency,
        batch_size=windows[0].batch_size,
        requests=int(latencies.size),
        inferences_per_second=latencies.size * windows[0].batch_size / seconds,
        requests_per_second=latencies.size / seconds,
        p50_ms=float(p50),
        p90_ms=float(p90),
        p95_ms=float(p95),
        p99_ms=float(p99),
        mean_ms=float(latencies.mean()),
        std_ms=float(latencies.std()),
        server_queue_us=delta.queue_ns / per_request,
        server_compute_input_us=delta.compute_input_ns / per_request,
        server_compute_infer_us=delta.compute_infer_ns / per_request,
        server_compute_output_us=delta.compute_output_ns / per_request,
        client_send_us=float(np.concatenate([w.send_ns for w in windows]).mean()) / 1000,
        client_recv_us=float(np.concatenate([w.recv_ns for w in windows]).mean()) / 1000,
        request_rate=request_rate,
        late_requests=None if request_rate is None else sum(w.late for w in windows),
        dropped_requests=None if request_rate is None else sum(w.dropped for w in windows),
        windows=len(windows),
        retried_requests=retried,
        steps=steps or None,
    )


def read_image_files(folder: Path) -> list[bytes]:
    """The bytes of every file in ``folder`` (not its subfolders or hidden files), in name order,
    each checked to be an image Pillow can open, so a stray file costs no traffic."""
    if not folder.is_dir():
        raise ClientError(f"{folder}: not a folder of image files")
    files = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        data = path.read_bytes()
        try:
            with Image.open(io.BytesIO(data)):  # reads the header only
                pass
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as error:
            raise ImageError(f"{path}: not a readable image ({error})") from None
        files.append(data)
    if not files:
        raise ClientError(f"{folder} holds no image files")
    return files


def check_levels(*, concurrency: Sequence[int], request_rates: Sequence[float]) -> None:
    if request_rates:
        if any(rate <= 0 for rate in request_rates):
            raise ClientError(f"request rates must be > 0, got {list(request_rates)}")
    elif not concurrency or any(level < 1 for level in concurrency):
        raise ClientError(f"concurrency levels must be ≥ 1, got {list(concurrency)}")


def benchmark(
    *,
    probe: InferenceClient,
    request: PreparedRequest,
    concurrency: Sequence[int] = (1, 2),
    request_rates: Sequence[float] = (),
    distribution: Distribution = "constant",
    max_outstanding: int = 16,
    seed: int = 0,
    client: ClientKind = "threads",
    warmup_seconds: float = 2.0,
    measurement_seconds: float = 5.0,
    stability: StabilityRule | None = None,
    retries: Retries = Retries(),
    reporter: Reporter | None = None,
) -> BenchmarkResult:
    """Measure the model ``probe`` is connected to with ``request`` (prepared for it).

    With ``request_rates`` each rate is an open loop of at most ``max_outstanding`` requests in
    flight; otherwise each ``concurrency`` level is a closed loop of that many ``client``
    workers. Every level warms up, then is measured in windows of ``measurement_seconds`` until
    ``stability`` holds (UnstableMeasurementError otherwise). With ``retries``, failed requests
    and statistics calls are tried again, and windows with failed tries are not measured.
    """
    reporter = reporter or SilentReporter()
    stability = stability or StabilityRule()
    check_levels(concurrency=concurrency, request_rates=request_rates)
    if client not in ("threads", "asyncio"):
        raise ClientError(f"unknown client {client!r}; choose threads or asyncio")
    if client == "asyncio" and retries.count and not request_rates:
        raise ClientError("the asyncio client does not retry; use the threads client with retries")
    levels: list[tuple[int, float | None]] = (
        [(max_outstanding, rate) for rate in request_rates] if request_rates else [(n, None) for n in concurrency]
    )
    rows = []
    for level, rate in levels:
        label = f"concurrency {level}" if rate is None else f"request rate {rate:g}/s"
        load: LoadGenerator
        if rate is not None:
            load = OpenLoop(request, rate=rate, distribution=distribution, max_outstanding=level, seed=seed,
                            retries=retries)
        elif client == "asyncio":
            load = AsyncClosedLoop(request, concurrency=level)
        else:
            load = ClosedLoop(request, concurrency=level, retries=retries)
        reporter.start(label, total=None)
        try:
            windows = measure_load(
                load, statistics=partial(retries.call, probe.statistics, stopping=load.stopping),
                batch_size=request.batch_size, warmup_seconds=warmup_seconds,
                interval_seconds=measurement_seconds, rule=stability, label=label,
            )
        finally:
            reporter.finish()
        rows.append(summarize_windows(windows, concurrency=level, request_rate=rate,
                                      retried=load.failed_tries if retries.count else None))
    return BenchmarkResult(
        model=probe.model.name,
        protocol=probe.protocol,
        url=probe.url,
        batch_size=request.batch_size,
        warmup_seconds=warmup_seconds,
        measurement_seconds=measurement_seconds,
        results=rows,
        engine="resnet-serve",
        mode="request-rate" if request_rates else "concurrency",
        distribution=distribution if request_rates else None,
        client=None if request_rates else client,
        stability_percentage=stability.percentage,
        max_trials=stability.max_trials,
        machine=describe_machine(),
    )


def benchmark_served_model(
    *,
    model: str | None = None,
    protocol: Protocol = "grpc",
    url: str | None = None,
    engine: Engine = "resnet-serve",
    batch_size: int = 1,
    concurrency: Sequence[int] = (1, 2, 4),
    request_rates: Sequence[float] = (),
    distribution: Distribution = "constant",
    max_outstanding: int = 16,
    client: ClientKind = "threads",
    warmup_seconds: float = 2.0,
    measurement_seconds: float = 5.0,
    stability: StabilityRule | None = None,
    seed: int = 0,
    retries: Retries = Retries(),
    images: Path | None = None,
    connection: ConnectionOptions | None = None,
    reporter: Reporter | None = None,
) -> BenchmarkResult:
    """Benchmark a served model with either engine.

    Without ``images`` the model is a classifier and a seeded random batch of the shape it
    declares is sent (perf_analyzer sends its own random data): the pixel values do not change
    a ResNet's cost. With ``images`` (a folder of encoded image files) the model takes encoded
    files, an image ensemble or a classifier whose `<name>-image` is served, and requests of
    ``batch_size`` files go round the folder's files (perf_analyzer gets them as --input-data);
    decoding costs what the files' sizes make it cost.
    """
    if batch_size < 1:
        raise ClientError(f"batch size must be ≥ 1, got {batch_size}")
    if engine not in ENGINES:
        raise ClientError(f"unknown engine {engine!r}; choose {' or '.join(ENGINES)}")
    check_levels(concurrency=concurrency, request_rates=request_rates)
    stability = stability or StabilityRule()
    if engine == "perf_analyzer" and retries.count:
        raise ClientError("perf_analyzer does not retry failed requests; use the resnet-serve engine with retries")
    files = None if images is None else read_image_files(images)
    opened = InferenceClient if files is None else EncodedImageClient
    with opened(model=model, protocol=protocol, url=url, connection=connection) as probe:
        if engine == "perf_analyzer":
            return run_perf_analyzer(
                model=probe.model.name, endpoint=probe.endpoint, batch_size=batch_size,
                concurrency=concurrency, request_rates=request_rates, distribution=distribution,
                max_outstanding=max_outstanding, measurement_seconds=measurement_seconds, stability=stability,
                inputs=None if files is None else {probe.model.input_name: files}, statistics=probe.statistics,
                reporter=reporter,
            )
        if files is None:
            batch = np.random.default_rng(seed).standard_normal((batch_size, *probe.model.input_shape),
                                                                dtype=np.float32)
            request = prepare_request(served=probe.model, batch=batch, endpoint=probe.endpoint)
        else:
            request = prepare_image_requests(model=probe.model, files=files, batch_size=batch_size,
                                             endpoint=probe.endpoint)
        return benchmark(
            probe=probe, request=request, concurrency=concurrency, request_rates=request_rates,
            distribution=distribution, max_outstanding=max_outstanding, seed=seed, client=client,
            warmup_seconds=warmup_seconds, measurement_seconds=measurement_seconds, stability=stability,
            retries=retries, reporter=reporter,
        )
