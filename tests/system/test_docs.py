"""The documentation cannot rot: the site builds with ``mkdocs build --strict`` (a broken link fails
it), the Quickstart's, the export page's and the README's code blocks run against one demo build,
and every ``refcoco-edit`` command shown anywhere in the docs parses with the real argument parser.

Conventions (docs/contributing.md, "Examples that cannot rot"): ``bash`` and ``python`` fenced blocks
of the run pages execute in page order in one temporary folder (``bash -e -o pipefail``;
each ``python`` block in a fresh interpreter); a block preceded by ``<!-- illustrative: WHY -->`` is
not run, but its ``refcoco-edit`` commands are still parsed.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Set

import pytest

from conftest import REPO

DOCS = REPO / "docs"
RUN_PAGES = (DOCS / "quickstart.md", DOCS / "export-format.md", REPO / "README.md")
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
ILLUSTRATIVE = re.compile(r"^<!--\s*illustrative:\s*\S.*-->\s*$")
SEPARATORS = {"&&", "||", ";", "|"}
# what a page claims about the demo, checked against what its blocks print
CLAIMS = {
    "quickstart.md": ("generated 96 samples (6 shards)", "exported 96 to refcoco-edit-work/export", "96 samples"),
    "export-format.md": ("62 triplets",),
}


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    code: str
    illustrative: bool

    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def blocks(page: Path) -> List[Block]:
    text = page.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        before = text[:m.start()].rstrip("\n").splitlines()
        marker = bool(before) and bool(ILLUSTRATIVE.match(before[-1].strip()))
        out.append(Block(page, text.count("\n", 0, m.start()) + 1, m.group(1).lower(), m.group(2), marker))
    return out


def shell_commands(code: str) -> List[List[str]]:
    """The simple commands of a shell block (continuations joined, comments dropped, split at
    ``&&``, ``||``, ``;``, ``|``); a quoted string may span lines."""
    lines = code.replace("\\\n", " ").splitlines()
    commands: List[List[str]] = []
    pending = ""
    for line in lines:
        pending = f"{pending}\n{line}" if pending else line
        try:
            lex = shlex.shlex(pending, posix=True, punctuation_chars=";&|")
            lex.whitespace_split = True
            lex.commenters = "#"
            tokens = list(lex)
        except ValueError:  # an open quote: the string goes on on the next line
            continue
        pending = ""
        current: List[str] = []
        for tok in tokens:
            if tok in SEPARATORS:
                commands.append(current)
                current = []
            else:
                current.append(tok)
        commands.append(current)
    assert not pending, f"unterminated quote in:\n{code}"
    return [c for c in commands if c]


def check_parses(args: List[str], where: str) -> None:
    """``refcoco-edit ARGS`` parses with the real parser (``train`` parses its own options when it
    has loaded its config: only its name is checked)."""
    from refcoco_edit.cli import build_parser

    parser = build_parser()
    if args[:1] == ["train"]:
        return
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(args)
        except SystemExit as e:
            pytest.fail(f"{where}: `refcoco-edit {shlex.join(args)}` does not parse (exit {e.code}): {err.getvalue()}")


class Tour:
    """One temporary folder in which the run pages' blocks execute in order, sharing one demo build."""

    def __init__(self, root: Path):
        self.root = root
        self.env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
        self.env.pop("PYTHONPATH", None)  # the installed package, as a reader has it
        self.ran: Dict[str, str] = {}  # block text -> its output (the same block is not run twice)
        self.pages: Dict[str, str] = {}

    def run_page(self, page: Path) -> str:
        if page.name in self.pages:
            return self.pages[page.name]
        output = []
        for b in blocks(page):
            if b.illustrative or b.lang not in ("bash", "python"):
                continue
            if b.code in self.ran:
                output.append(self.ran[b.code])
                continue
            cmd = ["bash", "-e", "-o", "pipefail", "-c", b.code] if b.lang == "bash" else [sys.executable, "-c", b.code]
            r = subprocess.run(cmd, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, (f"{b.where()}: the {b.lang} block failed (exit {r.returncode})\n{b.code}\n"
                                       f"--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}")
            self.ran[b.code] = r.stdout + r.stderr
            output.append(self.ran[b.code])
        self.pages[page.name] = "\n".join(output)
        return self.pages[page.name]


@pytest.fixture(scope="module")
def tour(tmp_path_factory) -> Tour:
    assert shutil.which("refcoco-edit", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")), \
        "the refcoco-edit command is not installed (pip install -e .)"
    return Tour(tmp_path_factory.mktemp("tour"))


def _mkdocs(config: Path, site: Path) -> subprocess.CompletedProcess:
    tmp = site.parent / "tmp"  # the hook's installed layout goes here, and must be gone afterwards
    tmp.mkdir(exist_ok=True)
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", TMPDIR=str(tmp))
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=config.parent)


def test_site_builds_strict_with_the_api_reference(tmp_path):
    r = _mkdocs(REPO / "mkdocs.yml", tmp_path / "site")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    # the API pages were generated from the docstrings of the installed layout
    editors = (tmp_path / "site" / "api" / "editors" / "index.html").read_text()
    assert "refcoco_edit.benchmark.editors.base" in editors and "check_output" in editors
    assert "load_export" in (tmp_path / "site" / "api" / "export" / "index.html").read_text()
    assert "SelectionSettings" in (tmp_path / "site" / "api" / "config" / "index.html").read_text()
    assert (tmp_path / "site" / "quickstart" / "index.html").exists()
    assert not list((tmp_path / "tmp").iterdir())  # the hook removed its installed layout
    for page in ("training.md", "reference-track.md", "freeedit.md"):  # the nav names pages other people write
        assert (DOCS / page).exists()


def test_a_broken_internal_link_fails_the_strict_build(tmp_path):
    shutil.copytree(DOCS, tmp_path / "docs")
    config = (REPO / "mkdocs.yml").read_text()
    hook = "docs/_hooks/api_layout.py"
    assert hook in config
    # the copied site's hook is the repository's own (it finds the checkout from its own path)
    (tmp_path / "mkdocs.yml").write_text(config.replace(hook, str(DOCS / "_hooks" / "api_layout.py")))
    with open(tmp_path / "docs" / "quickstart.md", "a") as f:
        f.write("\nSee [the missing page](no-such-page.md).\n")
    r = _mkdocs(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert r.returncode != 0
    assert "no-such-page.md" in r.stdout + r.stderr, r.stdout[-2000:] + r.stderr[-2000:]


def test_quickstart_blocks_run_on_the_demo(tour):
    out = tour.run_page(DOCS / "quickstart.md")
    for claim in CLAIMS["quickstart.md"]:
        assert claim in out, f"docs/quickstart.md claims {claim!r}; the blocks printed:\n{out[-3000:]}"
    assert (tour.root / "source.png").exists() and (tour.root / "reference.png").exists()
    assert (tour.root / "results" / "compare" / "report.md").read_text().startswith("# refcoco-edit report: identity, oracle")


def test_export_page_blocks_run_on_the_demo(tour):
    tour.run_page(DOCS / "quickstart.md")  # the demo build the page reads (run once per module)
    out = tour.run_page(DOCS / "export-format.md")
    for claim in CLAIMS["export-format.md"]:
        assert claim in out, f"docs/export-format.md claims {claim!r}; the blocks printed:\n{out[-3000:]}"
    assert (tour.root / "other-work" / "generate").is_dir()  # import_export made a workspace


def test_readme_commands_run(tour):
    tour.run_page(DOCS / "quickstart.md")  # the same tour: its build and score runs are reused
    out = tour.run_page(REPO / "README.md")
    assert "| refers to:" in out  # the README's own "look at a sample" block ran
    runnable = [b for b in blocks(REPO / "README.md") if b.lang == "bash" and not b.illustrative]
    assert len(runnable) >= 4
    for b in runnable:
        assert b.code in tour.ran, f"{b.where()} did not run"
    # the set-up commands stay exactly as .ci/run and newcomers expect them
    text = (REPO / "README.md").read_text()
    assert "pip install . && refcoco-edit build --out refcoco-edit-work" in text
    assert 'python -m pip install -e ".[dev]" && python -m pytest' in text
    assert 'python -m pip install -e ".[dev]" && python -m pytest' in (REPO / ".ci" / "run").read_text()
    assert len(text.splitlines()) < 200


def test_every_refcoco_edit_command_in_the_docs_parses():
    pages = [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]
    seen: Set[str] = set()
    for page in pages:
        for b in blocks(page):
            if b.lang not in ("bash", "sh", "shell"):
                continue
            for cmd in shell_commands(b.code):
                words = [w for w in cmd if not re.match(r"^[A-Z_][A-Z0-9_]*=", w)]  # VAR=value prefixes
                if words[:1] == ["refcoco-edit"]:
                    check_parses(words[1:], b.where())
                    seen.add(words[1] if len(words) > 1 else "")
    assert {"build", "score", "report", "export"} <= seen, seen


def test_shell_command_extraction():
    code = ('pip install . && refcoco-edit build --out w  # a comment\n'
            'refcoco-edit score --model x \\\n    --data d --out r\n'
            'python -c "\nprint(1)\n" | head\n')
    assert shell_commands(code) == [["pip", "install", "."], ["refcoco-edit", "build", "--out", "w"],
                                    ["refcoco-edit", "score", "--model", "x", "--data", "d", "--out", "r"],
                                    ["python", "-c", "\nprint(1)\n"], ["head"]]
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        check_parses(["build", "--no-such-flag"], "here")


def test_every_registered_metric_is_defined_on_the_scoring_page():
    from refcoco_edit.benchmark.metrics import METRICS

    text = (DOCS / "scoring.md").read_text()
    missing = [name for name in METRICS if f"`{name}`" not in text]
    assert not missing, f"docs/scoring.md does not define {missing}"
