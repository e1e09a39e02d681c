"""ResNet-50 on a GPU through the embedded Triton, measured by perf_analyzer (issue 11, item 7).

Runs on a machine with an NVIDIA GPU, PyTorch with CUDA, the nvidia-pytriton wheel's
tritonserver and perf_analyzer (the device machine of `../shared`; see docs/benchmarks.md, "GPU
through Triton"). A folded ResNet-50 (random weights: speed does not depend on their values)
is traced to TorchScript and served by a python-backend model that runs it on the GPU in FP16,
channels-last, through one CUDA graph per batch bucket (1, 2, 4, … 64: a batch is padded to
the next bucket). Triton's dynamic batcher joins requests (max batch 64, 100 µs queue delay;
two instances on the GPU so that one's Python work overlaps the other's kernels). perf_analyzer
2.40 measures it over gRPC at concurrency 1 to 64, batch 1 and 8, through `bench --engine
perf_analyzer`'s code, and the rows go to one JSON file.

    python3 benchmarks/gpu_triton.py --output benchmarks/results/gpu-triton-h200

From a checkout where the package is not installed, put it on the path: ``PYTHONPATH=. python3 …``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import _harness

BUCKETS = (1, 2, 4, 8, 16, 32, 64)
NAME = "resnet50-gpu"

MODEL_PY = '''"""ResNet-50 TorchScript on the GPU: FP16, channels-last, one CUDA graph per batch bucket."""
import json

import torch
import triton_python_backend_utils as pb_utils

BUCKETS = %(buckets)r


class TritonPythonModel:
    def initialize(self, args):
        self.device = torch.device("cuda", int(args["model_instance_device_id"]))
        torch.cuda.set_device(self.device)
        folder = f"{args['model_repository']}/{args['model_version']}"
        model = torch.jit.load(f"{folder}/model.pt", map_location=self.device).eval()
        model = model.half().to(memory_format=torch.channels_last)
        self.graphs = {}
        side = torch.cuda.Stream(self.device)
        with torch.inference_mode():
            for size in BUCKETS:
                static_in = torch.zeros(size, 3, 224, 224, device=self.device, dtype=torch.half)
                static_in = static_in.contiguous(memory_format=torch.channels_last)
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(3):
                        model(static_in)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    static_out = model(static_in)
                self.graphs[size] = (graph, static_in, static_out)

    def execute(self, requests):
        inputs = [torch.from_dlpack(pb_utils.get_input_tensor_by_name(r, "input").to_dlpack()) for r in requests]
        counts = [x.shape[0] for x in inputs]
        total = sum(counts)
        size = next(b for b in BUCKETS if b >= total)
        graph, static_in, static_out = self.graphs[size]
        with torch.inference_mode():
            # Moved as they arrive (FP32, NCHW: one plain copy), then converted to FP16
            # channels-last on the GPU: converting on the CPU first took 7.0 ms of the model's
            # time for one image on the H200 machine, against 1.3 ms this way.
            batch = inputs[0] if len(inputs) == 1 else torch.cat(inputs)
            static_in[:total].copy_(batch.to(self.device))
            graph.replay()
            logits = static_out[:total].float().cpu()
        responses, start = [], 0
        for count in counts:
            chunk = logits[start:start + count].contiguous()
            start += count
            tensor = pb_utils.Tensor.from_dlpack("logits", torch.utils.dlpack.to_dlpack(chunk))
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses
'''

CONFIG = f'''name: "{NAME}"
backend: "python"
max_batch_size: 64
input [{{ name: "input", data_type: TYPE_FP32, dims: [3, 224, 224] }}]
output [{{ name: "logits", data_type: TYPE_FP32, dims: [1000] }}]
dynamic_batching {{ max_queue_delay_microseconds: 100 }}
instance_group [{{ count: 2, kind: KIND_GPU }}]
parameters {{ key: "preprocessing" value {{ string_value: '%(preprocessing)s' }} }}
'''


def write_repository(repository: Path) -> str:
    """Write the entry; return its config.pbtxt."""
    import torch

    from resnet_serve.checkpoints import IMAGENET_PREPROCESSING
    from resnet_serve.fold import fold_batchnorm
    from resnet_serve.models import create_model

    torch.manual_seed(0)
    folded = fold_batchnorm(create_model("resnet50").eval()).model.eval()
    version = repository / NAME / "1"
    version.mkdir(parents=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.jit.trace(folded, torch.zeros(1, 3, 224, 224)).save(str(version / "model.pt"))
    (version / "model.py").write_text(MODEL_PY % {"buckets": BUCKETS})
    # The client reads the input's preprocessing from the entry, as from any that export writes.
    preprocessing = json.dumps(IMAGENET_PREPROCESSING.to_dict())
    config = CONFIG % {"preprocessing": preprocessing}
    (repository / NAME / "config.pbtxt").write_text(config)
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="results file, without suffix")
    parser.add_argument("--concurrency", default="1,2,4,8,16,32,64")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--interval-ms", type=int, default=3000)
    args = parser.parse_args()

    import torch

    from resnet_serve.client.bench import benchmark_served_model
    from resnet_serve.client.stability import StabilityRule, UnstableMeasurementError
    from resnet_serve.triton.server import TritonServer, find_free_ports

    load = _harness.Load()
    began = time.time()
    levels = tuple(int(c) for c in args.concurrency.split(","))
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu-triton-") as scratch_name:
        scratch = Path(scratch_name)
        config = write_repository(scratch / "repository")
        http, grpc, metrics = find_free_ports(3)
        log = args.output.with_suffix(".tritonserver.log")
        server = TritonServer(repository=scratch / "repository", http_port=http, grpc_port=grpc,
                              metrics_port=metrics, log_file=log)
        server.start()
        try:
            server.wait_until_ready(timeout=300)
            print(f"ready in {time.time() - began:.0f} s", flush=True)
            for batch in (int(b) for b in args.batch_sizes.split(",")):
                for level in levels:
                    try:
                        run = benchmark_served_model(
                            model=NAME, protocol="grpc", url=server.urls.grpc, engine="perf_analyzer",
                            batch_size=batch, concurrency=(level,), warmup_seconds=1.0,
                            measurement_seconds=args.interval_ms / 1000,
                            stability=StabilityRule(percentage=10, max_trials=10),
                        )
                        row = {"batch": batch, **asdict(run.results[0])}
                    except UnstableMeasurementError as error:
                        row = {"batch": batch, "concurrency": level, "unstable": str(error)}
                    rows.append(row)
                    print(json.dumps({k: row.get(k) for k in ("batch", "concurrency", "inferences_per_second",
                                                              "p50_ms", "p99_ms", "unstable")}), flush=True)
        finally:
            server.stop()
    load.stop()
    result = {
        "what": "ResNet-50 (folded, 224², random weights), FP16 channels-last CUDA graphs in a python-backend "
                "model on the embedded Triton 2.51, gRPC, perf_analyzer 2.40",
        "date": time.strftime("%Y-%m-%d"), "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__, "config": config, "interval_ms": args.interval_ms,
        "seconds": time.time() - began, "results": rows,
    }
    _harness.write_results(args.output, result, load=load)


if __name__ == "__main__":
    main()
