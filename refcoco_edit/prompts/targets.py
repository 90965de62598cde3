"""Choosing the edit target: what an object is replaced by, or which colour / material it gets.

What this module writes is part of the prompts' cache keys: a change to it bumps
``refcoco_edit.prompts.TEMPLATE_VERSION``.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import SampleError
from ..vocab import BUILD_EDIT_TYPES, COCO_CATEGORIES, COCO_SUPERCATEGORIES, COLOURS, IMAGINATIVE_TARGETS, MATERIALS
from .expressions import normalize_expression
from .fit import fits

# Probability that an attribute edit is a material rather than a colour.
P_MATERIAL = 0.3
# Probability that an imaginative target is drawn when ``imaginative=True``.
P_IMAGINATIVE = 0.35

# words in an expression that mention a material (prefix match on word starts)
_MATERIAL_WORDS: Dict[str, Tuple[str, ...]] = {
    "wooden": ("wood",), "metallic": ("metal", "steel", "iron", "chrome"),
    "golden": ("gold",), "marble": ("marble",), "glass": ("glass",), "stone": ("stone",),
}

_COLOUR_WORDS: Dict[str, Tuple[str, ...]] = {
    "gray": ("gray", "grey"), "blue": ("blue", "bluish"), "purple": ("purple", "violet"),
}


_NAME_TO_SUPER: Dict[str, str] = {
    COCO_CATEGORIES[i]: sup for sup, ids in COCO_SUPERCATEGORIES.items() for i in ids
}

# Rough physical size class of each category (0 small, 1 medium, 2 large); default small.
_SIZE: Dict[str, int] = {
    **{n: 2 for n in (
        "airplane", "bus", "train", "truck", "boat", "car", "elephant", "giraffe", "bed",
        "couch", "dining table", "refrigerator", "horse", "cow", "bear", "motorcycle",
        "bench", "zebra",
    )},
    **{n: 1 for n in (
        "person", "bicycle", "sheep", "dog", "cat", "fire hydrant", "parking meter",
        "stop sign", "traffic light", "suitcase", "chair", "toilet", "tv", "oven", "sink",
        "microwave", "potted plant", "surfboard", "skis", "snowboard", "umbrella",
        "teddy bear", "backpack", "skateboard", "laptop", "cake", "pizza", "kite",
    )},
}

# Other words by which an expression names a category (on top of the name and its plural).
_CATEGORY_SYNONYMS: Dict[str, Tuple[str, ...]] = {
    "person": ("people", "man", "men", "woman", "women", "guy", "guys", "girl", "girls", "boy",
               "boys", "lady", "ladies", "kid", "kids", "child", "children", "player", "baby",
               "dude", "gentleman", "gentlemen", "mom", "dad"),
    "bicycle": ("bike", "bikes", "cycle"), "motorcycle": ("motorbike", "motorbikes", "bike", "bikes"),
    "airplane": ("plane", "planes", "jet", "jets", "aeroplane"), "tv": ("television", "monitor", "screen"),
    "couch": ("sofa", "sofas"), "cell phone": ("phone", "phones", "cellphone", "cellphones"),
    "dining table": ("table", "tables"), "donut": ("doughnut", "doughnuts"),
    "potted plant": ("plant", "plants"), "refrigerator": ("fridge", "fridges"),
    "hair drier": ("hair dryer", "dryer"), "sports ball": ("ball", "balls"),
    "teddy bear": ("teddy", "teddies"), "knife": ("knives",), "mouse": ("mice",),
    "wine glass": ("glass", "glasses"), "laptop": ("computer",), "handbag": ("purse", "bag"),
    "backpack": ("bag",), "hot dog": ("hotdog", "hotdogs"), "cup": ("mug", "mugs"),
    "sheep": ("lamb", "lambs"), "cow": ("cattle", "bull", "calf"),
}


def _mentions(text: str, word: str, prefix: bool = False) -> bool:
    """Whether ``word`` occurs in ``text`` as a whole word (or a word start, ``prefix=True``),
    case-insensitively, with plural endings allowed."""
    w = re.escape(word.lower()).replace(r"\ ", r"\s+")
    tail = r"" if prefix else r"(?:s|es)?\b"
    return re.search(r"(?<![^\W_])" + w + tail, text.lower()) is not None


def _named_categories(expression: str) -> set:
    named = set()
    for name in COCO_CATEGORIES.values():
        words = (name,) + _CATEGORY_SYNONYMS.get(name, ())
        if any(_mentions(expression, w) for w in words):
            named.add(name)
    return named


def _target_weight(source: str, cand: str) -> float:
    """Plausibility of replacing ``source`` by ``cand``: similar size and same supercategory
    weigh more, but every candidate keeps some weight (variety)."""
    if source not in _NAME_TO_SUPER:
        return 1.0
    gap = abs(_SIZE.get(source, 0) - _SIZE.get(cand, 0))
    w = (3.0, 1.5, 0.5)[gap]
    if _NAME_TO_SUPER.get(cand) == _NAME_TO_SUPER[source]:
        w *= 2.0
    return w


def _pick(rng: np.random.Generator, items: Sequence[str], weights: Optional[Sequence[float]] = None) -> str:
    if weights is None:
        return items[int(rng.integers(len(items)))]
    p = np.asarray(weights, dtype=float)
    return items[int(rng.choice(len(items), p=p / p.sum()))]


def choose_edit_target(
    edit_type: str,
    category: str,
    expression: str,
    rng: np.random.Generator,
    available_categories: Optional[Sequence[str]] = None,
    imaginative: bool = False,
    source_box: Optional[Sequence[float]] = None,
    aspect_tolerance: float = 0.0,
    size_ratio: float = 0.0,
    aspects: Optional[Dict[str, float]] = None,
) -> str:
    """Pick what the edit changes the object into / to.

    * replace: a COCO category name other than ``category`` and other than any category the
      expression names (also by synonyms and plurals: "man" names person). With
      ``available_categories`` (the classical backend needs an exemplar instance) the choice is
      restricted to those; if nothing is left, ``SampleError("no_exemplar")``. Shape-aware
      (``refcoco_edit.prompts.fit``): with ``size_ratio > 0`` only categories of a plausible
      size, with ``source_box`` (w, h) and ``aspect_tolerance > 0`` only categories whose
      typical box aspect (``aspects``, measured in the data, else the table) is within that
      factor of the box's; none left: ``SampleError("no_fitting_target")``. With
      ``imaginative=True`` an imaginative target ("a robot") is drawn with probability
      ``P_IMAGINATIVE`` (or whenever no COCO candidate is left). COCO candidates are weighted
      toward a similar size and the same supercategory, keeping every candidate possible.
    * attribute: a colour of ``vocab.COLOURS`` not mentioned in the expression or the category
      name, or (with probability ``P_MATERIAL``) a material of ``vocab.MATERIALS``.
    * remove: ``""``.
    """
    if edit_type == "remove":
        return ""
    expression = normalize_expression(expression)
    if edit_type == "replace":
        excluded = {category} | _named_categories(expression)
        pool = [n for n in COCO_CATEGORIES.values() if n not in excluded]
        if available_categories is not None:
            allowed = set(available_categories)
            pool = [n for n in pool if n in allowed]
        if not pool and available_categories is not None and not imaginative:
            raise SampleError(
                "no_exemplar",
                f"no replace target for {category!r} ({expression!r}): no other category "
                f"with an exemplar among {sorted(available_categories or [])}",
            )
        unfiltered = len(pool)
        pool = [n for n in pool if fits(category, source_box, n, aspect_tolerance, size_ratio, aspects)]
        fancy: List[str] = []
        if imaginative:
            text = f"{expression} {category}"
            fancy = [
                t for t in IMAGINATIVE_TARGETS
                if not any(_mentions(text, w) for w in t.split()[1:] if len(w) > 2)
            ]
        if fancy and (not pool or rng.random() < P_IMAGINATIVE):
            return _pick(rng, fancy)
        if not pool and unfiltered:
            raise SampleError(
                "no_fitting_target",
                f"no replace target fits {category!r} ({expression!r}, box {source_box}): none of "
                f"{unfiltered} candidates is within size ratio {size_ratio} and aspect tolerance {aspect_tolerance}",
            )
        if not pool:
            raise SampleError(
                "no_exemplar",
                f"no replace target for {category!r} ({expression!r}): no other category "
                f"with an exemplar among {sorted(available_categories or [])}",
            )
        return _pick(rng, pool, [_target_weight(category, n) for n in pool])
    if edit_type == "attribute":
        text = f"{expression} {category}"
        colours = [
            c for c in COLOURS
            if not any(_mentions(text, w, prefix=True) for w in _COLOUR_WORDS.get(c, (c,)))
        ]
        materials = [
            m for m in MATERIALS
            if not any(_mentions(text, w, prefix=True) for w in _MATERIAL_WORDS.get(m, (m,)))
        ]
        use_material = bool(materials) and (not colours or rng.random() < P_MATERIAL)
        if use_material:
            return _pick(rng, materials)
        if colours:
            return _pick(rng, colours)
        raise SampleError("prompt_error", f"every attribute value is already in {expression!r}")
    raise ValueError(f"no edit targets for edit type {edit_type!r}; expected one of {BUILD_EDIT_TYPES}")

