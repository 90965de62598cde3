"""The shipped FreeEdit training configs, installed with the package.

``refcoco-edit train --model freeedit --config NAME`` (or ``builtin:NAME``) names one of them:

* ``freeedit``            - the three phases: base (projection + U-Net), detail (+ detail extractor
  + DRRA), quality (tuning on the best-scored accepted triplets; needs ``quality.scores``);
* ``freeedit_no_quality`` - the first two phases only (no score run needed).
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
    """The file of the shipped config ``name`` (``freeedit``, ``freeedit.yaml`` or ``builtin:freeedit``);
    ValueError naming the shipped ones when there is none."""
    stem = name[len(PREFIX):] if name.startswith(PREFIX) else name
    if stem.endswith(".yaml"):
        stem = stem[: -len(".yaml")]
    p = _dir() / f"{stem}.yaml"
    if "/" in stem or "\\" in stem or not stem or not p.is_file():
        raise ValueError(f"no shipped FreeEdit config {name!r}; shipped: {', '.join(names())}")
    return p


def resolve(config: Union[str, Path]) -> Path:
    """``--config`` as given: an existing file wins; else ``builtin:NAME`` or a bare ``NAME`` is a
    shipped config; else ValueError (file not found / unknown name)."""
    s = str(config)
    if s.startswith(PREFIX):
        return path(s)
    p = Path(s).expanduser()
    if p.is_file():
        return p
    if Path(s).name == s and s.removesuffix(".yaml") in names():
        return path(s)
    raise ValueError(f"config {s!r} is neither a file nor a shipped FreeEdit config; shipped: {', '.join(names())} "
                     f"(use --config NAME or --config {PREFIX}NAME)")
