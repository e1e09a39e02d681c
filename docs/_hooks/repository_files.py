"""mkdocs hook: the repository files that the pages link or show (benchmark results, deploy
files, tests) go into the site too.

The pages link such files relatively (`../benchmarks/results/runtimes-2core-cpu.md`), so the links
work wherever the repository is browsed as files. mkdocs knows only the files under docs_dir and,
with --strict, fails on every link that leaves it. This hook adds each linked file that exists in
the repository to the build, copied as it is to `repository/<its path>` in the site, so mkdocs
resolves the link to the copy; a link to a file that is not there is left to mkdocs, whose
warning fails a strict build like any broken link between pages.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files, InclusionLevel

# The target of a markdown link or image that climbs out of docs_dir.
_OUTSIDE_LINK = re.compile(r"\]\((\.\./[^)\s#]+)")


class RepositoryFile(File):
    """A file from outside docs_dir, copied as it is: a results table in markdown is a file the
    pages link, not a page of the site."""

    def is_documentation_page(self) -> bool:
        return False


def on_files(files: Files, config: MkDocsConfig) -> Files:
    docs = Path(config.docs_dir).resolve()
    root = docs.parent
    for page in files.documentation_pages():
        for target in _OUTSIDE_LINK.findall(page.content_string):
            # As mkdocs resolves a link: relative to the page's own folder in docs_dir.
            uri = posixpath.normpath(posixpath.join(posixpath.dirname(page.src_uri), target))
            path = (docs / uri).resolve()
            if files.get_file_from_path(uri) is None and path.is_relative_to(root) and path.is_file():
                files.append(RepositoryFile(
                    uri, src_dir=str(docs), dest_dir=config.site_dir, use_directory_urls=config.use_directory_urls,
                    dest_uri=f"repository/{path.relative_to(root).as_posix()}", inclusion=InclusionLevel.INCLUDED,
                ))
    return files
