"""Atomic writes: whole files or none, with the permissions a plain open() gives."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from resnet_serve.files import asdict_with_paths, replacing_atomically


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_replaced_file_has_the_permissions_open_would_give(tmp_path: Path) -> None:
    destination = tmp_path / "deep" / "result.json"
    with replacing_atomically(destination) as temporary:
        temporary.write_text("{}")
    plain = tmp_path / "plain.json"
    plain.write_text("{}")

    assert destination.read_text() == "{}"
    assert stat.S_IMODE(destination.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask()
    assert sorted(p.name for p in destination.parent.iterdir()) == ["result.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    destination = tmp_path / "result.json"
    destination.write_text("old")
    with pytest.raises(RuntimeError), replacing_atomically(destination) as temporary:
        temporary.write_text("half")
        raise RuntimeError("disk full")

    assert destination.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_asdict_with_paths_turns_paths_into_strings() -> None:
    @dataclass
    class Written:
        path: Path
        cache: Path | None
        size: int

    assert asdict_with_paths(Written(Path("/a/b.onnx"), None, 3)) == {"path": "/a/b.onnx", "cache": None, "size": 3}


def test_asdict_with_paths_converts_nested_results_and_leaves_out_what_json_cannot_hold() -> None:
    @dataclass(frozen=True)
    class Inner:
        file: Path
        shape: tuple[int, ...]

    @dataclass
    class Outer:
        session: object = field(metadata={"json": False})
        inner: Inner
        files: dict[str, Path]
        history: list[Inner]

    outer = Outer(object(), Inner(Path("/m/model.onnx"), (1, 28)), {"plan": Path("m.plan")}, [Inner(Path("a"), ())])

    assert asdict_with_paths(outer) == {
        "inner": {"file": "/m/model.onnx", "shape": [1, 28]},
        "files": {"plan": "m.plan"},
        "history": [{"file": "a", "shape": []}],
    }
