"""Built-in weight-free editors: ``identity`` (the do-nothing floor) and ``oracle`` (the ceiling).

Both run anywhere with no weights, so every part of the benchmark (harness, metrics, reports)
is exercised in CI, as lm-evaluation-harness' dummy model does for its pipeline.

* ``identity`` returns the source unchanged: L2_bg = 0, no change anywhere, referring accuracy 0.
* ``oracle`` returns the reference edited image I_e. It declares ``reference`` in its protocol,
  so reports mark it as an upper bound, not an editor.
"""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from .base import Editor


class IdentityEditor(Editor):
    """Returns the source image unchanged."""

    name = "identity"
    protocol = frozenset()
    batch_size = 16

    def __init__(self) -> None:  # no options: a typo in --editor-arg is an error, not ignored
        super().__init__()

    def edit(self, images: List[np.ndarray], prompts: List[str], seeds: List[int],
             extras: List[Dict[str, Any]]) -> List[np.ndarray]:
        return [np.array(img, copy=True) for img in images]


class OracleEditor(Editor):
    """Returns the reference edited image (sees the ground truth: an upper bound)."""

    name = "oracle"
    protocol = frozenset({"reference"})
    batch_size = 16

    def __init__(self) -> None:
        super().__init__()

    def edit(self, images: List[np.ndarray], prompts: List[str], seeds: List[int],
             extras: List[Dict[str, Any]]) -> List[np.ndarray]:
        return [np.array(e["reference"], copy=True) for e in extras]
