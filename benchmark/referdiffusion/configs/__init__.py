"""The shipped ReferDiffusion training configs (the paper's ablation rows), installed with the package.

``refcoco-edit train --config NAME`` (or ``builtin:NAME``) names one of them:

* ``1_finetune`` - plain InstructPix2Pix fine-tuned on RefCOCO-Edit (no REM, no RCL);
* ``2_rem``      - + the Region-Embedder Module and its mask / edit-embedding losses;
* ``3_rem_rcl``  - + the Region-Control Loss;
* ``4_selfsup``  - stage 1 of the full method (self-supervised "Paint a ..." samples); stage 2
  is ``3_rem_rcl`` started from its final model.

A checkout also has them as ``configs/referdiffusion/NAME.yaml`` (links to these files).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Union

PREFIX = "builtin:"


def _dir() -> Path:
    return Path(__file__).resolve().parent


def names() -> List[str]:
    """The shipped config names (file names without ``.yaml``), sorted."""
    return sorted(p.stem for p in _dir().glob("*.yaml"))


def path(name: str) -> Path:
    """The file of the shipped config ``name`` (``3_rem_rcl``, ``3_rem_rcl.yaml`` or
    ``builtin:3_rem_rcl``); ValueError naming the shipped ones when there is none."""
    stem = name[len(PREFIX):] if name.startswith(PREFIX) else name
    if stem.endswith(".yaml"):
        stem = stem[: -len(".yaml")]
    p = _dir() / f"{stem}.yaml"
    if "/" in stem or "\\" in stem or not stem or not p.is_file():
        raise ValueError(f"no shipped ReferDiffusion config {name!r}; shipped: {', '.join(names())}")
    return p


def resolve(config: Union[str, Path]) -> Path:
    """``--config`` as given: an existing file wins; else ``builtin:NAME`` or a bare ``NAME``
    (no folder part) is a shipped config; else ValueError (file not found / unknown name)."""
    s = str(config)
    if s.startswith(PREFIX):
        return path(s)
    p = Path(s).expanduser()
    if p.is_file():
        return p
    if Path(s).name == s and s.removesuffix(".yaml") in names():
        return path(s)
    raise ValueError(f"config {s!r} is neither a file nor a shipped config; shipped: {', '.join(names())} "
                     f"(use --config NAME or --config {PREFIX}NAME)")
