"""Triton python-backend model that turns encoded image files (BYTES) into the classifier's input.

The repository writer copies this file into `<repository>/<name>-preprocess/<version>/model.py`
and, beside it under `resnet_serve/`, copies of resnet-serve's `errors.py` and its
preprocessing module, so the server decodes, converts, resizes and normalizes an image with
exactly the code a client uses. Those copies need only numpy and Pillow: this model runs in the
official images' python backend (which has numpy; deploy/Dockerfile adds Pillow), not in
resnet-serve's interpreter.

Config: input `image` TYPE_STRING [1] (one encoded JPEG/PNG/... file per batch row), output
`input` TYPE_FP32 [C, H, W], parameter `preprocessing` (the Preprocessing JSON). An image that
cannot be used (not an image, truncated, more pixels than the decompression-bomb limit) fails
its own request only, with the reason, as an invalid argument (HTTP 400: the client's error), and
the model keeps serving; any other failure is the model's own (HTTP 500).

The requests of one dynamic batch are prepared in one pass: every file is decoded to uint8
pixels, and all of them are standardised into one float32 batch, whose rows are handed back to
each request as views.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

# The copies beside this file, not a resnet_serve that happens to be installed, are the ones
# this entry was written with.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from resnet_serve.errors import ImageError  # noqa: E402
from resnet_serve.preprocessing import Preprocessing  # noqa: E402


class TritonPythonModel:
    """Triton makes `count` of these per instance group, each in its own stub process."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = {
            key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()
        }
        self.preprocessing = Preprocessing.from_dict(json.loads(parameters["preprocessing"]))
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]

    def execute(self, requests: list[Any]) -> list[Any]:
        """One answer per request; a file that fails fails only its own request."""
        pixels: list[np.ndarray] = []
        prepared: list[tuple[int, int] | Exception] = []  # each request's rows of the batch, or its error
        for request in requests:
            encoded = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy().reshape(-1)
            try:
                images = [self.preprocessing.prepare_pixels(bytes(item)) for item in encoded]
            except Exception as error:  # noqa: BLE001 - a failure is answered, never raised
                prepared.append(error)
                continue
            prepared.append((len(pixels), len(pixels) + len(images)))
            pixels.extend(images)
        batch = self.preprocessing.standardize(np.stack(pixels)) if pixels else None
        return [self._answer(rows, batch) for rows in prepared]

    def _answer(self, rows: tuple[int, int] | Exception, batch: np.ndarray | None) -> Any:
        if isinstance(rows, Exception):
            code = pb_utils.TritonError.INVALID_ARG if isinstance(rows, ImageError) else pb_utils.TritonError.INTERNAL
            return pb_utils.InferenceResponse(
                output_tensors=[], error=pb_utils.TritonError(f"{type(rows).__name__}: {rows}", code)
            )
        start, end = rows
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, batch[start:end])])
