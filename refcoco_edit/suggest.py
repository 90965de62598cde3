""""Did you mean ...?" for every lookup of a name a user typed (settings, registries, reason codes).

The bottom of the package: it imports nothing of ours, so any module may use it.
"""
from __future__ import annotations

import difflib
from typing import Iterable, List


def close_matches(name: str, known: Iterable[str], n: int = 3, cutoff: float = 0.6) -> List[str]:
    """The names of ``known`` closest to ``name``, best first."""
    return difflib.get_close_matches(str(name), sorted(set(known)), n=n, cutoff=cutoff)


def did_you_mean(name: str, known: Iterable[str], n: int = 3, cutoff: float = 0.6) -> str:
    """``"; did you mean 'a' or 'b'?"`` for the closest of ``known``, or ``""``."""
    return hint(close_matches(name, known, n, cutoff))


def hint(close: List[str]) -> str:
    """``"; did you mean 'a' or 'b'?"`` for names already found close, or ``""``."""
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
