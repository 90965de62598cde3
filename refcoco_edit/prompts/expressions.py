"""Referring expressions: the normal form the referring span covers, and whether it needs "the ".

What this module writes is part of the prompts' cache keys: a change to it bumps
``refcoco_edit.prompts.TEMPLATE_VERSION``.
"""
from __future__ import annotations

import re
from typing import List

_TRAILING_PUNCT = ".,;:!?\u2026"

# A first word that already makes the expression a determined noun phrase (or a pronoun).
_DETERMINERS = frozenset(
    """
    the a an this that these those his her their its my your our whose which what
    some any each every both all another either neither several many few much half such
    he she it they him them i me you we us
    someone somebody something anyone anybody anything everyone everybody everything
    nobody nothing whoever whatever whichever
    """.split()
)


def normalize_expression(expr: str) -> str:
    """Strip, collapse whitespace, and drop trailing punctuation; keep the case as given.

    This is the exact text the referring span covers.
    """
    text = " ".join(str(expr).split())
    while text and (text[-1] in _TRAILING_PUNCT or text[-1].isspace()):
        text = text[:-1]
    return text


def _words(text: str) -> List[str]:
    return re.findall(r"[^\W_]+(?:['\u2019][^\W_]+)*", text.lower())


def needs_determiner(expression: str) -> bool:
    """Whether ``"the "`` must be put before the expression to make it a noun phrase.

    False when it starts with a determiner, pronoun or possessive ("the", "his", "those",
    "someone"). "one" counts as a determiner only in "one of ...": RefCOCO's "one on left"
    means *the* one on the left, and "remove one on left" would say something else.
    """
    words = _words(expression)
    if not words:
        return False
    first = words[0]
    for suffix in ("'s", "\u2019s"):
        if first.endswith(suffix) and first[: -len(suffix)] in _DETERMINERS:
            return False
    if first in _DETERMINERS:
        return False
    if first == "one":
        return not (len(words) > 1 and words[1] == "of")
    return True
