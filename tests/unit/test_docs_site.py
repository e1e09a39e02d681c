"""The docs site's hook for repository files (docs/_hooks/repository_files.py), on a small site
built as `make docs` builds ours: a page's link to a file outside docs/ resolves to a copy in the
site, a results table stays a file rather than becoming a page, and a link to a file that is not
there fails the strict build."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HOOK = Path(__file__).resolve().parents[2] / "docs" / "_hooks" / "repository_files.py"


def build(root: Path, page: str) -> subprocess.CompletedProcess[str]:
    (root / "docs").mkdir(exist_ok=True)
    (root / "docs" / "index.md").write_text(page)
    (root / "mkdocs.yml").write_text(f"site_name: test\nhooks: [{HOOK}]\n")
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(root / "site")],
                          cwd=root, capture_output=True, text=True, timeout=120)


def test_a_linked_repository_file_is_copied_and_the_link_leads_to_the_copy(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "run.json").write_text('{"top1": 0.9041}\n')
    (tmp_path / "results" / "run.md").write_text("| a | b |\n|---|---|\n| 1 | 2 |\n")

    built = build(tmp_path, "# Home\n\n[json](../results/run.json), [table](../results/run.md)\n")

    assert built.returncode == 0, built.stderr
    copies = tmp_path / "site" / "repository" / "results"
    assert (copies / "run.json").read_text() == '{"top1": 0.9041}\n'
    assert (copies / "run.md").read_text() == "| a | b |\n|---|---|\n| 1 | 2 |\n"
    html = (tmp_path / "site" / "index.html").read_text()
    assert 'href="repository/results/run.json"' in html and 'href="repository/results/run.md"' in html


def test_a_link_to_a_missing_repository_file_fails_the_strict_build(tmp_path: Path) -> None:
    built = build(tmp_path, "# Home\n\n[json](../results/absent.json)\n")

    assert built.returncode != 0
    assert "'../results/absent.json', but the target is not found" in built.stderr
