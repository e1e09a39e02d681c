"""Where the CLI prints, and how a command fails: one line on stderr and an exit code."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from resnet_serve.cli.options import bundled
from resnet_serve.errors import ResnetServeError
from resnet_serve.files import check_output_file, check_output_folder

__all__ = ["check_outputs", "command", "console", "err_console", "fail"]

console = Console()
err_console = Console(stderr=True)


def fail(message: str, *, code: int = 1) -> typer.Exit:
    """Print ``message`` as the command's one error line; raise what this returns."""
    # Escaped: a message may hold brackets ([::1]:8000, [scheme://]) that rich would read as markup.
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def command(function: Callable[..., Any]) -> Callable[..., Any]:
    """A command whose option bundles are expanded (see ``bundled``), and which turns our errors
    (and Ctrl-C) into one line on stderr and an exit code, never a traceback."""
    expanded = bundled(function)

    @functools.wraps(expanded)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return expanded(*args, **kwargs)
        except ResnetServeError as error:
            raise fail(str(error), code=error.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def check_outputs(*files: Path | None, folders: tuple[Path | None, ...] = ()) -> None:
    """Refuse unusable output paths (a folder for a file, a file for a folder, a parent that
    is a file, no write permission) before a command does any work, so that no training run
    or export is lost to a path that cannot be written at its end. None is an option not given."""
    for path in files:
        if path is not None:
            check_output_file(path)
    for folder in folders:
        if folder is not None:
            check_output_folder(folder)
