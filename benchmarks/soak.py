"""Soak: 8 clients, HTTP and gRPC mixed, for 60 s against the embedded server's proxied entries;
no request may fail and the server's memory may not grow.

A demo-sized ResNet-20 (one short pass over 2,048 real Fashion-MNIST images) is exported as
`resnet serve` serves it: the classifier as an `onnxruntime` entry (a python-backend proxy on the
embedded server) and its image pipeline (`-preprocess`, `-image`). The server runs with an admin
key, as `serve` runs it. The clients, threads of this process, each on a connection of its own:

- float tensors, batch 1, through the prepared-request senders (`client.prepared`): 3 over gRPC,
  3 over HTTP;
- PNG files to the `-image` ensemble (decoded and prepared on the server): 1 over gRPC, 1 over HTTP.

Checked, as before issue 12 (8 gRPC clients, 60 s: 34,402 requests, 0 failures, RSS 481 → 481
MiB): failures = 0, and the resident memory of tritonserver plus its python stubs grows by at
most 10% from the end of a 10 s warm-up (same load, not counted; the allocators and the
onnxruntime arena settle in it) to the end. Writes the figures, RSS samples every 5 s, the
machine and its load to a JSON file, and exits 1 if a check fails.

    .venv/bin/python benchmarks/soak.py [--seconds 60] [--output benchmarks/results/soak-2core-cpu.json]
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import _harness
import numpy as np
from PIL import Image

from resnet_serve import __version__
from resnet_serve.client.classify import EncodedImageClient
from resnet_serve.client.inference import InferenceClient
from resnet_serve.client.prepared import prepare_request
from resnet_serve.datasets import load_default_dataset
from resnet_serve.pipeline import ExportOptions, export_to_repository
from resnet_serve.selection import ImageSelection
from resnet_serve.training import train_on_folder
from resnet_serve.triton.server import TritonServer, find_free_ports, generate_admin_key

MODEL = "resnet20-fashion"
# kind → clients of that kind
CLIENTS = {"grpc tensor": 3, "http tensor": 3, "grpc png": 1, "http png": 1}
WARMUP_SECONDS = 10.0
RSS_GROWTH_LIMIT = 0.10


def resident_mib(group: int) -> float:
    """Resident memory of every live process in a process group (tritonserver and its stubs)."""
    return _harness.group_memory_kib(group)["rss"] / 1024


class Tally:
    """Requests and failures per client kind, counted only while `counting` is set."""

    def __init__(self) -> None:
        self.counting = threading.Event()
        self.requests: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.first_failure: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, kind: str, error: Exception | None) -> None:
        if not self.counting.is_set():
            return
        with self._lock:
            self.requests[kind] += 1
            if error is not None:
                self.failures[kind] += 1
                self.first_failure.setdefault(kind, f"{type(error).__name__}: {error}"[:300])


def tensor_client(kind: str, server: TritonServer, batch: np.ndarray, tally: Tally, stop: threading.Event) -> None:
    protocol = kind.split()[0]
    with InferenceClient(model=MODEL, protocol=protocol, url=getattr(server.urls, protocol)) as probe:
        request = prepare_request(served=probe.model, batch=batch, endpoint=probe.endpoint)
    sender = request.open()
    try:
        while not stop.is_set():
            try:
                sender.send()
                tally.add(kind, None)
            except Exception as error:  # noqa: BLE001 - every failure is counted, none ends the soak
                tally.add(kind, error)
                sender.close()
                sender = request.open()
    finally:
        sender.close()


def png_client(kind: str, server: TritonServer, files: list[bytes], tally: Tally, stop: threading.Event) -> None:
    protocol = kind.split()[0]
    with EncodedImageClient(model=f"{MODEL}-image", protocol=protocol, url=getattr(server.urls, protocol)) as client:
        index = 0
        while not stop.is_set():
            try:
                client.classify([files[index % len(files)]], top_k=1)
                tally.add(kind, None)
            except Exception as error:  # noqa: BLE001 - every failure is counted, none ends the soak
                tally.add(kind, error)
            index += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--output", type=Path, default=_harness.RESULTS / "soak-2core-cpu.json")
    args = parser.parse_args()

    test_set = load_default_dataset(split="test")
    images = test_set.images[:64]
    files = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        files.append(buffer.getvalue())

    with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
        folder = Path(scratch)
        checkpoint = folder / f"{MODEL}.safetensors"
        train_on_folder(architecture="resnet20", output=checkpoint, epochs=1, limit=2048, seed=0)
        export_to_repository(checkpoint=checkpoint, repository=folder / "repository",
                             options=ExportOptions(name=MODEL, selection=ImageSelection(verify_images=16)))
        http, grpc, metrics = find_free_ports(3)
        load = _harness.Load()
        with TritonServer(repository=folder / "repository", http_port=http, grpc_port=grpc, metrics_port=metrics,
                          log_file=folder / "tritonserver.log", admin_key=generate_admin_key()) as server:
            assert server.pid is not None
            with InferenceClient(model=MODEL, protocol="grpc", url=server.urls.grpc) as probe:
                batch = probe.model.preprocessing.normalize(images[:1])
            rss_at_ready = resident_mib(server.pid)
            tally, stop = Tally(), threading.Event()
            threads = []
            for kind, count in CLIENTS.items():
                target = png_client if kind.endswith("png") else tensor_client
                data = files if kind.endswith("png") else batch
                threads += [threading.Thread(target=target, args=(kind, server, data, tally, stop), daemon=True)
                            for _ in range(count)]
            for thread in threads:
                thread.start()
            time.sleep(WARMUP_SECONDS)
            rss_before = resident_mib(server.pid)
            tally.counting.set()
            began = time.monotonic()
            samples = [(0.0, rss_before)]
            while (elapsed := time.monotonic() - began) < args.seconds:
                time.sleep(min(5.0, args.seconds - elapsed))
                samples.append((round(time.monotonic() - began, 1), resident_mib(server.pid)))
            tally.counting.clear()
            seconds = time.monotonic() - began
            rss_after = samples[-1][1]
            stop.set()
            for thread in threads:
                thread.join(60)
            still_running = server.is_running
        load.stop()

    requests, failures = sum(tally.requests.values()), sum(tally.failures.values())
    growth = rss_after / rss_before - 1
    result = {
        "what": "soak: 8 clients (HTTP and gRPC, float tensors and PNG files) against the embedded server's "
                "proxied onnxruntime entry and its image ensemble",
        "date": datetime.date.today().isoformat(),
        "note": "the machine is shared with other engineers' jobs: the request counts depend on their load, "
                "the failure count and the memory growth must not",
        "versions": {"resnet-serve": __version__, "tritonserver": "2.51.0 (nvidia-pytriton 0.7.0)"},
        "settings": {"model": f"{MODEL} (ResNet-20, 1x28x28, one pass over 2,048 training images)",
                     "entries": {MODEL: "onnxruntime target, python-backend proxy",
                                 f"{MODEL}-image": "ensemble: python-backend preprocess + the classifier"},
                     "clients": CLIENTS, "batch": 1, "warmup_seconds": WARMUP_SECONDS,
                     "seconds": round(seconds, 1), "admin_key": True},
        "requests": requests,
        "requests_by_client": dict(tally.requests),
        "failures": failures,
        "failures_by_client": dict(tally.failures),
        "first_failure_by_client": tally.first_failure,
        "server_running_at_end": still_running,
        "rss_mib": {"at_ready": round(rss_at_ready, 1), "after_warmup": round(rss_before, 1),
                    "at_end": round(rss_after, 1), "growth_percent": round(growth * 100, 2),
                    "samples": [[t, round(m, 1)] for t, m in samples]},
        "checks": {"no_failures": failures == 0,
                   f"rss_growth_at_most_{RSS_GROWTH_LIMIT:.0%}": growth <= RSS_GROWTH_LIMIT,
                   "server_running_at_end": still_running},
    }
    _harness.write_results(args.output, result, load=load)
    print(json.dumps({k: result[k] for k in ("requests", "failures", "rss_mib", "checks")}, indent=2))
    return 0 if all(result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
