"""The official Triton image every deployment runs: a leaf, so that both the exporter (a
TensorRT plan is built for this image's TensorRT) and the repository layer may name it.

26.09 is Triton 2.73.0 (GitHub triton-inference-server/server release v2.73.0, "Release 2.73.0
corresponding to NGC container 26.09", the newest at the time of pinning): newer than 25.07,
whose security fixes 24.10 lacks (one crafted request crashes 24.10). The embedded server of the
nvidia-pytriton 0.7.0 wheel is older (Triton 2.51.0, the 24.10 release). deploy/ (Dockerfile,
docker compose, Kubernetes, KServe) builds on it; a test checks every deploy file against it.
"""

TRITON_CONTAINER_TAG = "26.09-py3"
