"""The CLI reference as a page of the docs: ``docs/cli.md`` is this function's output
(``make docs-pages`` writes it; a test fails when the page and the app differ).

The page is rendered from the command and parameter objects Typer builds for ``--help``
(``get_usage``, ``get_help_record``), not from the function signatures, so it says exactly what
``resnet-serve <command> --help`` says: the same option names, metavars, defaults and help text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import typer
from typer.core import TyperGroup

from resnet_serve.cli import app

__all__ = ["cli_reference_markdown"]

PROGRAM = "resnet-serve"

_INTRODUCTION = f"""# CLI reference

Every command of `{PROGRAM}` with its arguments and options, as `{PROGRAM} <command> --help`
prints them. This page is generated from the Typer app (`make docs-pages`); a test fails when
it is out of date.
"""

# Help texts are plain text; outside their `code spans`, markdown would take <name> for an HTML
# tag (a backslash does not escape '<' in Python-Markdown: the entity does, everywhere) and a lone
# * or _ for emphasis.
_CODE_SPAN = re.compile(r"(`[^`]*`)")
_EMPHASIS = re.compile(r"([*_\\])")


def _text(text: str) -> str:
    parts = _CODE_SPAN.split(" ".join(text.split()))
    return "".join(part if part.startswith("`") else _EMPHASIS.sub(r"\\\1", part).replace("<", "&lt;")
                   for part in parts)


def _commands(command: Any, context: Any) -> Iterator[tuple[Any, Any]]:
    """Each command in the order `--help` lists them, a group's commands after the group."""
    yield command, context
    if isinstance(command, TyperGroup):
        for name in command.list_commands(context):
            child = command.get_command(context, name)
            if child is not None and not child.hidden:
                yield from _commands(child, child.context_class(child, info_name=name, parent=context))


def _section(command: Any, context: Any) -> list[str]:
    path = context.command_path
    lines = [f"\n## `{path}`\n"]
    if command.help:
        lines.append(_text(command.help) + "\n")
    lines.append(f"```\n{command.get_usage(context).removeprefix('Usage: ')}\n```\n")
    records = [param.get_help_record(context) for param in command.get_params(context)]
    for names, help_text in filter(None, records):
        lines.append(f"- `{names}`" + (f": {_text(help_text)}" if help_text else ""))
    if isinstance(command, TyperGroup):
        lines.append("\nCommands: " + ", ".join(
            f"[`{path} {name}`](#{path.replace(' ', '-')}-{name})" for name in command.list_commands(context)
        ) + ".")
    return lines


def cli_reference_markdown() -> str:
    """The page: an introduction, then one section per command (the program's own first)."""
    root = typer.main.get_command(app)
    lines = [_INTRODUCTION]
    for command, context in _commands(root, root.context_class(root, info_name=PROGRAM)):
        lines += _section(command, context)
    return "\n".join(lines) + "\n"
