"""The CLI reference page: the committed docs/cli.md is the rendering of the Typer app, and the
rendering holds every command and option, as markdown that shows them as written."""

from __future__ import annotations

import re
from pathlib import Path

import markdown
import typer

from resnet_serve.cli import app
from resnet_serve.cli.reference import cli_reference_markdown

PAGE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_the_committed_page_is_the_rendering_of_the_app() -> None:
    assert PAGE.read_text() == cli_reference_markdown(), "docs/cli.md is out of date: run make docs-pages"


def _sections(page: str) -> dict[str, str]:
    """Each command's section, by its path ('resnet-serve repo check')."""
    parts = re.split(r"^## `(.+)`$", page, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_every_command_has_a_section_with_every_option() -> None:
    sections = _sections(cli_reference_markdown())
    root = typer.main.get_command(app)
    context = root.context_class(root, info_name="resnet-serve")
    expected = {"resnet-serve": root}
    for name in root.list_commands(context):
        command = root.get_command(context, name)
        expected[f"resnet-serve {name}"] = command
        if isinstance(command, typer.core.TyperGroup):
            inner = command.context_class(command, info_name=name, parent=context)
            for child in command.list_commands(inner):
                expected[f"resnet-serve {name} {child}"] = command.get_command(inner, child)

    assert list(sections) == list(expected)
    for path, command in expected.items():
        names = [name for param in command.params for name in (*param.opts, *param.secondary_opts)
                 if name.startswith("-")]
        assert all(re.search(rf"`[^`]*(?<![\w-]){re.escape(name)}(?![\w-])", sections[path])
                             for name in names), path
    assert "--batch-padding" in sections["resnet-serve export"]
    assert "--host <auto|any|cpu|gpu>" in sections["resnet-serve repo check"]


def test_help_text_renders_as_written() -> None:
    """Plain help text keeps its <placeholders> and underscores once markdown renders it."""
    html = markdown.markdown(cli_reference_markdown())
    assert "Also write &lt;name&gt;-preprocess and the ensemble &lt;name&gt;-image" in html
    assert "ENABLE_BATCH_PADDING" in html and "<em>" not in html
