"""Every link in the committed documentation resolves from a fresh clone.

The docs are read on GitHub and in a clone, never on the machine they were written on, so a link must
name a file of this repository relative to the file that contains it. Three rules, each one a mistake
that happened: a Markdown link to a missing file, a result file named bare (`keep_fresh.md`) where it
lives in `benchmarks/results/`, and a reference to `../shared/`, the development machine's data and
teacher folder, which no clone has. Run outputs named in prose (`results.json`, `RUN/report.md`) are
not repository files and are not checked. No torch import: this reads text only.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# The hand-written docs and every committed result page (generated reports included: their images too).
DOCS = sorted({ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *RESULTS.rglob("*.md")})
# The pages a reader starts from; the runs' own reports may record the paths they ran with.
PROSE = sorted({ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *RESULTS.glob("*.md")})

# [text](target) and ![alt](target), with an optional "title"; the target has no spaces.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|#)", re.IGNORECASE)  # http:, https:, mailto:, an anchor
# A bare file name or relative path: no spaces, no glob or brace, ends in an extension.
PATHLIKE = re.compile(r"^[\w./-]+\.[A-Za-z0-9]+$")


def _text(path: Path) -> str:
    """The page without its fenced code blocks (commands there are shown as typed, not linked)."""
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_pages_found() -> None:
    """The checks below read something: the README, the docs and the result pages are where they were."""
    assert ROOT / "README.md" in DOCS
    assert any(p.parent == ROOT / "docs" for p in DOCS)
    assert any(p.parent == RESULTS for p in DOCS)


@pytest.mark.parametrize("page", DOCS, ids=_name)
def test_links_resolve(page: Path) -> None:
    """Each Markdown link's target exists relative to the page that holds it."""
    missing = []
    for target in LINK.findall(_text(page)):
        if EXTERNAL.match(target):
            continue
        local = target.split("#", 1)[0]
        if local and not (page.parent / local).exists():
            missing.append(target)
    assert not missing, f"{_name(page)} links to files a clone does not have: {missing}"


@pytest.mark.parametrize("page", PROSE, ids=_name)
def test_result_files_named_with_their_place(page: Path) -> None:
    """A file of benchmarks/results/ named in inline code resolves from the page or from the root."""
    bare = []
    for span in CODE.findall(_text(page)):
        span = span.strip()
        if not PATHLIKE.match(span):
            continue
        if (page.parent / span).exists() or (ROOT / span).exists():
            continue
        if (RESULTS / span).exists():
            bare.append(span)
    assert not bare, (
        f"{_name(page)} names result files without their path (write benchmarks/results/NAME or link it): {bare}"
    )


@pytest.mark.parametrize("page", PROSE, ids=_name)
def test_no_shared_folder_references(page: Path) -> None:
    """No link or path into ../shared/: it is the development machine's folder, not the repository's.

    A command block may show the path it was run with (fenced blocks are skipped); prose says in words.
    """
    text = _text(page)
    hits = [t for t in LINK.findall(text) if "shared/" in t and t.lstrip("./").startswith("shared/")]
    hits += [s for s in CODE.findall(text) if "../shared" in s]
    hits += re.findall(r"\.\./shared/\S*", CODE.sub("", LINK.sub("", text)))
    assert not hits, f"{_name(page)} points into ../shared/, which a clone does not have: {hits}"
