"""MkDocs hook: let mkdocstrings read the packages in the shape `pip install .` gives them.

The repository keeps pipelines/, annotation/ and benchmark/ beside refcoco_edit/, and setup.cfg
installs them as refcoco_edit.pipelines, refcoco_edit.annotation and refcoco_edit.benchmark.
griffe (mkdocstrings' Python reader) finds a package by walking its folder on disk, so in a
checkout -- editable install or none -- it would not see refcoco_edit.benchmark under
refcoco_edit/. This hook lays the checkout out in its installed shape in a temporary folder
(tools/installed_layout.py, the same layout the import-contract test lints) and puts that folder
first on griffe's search path. The reference pages therefore document this checkout's code,
statically (nothing is imported), whatever is or is not installed.
"""
from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from mkdocs.plugins import event_priority

REPO = Path(__file__).resolve().parents[2]
_LAYOUT: list = []


def _installed_layout():
    spec = importlib.util.spec_from_file_location("_refcoco_edit_installed_layout", REPO / "tools" / "installed_layout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@event_priority(100)  # before mkdocstrings' on_config, which makes the handler and reads `paths`
def on_config(config):
    tmp = Path(tempfile.mkdtemp(prefix="refcoco-edit-docs-api-"))
    _LAYOUT.append(tmp)
    _installed_layout().lay_out(tmp)
    python = config.plugins["mkdocstrings"].config.handlers.setdefault("python", {})
    python["paths"] = [str(tmp)]
    return config


def on_shutdown():
    while _LAYOUT:
        shutil.rmtree(_LAYOUT.pop(), ignore_errors=True)
