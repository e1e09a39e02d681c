"""Triton python-backend model that runs a TorchScript classifier with PyTorch: on its instance's
GPU in FP16, channels-last, through one CUDA graph per batch bucket; on the CPU (a KIND_CPU
instance, or no CUDA) in FP32 with the same code, which is how the tests measure it.

`benchmarks/gpu_triton.py` serves ResNet-50 this way on a lent GPU. Config: one input
TYPE_FP32 [C, H, W], one output TYPE_FP32 [classes], max_batch_size > 0; the version folder
holds `model.pt` (TorchScript, FP32, NCHW). Batch buckets are the powers of two up to
max_batch_size and max_batch_size itself; a GPU batch runs at the next bucket's size.

How a dynamic batch of requests is handled (what issue 19 found on the CPU, and the GPU run is
to confirm; docs/benchmarks.md, "GPU"):
- PyTorch in the stub runs one CPU thread. On a GPU its CPU work is only moving memory, and a
  thread pool per instance (as many threads as cores, in each instance) competes with Triton's
  own threads; on a busy CPU every parallel step waits for its slowest thread, which made the
  same execution vary tens of times over on the shared 2-core machine. CPU instances use the
  cores through their count, as the onnxruntime proxies' instances × 1 thread do.
- Each request's input is copied once, straight into its rows of one staging batch: pinned host
  memory on a GPU, so that the batch goes to the device in one asynchronous copy at full speed
  (on the CPU it is the model's input). No `torch.cat` into a new tensor, no pageable copy, no
  conversion on the CPU.
- The conversion to FP16 channels-last happens on the GPU; the logits come back in one copy into
  pinned memory, and the stream is synchronised once per batch.
- Each response gets a view of its rows of the batch's logits: no copy per request. The stub
  copies each output into shared memory as it sends the responses, before it calls `execute`
  again, so the pinned buffer can be reused by the next batch.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Triton makes `count` of these per instance group, each in its own stub process."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.max_batch_size = int(config["max_batch_size"])
        if self.max_batch_size < 1:
            raise pb_utils.TritonModelException("this model needs max_batch_size > 0")
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        dims = [int(d) for d in config["input"][0]["dims"]]
        self.gpu = args["model_instance_kind"] == "GPU" and torch.cuda.is_available()
        torch.set_num_threads(1)
        self.device = torch.device("cuda", int(args["model_instance_device_id"])) if self.gpu else torch.device("cpu")
        dtype = torch.half if self.gpu else torch.float
        layout = torch.channels_last if self.gpu else torch.contiguous_format
        path = os.path.join(args["model_repository"], args["model_version"], "model.pt")
        model = torch.jit.load(path, map_location=self.device).eval().to(dtype=dtype, memory_format=layout)
        batch_shape = (self.max_batch_size, *dims)
        # The requests' inputs as they arrive (FP32, NCHW), and its numpy view for the copies in. On the
        # CPU it is the model's input itself.
        self.staging = torch.empty(batch_shape, dtype=torch.float, pin_memory=self.gpu)
        self.staging_array = self.staging.numpy()
        self.inputs = self.staging
        if self.gpu:
            # The batch on the device as it arrived (a plain copy), then as the model takes it.
            self.arrived = torch.empty(batch_shape, device=self.device)
            self.inputs = torch.empty(batch_shape, device=self.device, dtype=dtype).contiguous(memory_format=layout)
        self.buckets = sorted({1 << i for i in range(self.max_batch_size.bit_length())} | {self.max_batch_size})
        with torch.inference_mode():
            if self.gpu:
                self.graphs = {size: self._capture(model, size) for size in self.buckets}
                classes = self.graphs[self.buckets[0]][1].shape[1]
                self.logits = torch.empty((self.max_batch_size, classes), dtype=torch.float, pin_memory=True)
            else:
                self.model = model

    def _capture(self, model: Any, size: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """A CUDA graph of the model on the first ``size`` rows of the input batch, and its output."""
        static_in = self.inputs[:size]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        # Capture needs cuDNN's algorithm choice and the allocator warmed up on a side stream.
        with torch.cuda.stream(side):
            for _ in range(3):
                model(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = model(static_in)
        return graph, static_out

    def execute(self, requests: list[Any]) -> list[Any]:
        """One pass for the whole dynamic batch; each request answered with its rows."""
        rows, total = [], 0
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            self.staging_array[total:total + len(data)] = data
            rows.append((total, total + len(data)))
            total += len(data)
        with torch.inference_mode():
            if self.gpu:
                self.arrived[:total].copy_(self.staging[:total], non_blocking=True)
                self.inputs[:total].copy_(self.arrived[:total])
            logits = self._run(total)
        array = logits.numpy()
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, array[start:end])])
                for start, end in rows]

    def _run(self, total: int) -> torch.Tensor:
        """The model on the first ``total`` rows: the logits, FP32, on the CPU."""
        if not self.gpu:
            return self.model(self.inputs[:total])
        graph, static_out = self.graphs[next(size for size in self.buckets if size >= total)]
        graph.replay()
        # Converted on the GPU, then one asynchronous copy into pinned memory, waited for once.
        self.logits[:total].copy_(static_out[:total].float(), non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return self.logits[:total]
