"""evaluate's own checks, made before any server is asked anything (the streaming evaluation
itself runs against the real tritonserver in tests/integration/test_serving_end_to_end.py)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from resnet_serve.cli import app
from resnet_serve.triton.server import find_free_port

runner = CliRunner()


@pytest.mark.parametrize(
    ("option", "value"), [("--limit", "0"), ("--limit", "-3"), ("--batch-size", "0"), ("--concurrency", "-1")]
)
def test_counts_below_one_are_one_line_errors(option: str, value: str) -> None:
    # Nothing listens on the port: the counts are refused before a connection is tried.
    result = runner.invoke(app, ["evaluate", "--url", f"localhost:{find_free_port()}", option, value])
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {option} must be at least 1, got {value}"


def test_valid_counts_go_on_to_the_server() -> None:
    result = runner.invoke(app, ["evaluate", "--url", f"localhost:{find_free_port()}", "--limit", "1"])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: no Triton server answering at grpc://localhost:")
