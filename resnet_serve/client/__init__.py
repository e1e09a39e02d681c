"""Talking to a Triton server: one inference client over HTTP or gRPC, evaluation, benchmarking."""
