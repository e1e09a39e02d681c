"""Triton python-backend model that runs the ONNX file next to it in onnxruntime.

The repository writer copies this file into `<repository>/<name>/<version>/model.py`. It runs in
Triton's python stub, not in resnet-serve's interpreter: it imports only numpy, onnxruntime and
the stub's own `triton_python_backend_utils`. The embedded server launcher makes the stub's
interpreter start from resnet-serve's virtualenv (see `resnet_serve.triton.server`), so the
repository itself holds no machine paths.

Config parameter read here (optional): `intra_op_thread_count`, onnxruntime threads per
instance; the key the official onnxruntime backend reads too, so it means the same on both
targets.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Triton makes `count` of these per instance group, each in its own stub process."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = {
            key: value.get("string_value", "")
            for key, value in config.get("parameters", {}).items()
        }
        if not config.get("max_batch_size"):
            # execute() concatenates and splits requests along the first (batch) dimension.
            raise pb_utils.TritonModelException("this model needs max_batch_size > 0")
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]
        self.output_dtypes = [
            pb_utils.triton_string_to_numpy(t["data_type"]) for t in config["output"]
        ]

        instances = sum(group.get("count", 1) for group in config.get("instance_group", [])) or 1
        # Instances run side by side, so by default they share the cores instead of each
        # spawning one thread per core and fighting over them.
        default_threads = max(1, len(os.sched_getaffinity(0)) // instances)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(
            parameters.get("intra_op_thread_count") or default_threads
        )
        options.inter_op_num_threads = 1

        version_folder = os.path.join(args["model_repository"], args["model_version"])
        model_path = os.path.join(version_folder, "model.onnx")
        self.session = ort.InferenceSession(
            model_path, sess_options=options, providers=["CPUExecutionProvider"]
        )
        session_inputs = [i.name for i in self.session.get_inputs()]
        session_outputs = [o.name for o in self.session.get_outputs()]
        # A config that names tensors the ONNX file lacks would fail on every request; fail the
        # model load instead so the server reports it once, at startup.
        missing = [n for n in self.input_names if n not in session_inputs] + [
            n for n in self.output_names if n not in session_outputs
        ]
        if missing:
            raise pb_utils.TritonModelException(
                f"{model_path} has inputs {session_inputs} and outputs {session_outputs}; "
                f"the model config names {missing} that it lacks"
            )

    def execute(self, requests: list[Any]) -> list[Any]:
        """Run every request of this dynamic batch in one onnxruntime call."""
        batches: list[list[np.ndarray]] = []
        for request in requests:
            batches.append(
                [pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.input_names]
            )
        try:
            outputs = self._run(batches)
        except Exception as error:  # noqa: BLE001 - a failure is answered, never raised
            if len(batches) == 1:
                return [self._error(error)]
            # One bad request must not fail the others that Triton batched with it: retry one
            # by one so each gets its own answer or its own error.
            return [self._answer_alone(batch) for batch in batches]
        return [self._response(per_request) for per_request in outputs]

    def _answer_alone(self, batch: list[np.ndarray]) -> Any:
        try:
            return self._response(self._run([batch])[0])
        except Exception as error:  # noqa: BLE001 - a failure is answered, never raised
            return self._error(error)

    @staticmethod
    def _error(error: Exception) -> Any:
        return pb_utils.InferenceResponse(
            output_tensors=[], error=pb_utils.TritonError(f"onnxruntime failed: {error}")
        )

    def _run(self, batches: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        feeds = {
            name: np.concatenate([batch[i] for batch in batches]) if len(batches) > 1
            else batches[0][i]
            for i, name in enumerate(self.input_names)
        }
        results = self.session.run(self.output_names, feeds)
        sizes = [len(batch[0]) for batch in batches]
        split_at = np.cumsum(sizes)[:-1]
        per_output = [np.split(result, split_at) for result in results]
        return [[outputs[r] for outputs in per_output] for r in range(len(batches))]

    def _response(self, outputs: list[np.ndarray]) -> Any:
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(name, np.ascontiguousarray(value, dtype=dtype))
                for name, value, dtype in zip(self.output_names, outputs, self.output_dtypes, strict=True)
            ]
        )

    def finalize(self) -> None:
        self.session = None
