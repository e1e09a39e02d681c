"""The `resnet-serve` command line: one thin command per pipeline stage.

This package is the only place that prints or exits. Every command hands its work to a library
function and turns our errors into one readable line and a non-zero exit code. One module per
command group; the options several commands share are defined once (``options``), and how
results look is ``render``'s.
"""

from __future__ import annotations

import warnings
from typing import Annotated

import typer

from resnet_serve import __version__
from resnet_serve.cli import client, demo, export, serving, training, tuning
from resnet_serve.cli.console import console

__all__ = ["app"]

# Pillow warns about what it reads (damaged TIFF tags, sizes over its own pixel limit, which are
# all over ours); a file that cannot be used is refused with one line, which the warnings would bury.
warnings.filterwarnings("ignore", module=r"PIL(\.|$)")

app = typer.Typer(
    name="resnet-serve",
    help="Train or load a ResNet, fold and export it, serve it on Triton, and prove it over HTTP/gRPC.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        console.print(f"resnet-serve {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Train or load a ResNet, fold and export it, serve it on Triton, and prove it over HTTP/gRPC."""


# In the order of the pipeline, which is the order `--help` lists them in.
for name, function in (
    ("models", training.models), ("train", training.train), ("import", training.import_weights),
    ("fold", export.fold), ("export", export.export), ("serve", serving.serve),
    ("classify", client.classify), ("evaluate", client.evaluate), ("bench", client.bench),
    ("tune", tuning.tune), ("report", client.report), ("verify", export.verify), ("demo", demo.demo),
):
    app.command(name)(function)
app.add_typer(training.experiment_app, name="experiment")
app.add_typer(serving.repo_app, name="repo")
