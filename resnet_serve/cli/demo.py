"""`demo`: the whole pipeline on Fashion-MNIST in one command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resnet_serve.cli.console import check_outputs, command, console, err_console
from resnet_serve.cli.options import DEFAULT_REPOSITORY
from resnet_serve.cli.render import demo_table, write_json
from resnet_serve.rich_progress import RichReporter

__all__ = ["demo"]


@command
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the checkpoint, images and logs go.")] = Path("demo-output"),
    repository: Annotated[Path, typer.Option(help="Triton model repository to write into.")] = DEFAULT_REPOSITORY,
    summary: Annotated[Path, typer.Option(help="Write the summary JSON here.")] = Path("demo-summary.json"),
    epochs: Annotated[float | None, typer.Option(help="Override the demo recipe's epochs (fractions allowed).")] = None,
) -> None:
    """Train ResNet-20 on Fashion-MNIST, export, serve, classify, evaluate and benchmark it."""
    from resnet_serve.demo import run_demo

    check_outputs(summary, folders=(workdir, repository))
    result = run_demo(workdir=workdir, repository=repository, epochs=epochs, reporter=RichReporter(err_console))
    write_json(summary, result)
    console.print(demo_table(result))
    console.print(f"summary written to {summary}")
