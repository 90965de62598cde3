"""The import contract of setup.cfg ([importlinter]), checked by import-linter: layers (core <-
pipelines / annotation / benchmark <- cli), annotation and benchmark independent, and no import
cycle between sibling modules anywhere (function-level imports count)."""
from __future__ import annotations

import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
from installed_layout import lay_out, lint  # noqa: E402


def test_the_package_keeps_its_import_contract():
    done = lint()
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "3 kept, 0 broken" in done.stdout


def test_the_contract_catches_an_upward_import_and_a_cycle(tmp_path):
    root = lay_out(tmp_path)
    schema = root / "refcoco_edit" / "schema.py"
    schema.write_text(schema.read_text() + "\n\ndef _late():\n    from refcoco_edit.pipelines import base  # noqa\n")
    vocab = root / "refcoco_edit" / "vocab.py"
    vocab.write_text(vocab.read_text() + "\n\ndef _late():\n    from refcoco_edit import prompts  # noqa\n")
    done = lint(root)
    assert done.returncode != 0
    assert "refcoco_edit.schema -> refcoco_edit.pipelines.base" in done.stdout
    assert "No cycles are allowed in refcoco_edit" in done.stdout
