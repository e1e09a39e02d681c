"""Triton Inference Server: typed model config, repository writer, embedded server launcher.

The python-backend model template that serves ONNX through onnxruntime lives in
`python_model/` and is copied into each repository entry that needs it.
"""

# The official image that deployments (docker compose, Kubernetes) run: 24.10 is Triton 2.51.0,
# the release the embedded server from the nvidia-pytriton 0.7.0 wheel carries.
TRITON_CONTAINER_TAG = "24.10-py3"
