"""Triton Inference Server: typed model config, repository writer, embedded server launcher.

The python-backend model template that serves ONNX through onnxruntime lives in
`python_model/` and is copied into each repository entry that needs it.
"""

# The restricted APIs of every server we start or deploy: model (un)loading and the repository
# index, shared-memory registration, log settings and tracing answer only requests that carry
# the admin key, in the HTTP header `admin-key` or the gRPC metadata
# `triton-grpc-protocol-admin-key` (Triton prefixes the key's name on gRPC).
RESTRICTED_APIS = ("model-repository", "shared-memory", "logging", "trace")
ADMIN_KEY_HEADER = "admin-key"
# The environment variable the CLI reads the key from; servers' children never inherit it.
ADMIN_KEY_VARIABLE = "RESNET_SERVE_ADMIN_KEY"
GRPC_ADMIN_KEY_HEADER = f"triton-grpc-protocol-{ADMIN_KEY_HEADER}"
