"""Renderings of the edit content: indefinite articles, replace targets, attribute phrases.

What this module writes is part of the prompts' cache keys: a change to it bumps
``refcoco_edit.prompts.TEMPLATE_VERSION``.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from ..vocab import COLOURS, MATERIALS
from .expressions import _words

# Probability that a colour gets an intensifier ("bright red").
P_INTENSIFIER = 0.25

# Vowel letters with a consonant sound ("a unicorn") and silent h ("an hour").
_CONSONANT_SOUND_PREFIXES = (
    "uni", "use", "usu", "uti", "ute", "uro", "ura", "ubiq", "ufo", "uk", "eu", "ewe", "one",
    "once",
)
_SILENT_H_PREFIXES = ("hour", "honest", "honor", "honour", "heir")


def indefinite_article(phrase: str) -> str:
    """``"a"`` or ``"an"`` for the sound the phrase starts with (vocab-level accuracy)."""
    words = _words(phrase)
    if not words:
        return "a"
    w = words[0]
    if w.startswith(_SILENT_H_PREFIXES):
        return "an"
    if w.startswith(_CONSONANT_SOUND_PREFIXES):
        return "a"
    if len(w) == 1 and w in "aefhilmnorsx":  # letters read as "an": "an X-ray", "an f-stop"
        return "an"
    return "an" if w[0] in "aeiou" else "a"


_PAIR_NOUNS = frozenset({"skis", "scissors"})
_MASS_NOUNS = frozenset({"broccoli"})
_NP_STARTERS = frozenset({"a", "an", "the", "some", "two", "three", "several", "many"})


def render_target(target: str) -> str:
    """The replace target as a noun phrase: ``"giraffe"`` -> ``"a giraffe"``.

    Targets that already start with an article (imaginative ones: ``"a robot"``) are used as is;
    plural-only nouns become ``"a pair of skis"``, mass nouns ``"some broccoli"``.
    """
    t = " ".join(target.split())
    if not t:
        raise ValueError("a replace edit needs a non-empty target")
    words = t.split(" ")
    if words[0].lower() in _NP_STARTERS:
        return t
    if t.lower() in _PAIR_NOUNS:
        return f"a pair of {t}"
    if t.lower() in _MASS_NOUNS:
        return f"some {t}"
    return f"{indefinite_article(t)} {t}"


# Intensifiers that keep the hue (the classical recolouring renders one RGB per colour).
_INTENSIFIERS: Dict[str, Tuple[str, ...]] = {
    "red": ("bright", "vivid", "deep"), "orange": ("bright", "vivid"),
    "yellow": ("bright",), "green": ("bright", "vivid"), "blue": ("bright", "vivid", "deep"),
    "purple": ("bright", "deep"), "pink": ("bright",), "white": ("pure", "snow"),
    "black": ("jet", "pitch"), "gray": (), "brown": (),
}

# material -> (predicative adjective, noun used in "made of X" / "out of X")
_MATERIAL_FORMS: Dict[str, Tuple[str, str]] = {
    "wooden": ("wooden", "wood"), "metallic": ("metallic", "metal"), "golden": ("golden", "gold"),
    "marble": ("marble", "marble"), "glass": ("glass", "glass"), "stone": ("stone", "stone"),
}



def _attribute_kind(target: str) -> str:
    if target in COLOURS:
        return "colour"
    if target in MATERIALS:
        return "material"
    raise ValueError(
        f"unknown attribute target {target!r}: expected a colour {sorted(COLOURS)} "
        f"or a material {list(MATERIALS)}"
    )


def _render_attribute(target: str, form: str, rng: np.random.Generator) -> str:
    if form == "colour":
        choices = _INTENSIFIERS.get(target, ())
        if choices and rng.random() < P_INTENSIFIER:
            return f"{choices[int(rng.integers(len(choices)))]} {target}"
        return target
    if target not in _MATERIAL_FORMS:  # a material added to vocab without a rendering
        adj = noun = target
    else:
        adj, noun = _MATERIAL_FORMS[target]
    if form == "adj":
        return adj
    if form == "made_of":
        return f"made of {noun}"
    if form == "noun":
        return noun
    raise ValueError(f"unknown attribute form {form!r}")

