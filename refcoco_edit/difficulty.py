"""Difficulty attributes of a sample: what makes referring to its object hard, from what the build
already knows (issue 27). One function computes them from a sample's stored columns
(``attributes``), so the build stores exactly what a reader recomputes for an older export.

==================  ==========================================================================
attribute           definition
==================  ==========================================================================
n_distractors       same-category objects of the image that count as distractors (selection's
                    ``n_same_category``: above ``min_distractor_fraction`` of the image)
n_objects           annotated non-crowd objects of the image, the target included
                    (``1 + len(other_ann_ids)``; null when unknown, schema 1.0)
area_fraction       the target mask's area / the image's area
size_class          COCO's: ``small`` (mask area < 32^2 px), ``medium`` (< 96^2), ``large``
occlusion           ``split``: the target mask is in several 8-connected parts (an occluder cut
                    it); ``touching``: it meets another object's mask (1-px contact or
                    overlap, after a 3x3 dilation); ``none`` otherwise (null when the other
                    objects are unknown)
likeness_only       True when no same-category distractor exists: the sample was kept by rule 2
                    through visual likeness alone (another category's look-alike)
expression_kinds    the referring expression's kinds by the word rules below (several may hold;
                    ``plain`` when none does: the category alone)
expression_words    its length in words (``[a-z0-9']+`` tokens)
source_dataset      refcoco | refcoco+ | refcocog (RefCOCO+ bans location words by design)
hard                the rule ``HARD_RULE``
==================  ==========================================================================

Word rules (lower-cased tokens; each rule's exceptions are listed with it and tested):

* **location** -- left, right, middle, center/centre, top, bottom, front, back, upper, lower,
  corner, side, closest, nearest, farthest/furthest, far, near (not before an object: then
  relational), foreground, background, leftmost, rightmost, topmost. Not location: ``right`` in
  "all right", "right now", "right away"; ``left`` in "left over", "left behind", "left alone",
  "leftover"; ``back`` in "his/her/its back" (a body part); ``front`` in "in front of" (a
  relation).
* **ordinal** -- first, second, third, fourth, fifth, sixth, last, 1st, 2nd, 3rd, 4th, 5th
  (``second`` in "a second" without a following noun is still ordinal: rare, kept simple).
* **attribute** -- colours (red, blue, green, yellow, white, black, brown, orange, pink, purple,
  grey/gray, silver, gold/golden, tan, beige), patterns and materials (striped, stripes, spotted,
  plaid, checkered, wooden, metal, glass, plastic), size and shape (big, bigger, biggest, large,
  larger, largest, small, smaller, smallest, little, tall, taller, tallest, short, shorter,
  long, round), tone (dark, light, bright). Not attribute: a colour word that names the target's
  own category ("orange" for an orange); ``light`` in "traffic light"; ``glass`` in "wine glass"
  or "glasses" (objects).
* **relational** -- "next to", beside, besides, near/nearby before another word, "in front of",
  "on top of", behind followed by another word (at the end it is location: "the guy behind";
  in "left behind" it is neither),
  under, underneath, below, above, between, holding, carrying, riding, touching, against,
  "across from", facing.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["KINDS", "ATTRIBUTES", "HARD_RULE", "expression_kinds", "expression_words", "size_class",
           "touches_and_split", "attributes", "is_hard", "buckets", "BUCKETS", "counts", "SUBSET_NAMES",
           "subset_filter", "label_key"]

KINDS = ("location", "ordinal", "attribute", "relational", "plain")
ATTRIBUTES = ("n_distractors", "n_objects", "area_fraction", "size_class", "occlusion", "likeness_only",
              "expression_kinds", "expression_words", "source_dataset", "hard")
SMALL, MEDIUM = 32 * 32, 96 * 96  # COCO's size classes, by mask area in pixels

HARD_RULE = ("hard = at least 2 same-category distractors, or a small target (COCO: area < 32^2 px), or a "
             "target split in parts by an occluder, or an ordinal/relational expression with at least one "
             "same-category distractor (telling the object apart takes counting or another object)")

_TOKEN = re.compile(r"[a-z0-9']+")

_LOCATION = {"left", "right", "middle", "center", "centre", "top", "bottom", "front", "back", "upper", "lower",
             "corner", "side", "closest", "nearest", "farthest", "furthest", "far", "foreground", "background",
             "leftmost", "rightmost", "topmost", "bottommost"}
_ORDINAL = {"first", "second", "third", "fourth", "fifth", "sixth", "last", "1st", "2nd", "3rd", "4th", "5th"}
_COLOURS = {"red", "blue", "green", "yellow", "white", "black", "brown", "orange", "pink", "purple", "grey", "gray",
            "silver", "gold", "golden", "tan", "beige"}
_ATTRIBUTE = _COLOURS | {"striped", "stripes", "spotted", "plaid", "checkered", "wooden", "metal", "glass", "plastic",
                         "big", "bigger", "biggest", "large", "larger", "largest", "small", "smaller", "smallest",
                         "little", "tall", "taller", "tallest", "short", "shorter", "long", "round", "dark", "light",
                         "bright"}
_RELATIONAL = {"beside", "besides", "under", "underneath", "below", "above", "between", "holding", "carrying",
               "riding", "touching", "against", "facing"}
_POSSESSIVE = {"his", "her", "its", "their", "my", "your"}


def _tokens(text: str) -> List[str]:
    return _TOKEN.findall((text or "").lower())


def expression_words(text: str) -> int:
    """The expression's length in words (``[a-z0-9']+`` tokens of the lower-cased text)."""
    return len(_tokens(text))


def expression_kinds(text: str, category: str = "") -> List[str]:
    """The kinds of a referring expression by the module's word rules, in ``KINDS`` order;
    ``["plain"]`` when no rule matches."""
    t = _tokens(text)
    cat = set(_tokens(category))
    found = set()
    n = len(t)
    for i, w in enumerate(t):
        prev = t[i - 1] if i > 0 else ""
        nxt = t[i + 1] if i + 1 < n else ""
        # relations first: they claim words ("front" of "in front of", "near" before an object)
        if w == "next" and nxt == "to" or w == "across" and nxt == "from":
            found.add("relational")
        elif w == "front" and prev == "in" and nxt == "of":
            found.add("relational")
        elif w == "top" and prev == "on" and nxt == "of":
            found.add("relational")
        elif w == "behind" and prev == "left":
            continue  # "left behind": neither a place nor a relation
        elif w in ("near", "nearby", "behind"):
            found.add("relational" if nxt and nxt not in ("and", "or") else "location")
        elif w in _RELATIONAL:
            found.add("relational")
        elif w in _LOCATION:
            if w == "right" and (prev == "all" or nxt in ("now", "away")):
                continue
            if w == "left" and nxt in ("over", "behind", "alone"):
                continue
            if w == "back" and prev in _POSSESSIVE:
                continue
            found.add("location")
        if w in _ORDINAL:
            found.add("ordinal")
        if w in _ATTRIBUTE:
            if w in cat:
                continue  # "orange" for an orange: the category's own name
            if w == "light" and prev == "traffic":
                continue
            if w == "glass" and (prev == "wine" or "glass" in cat):
                continue
            found.add("attribute")
    kinds = [k for k in KINDS if k in found]
    return kinds or ["plain"]


def size_class(area_px: float) -> str:
    """COCO's size class of a mask area in pixels: small (< 32^2), medium (< 96^2), large."""
    return "small" if area_px < SMALL else "medium" if area_px < MEDIUM else "large"


def touches_and_split(mask: np.ndarray, box: Sequence[float], near: Iterable[np.ndarray]) -> Tuple[bool, bool]:
    """(touches, split) of a bool mask with COCO ``box`` [x, y, w, h] against the full-size masks
    ``near`` of the objects whose boxes meet it: whether it meets one of them (1-px contact or
    overlap, after a 3x3 dilation) and whether it is in several 8-connected parts."""
    import cv2

    x, y, w, h = box
    x0, y0 = max(0, int(x) - 2), max(0, int(y) - 2)
    x1, y1 = min(mask.shape[1], int(np.ceil(x + w)) + 2), min(mask.shape[0], int(np.ceil(y + h)) + 2)
    crop = mask[y0:y1, x0:x1].astype(np.uint8)
    grown = cv2.dilate(crop, np.ones((3, 3), np.uint8)) > 0
    touches = any(bool((grown & m[y0:y1, x0:x1]).any()) for m in near)
    n_parts = cv2.connectedComponents(crop, connectivity=8)[0] - 1
    return touches, n_parts >= 2


def _boxes_meet(a: Sequence[float], b: Sequence[float]) -> bool:
    return b[0] <= a[0] + a[2] + 1 and a[0] <= b[0] + b[2] + 1 and b[1] <= a[1] + a[3] + 1 and a[1] <= b[1] + b[3] + 1


def _occlusion(row: Dict[str, Any]) -> Optional[str]:
    from . import rle as rle_mod

    me = row.get("source_mask")
    others = row.get("other_masks")
    if not me or others is None:
        return None
    box = rle_mod.to_bbox(me)
    mask = rle_mod.decode(me).astype(bool)
    near = [rle_mod.decode(o).astype(bool) for o in others if o and _boxes_meet(box, rle_mod.to_bbox(o))]
    touches, split = touches_and_split(mask, box, near)
    return "split" if split else "touching" if touches else "none"


def is_hard(a: Dict[str, Any]) -> Optional[bool]:
    """``HARD_RULE`` over an attribute dict (None when an attribute it needs is unknown)."""
    nd, size, occ, kinds = a.get("n_distractors"), a.get("size_class"), a.get("occlusion"), a.get("expression_kinds")
    if nd is None or size is None or kinds is None:
        return None
    if nd >= 2 or size == "small" or occ == "split":
        return True
    if nd >= 1 and ("ordinal" in kinds or "relational" in kinds):
        return True
    return False if occ is not None else None


def attributes(row: Dict[str, Any], occlusion: Optional[str] = None) -> Dict[str, Any]:
    """The difficulty attributes of one sample row (the data model's columns: ``source_mask``,
    ``other_ann_ids``/``other_masks``, ``selection``, ``distractor_categories``, ``category``,
    ``referring_expression``, ``dataset``); an attribute whose inputs are missing is None.
    ``occlusion``: the value when the caller has it already (the selection, from the masks it
    decoded: the same ``touches_and_split`` on the same objects), else computed from the row."""
    from . import rle as rle_mod

    sel = row.get("selection") or {}
    cat = row.get("category") or ""
    nd = sel.get("n_same_category")
    if nd is None and row.get("distractor_categories") is not None:
        nd = sum(1 for c in row["distractor_categories"] if c == cat)
    others = row.get("other_ann_ids")
    me = row.get("source_mask")
    area = float(rle_mod.area(me)) if me else None
    hw = (me or {}).get("size")
    frac = sel.get("area_fraction")
    if frac is None and area is not None and hw:
        frac = area / float(int(hw[0]) * int(hw[1]))
    text = row.get("referring_expression")
    a: Dict[str, Any] = {
        "n_distractors": None if nd is None else int(nd),
        "n_objects": None if others is None else 1 + len(others),
        "area_fraction": None if frac is None else float(frac),
        "size_class": None if area is None else size_class(area),
        "occlusion": occlusion if occlusion is not None else _occlusion(row),
        "likeness_only": None if nd is None else bool(nd == 0),
        "expression_kinds": None if text is None else expression_kinds(text, cat),
        "expression_words": None if text is None else expression_words(text),
        "source_dataset": row.get("dataset"),
    }
    a["hard"] = is_hard(a)
    return a


# ----------------------------------------------------------------------------------------------
# buckets: what breakdowns group by
# ----------------------------------------------------------------------------------------------

def _count_bucket(v: Optional[int], edges: Sequence[int]) -> Optional[str]:
    """'0', '1', ..., 'k+' style labels: exact values below the last edge, then 'last+'."""
    if v is None:
        return None
    for lo, hi in zip(edges, list(edges[1:]) + [None]):
        if hi is None:
            return f"{lo}+"
        if lo <= v < hi:
            return str(lo) if hi == lo + 1 else f"{lo}-{hi - 1}"
    return None


def _area_bucket(f: Optional[float]) -> Optional[str]:
    if f is None:
        return None
    return "<1%" if f < 0.01 else "1-5%" if f < 0.05 else "5-20%" if f < 0.2 else ">=20%"


def _yes(v: Optional[bool]) -> Optional[str]:
    return None if v is None else "yes" if v else "no"


BUCKETS: Dict[str, str] = {
    "attr_distractors": "same-category distractors: 0, 1, 2, 3+",
    "attr_objects": "annotated objects in the image: 1-2, 3-4, 5-8, 9+",
    "attr_size": "COCO size class of the target: small, medium, large",
    "attr_area": "target area / image: <1%, 1-5%, 5-20%, >=20%",
    "attr_occlusion": "none, touching, split",
    "attr_likeness_only": "kept through visual likeness alone: yes, no",
    **{f"attr_expr_{k}": f"the expression is {k}: yes, no" for k in KINDS},
    "attr_expr_words": "expression length in words: 1-2, 3-4, 5-8, 9+",
    "attr_source_dataset": "refcoco, refcoco+, refcocog",
    "attr_hard": f"yes, no ({HARD_RULE})",
}
"""the bucket columns (``attr_*``) a score run adds per sample, and what their labels are"""


def buckets(a: Optional[Dict[str, Any]]) -> Dict[str, Optional[str]]:
    """The bucket label of each ``BUCKETS`` column for an attribute dict (None: unknown)."""
    a = a or {}
    kinds = a.get("expression_kinds")
    out: Dict[str, Optional[str]] = {
        "attr_distractors": _count_bucket(a.get("n_distractors"), (0, 1, 2, 3)),
        "attr_objects": _count_bucket(a.get("n_objects"), (1, 3, 5, 9)),
        "attr_size": a.get("size_class"),
        "attr_area": _area_bucket(a.get("area_fraction")),
        "attr_occlusion": a.get("occlusion"),
        "attr_likeness_only": _yes(a.get("likeness_only")),
    }
    for k in KINDS:
        out[f"attr_expr_{k}"] = None if kinds is None else _yes(k in kinds)
    out["attr_expr_words"] = _count_bucket(a.get("expression_words"), (1, 3, 5, 9))
    out["attr_source_dataset"] = a.get("source_dataset")
    out["attr_hard"] = _yes(a.get("hard"))
    return out


_KNOWN_ORDER = ("small", "medium", "large", "none", "touching", "split", "no", "yes", "refcoco", "refcoco+",
                "refcocog")
_NUMBER = re.compile(r"^(<=|>=|<|>)?\s*(\d+(?:\.\d+)?)")


def label_key(label: Optional[str]) -> Tuple[int, float, str]:
    """A sort key that puts bucket labels in their natural order: numbers by value ("<1%" before
    "1-5%", ">=20%" after "5-20%", "3+" after "2"), then the known words in their order (small,
    medium, large; none, touching, split; no, yes; refcoco, refcoco+, refcocog), then other words
    by name, unknown (None or "unknown") last."""
    if label is None or label == "unknown":
        return (3, 0.0, "")
    m = _NUMBER.match(label)
    if m:
        x = float(m.group(2)) + {"<": -0.5, "<=": -0.25, ">": 0.5, ">=": 0.25}.get(m.group(1) or "", 0.0)
        return (0, x, label)
    if label in _KNOWN_ORDER:
        return (1, float(_KNOWN_ORDER.index(label)), label)
    return (2, 0.0, label)


def counts(rows: Iterable[Dict[str, Any]]) -> Dict[str, Dict[str, int]]:
    """Per bucket column, how many rows fall in each label (rows' ``difficulty`` dicts; unknown
    values counted as ``unknown``): the build report's and the dataset card's table."""
    out: Dict[str, Dict[str, int]] = {k: {} for k in BUCKETS}
    for r in rows:
        for k, v in buckets(r.get("difficulty")).items():
            label = v if v is not None else "unknown"
            out[k][label] = out[k].get(label, 0) + 1
    return {k: dict(sorted(v.items(), key=lambda kv: label_key(kv[0]))) for k, v in out.items() if v}


# ----------------------------------------------------------------------------------------------
# --subset EXPR: a filter over the attributes
# ----------------------------------------------------------------------------------------------

SUBSET_NAMES = tuple(a for a in ATTRIBUTES) + ("edit_type", "category", "split")
"""the names a ``--subset`` expression may use: the attributes and three sample fields"""


def subset_filter(expr: str) -> Callable[[Dict[str, Any]], bool]:
    """A predicate over ``{attribute or field: value}`` from a ``--subset`` expression: Python
    syntax limited to names of ``SUBSET_NAMES``, constants (strings, numbers, True/False, lists
    or tuples of them), comparisons (``== != < <= > >= in not in``), ``and``/``or``/``not`` and
    parentheses, e.g. ``n_distractors >= 2 and size_class == 'small'`` or ``'location' in
    expression_kinds``. Nothing is executed: the expression is walked node by node. A sample
    whose value is unknown (None) for a compared name does not match. Raises ValueError with the
    reason on anything else."""
    import ast

    text = (expr or "").strip()
    if not text:
        raise ValueError("--subset: empty expression")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise ValueError(f"--subset {expr!r}: not an expression ({e.msg})") from None

    ops = {ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b, ast.Lt: lambda a, b: a < b,
           ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b, ast.GtE: lambda a, b: a >= b,
           ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}

    def check(node: Any) -> None:
        if isinstance(node, ast.Expression):
            return check(node.body)
        if isinstance(node, ast.BoolOp):
            return [check(v) for v in node.values] and None
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return check(node.operand)
        if isinstance(node, ast.Compare):
            for op in node.ops:
                if type(op) not in ops:
                    raise ValueError(f"--subset {expr!r}: operator {type(op).__name__} is not allowed")
            return [check(v) for v in [node.left, *node.comparators]] and None
        if isinstance(node, ast.Name):
            if node.id not in SUBSET_NAMES:
                raise ValueError(f"--subset {expr!r}: unknown name {node.id!r}; known: {', '.join(SUBSET_NAMES)}")
            return None
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, bool, type(None))):
            return None
        if isinstance(node, (ast.List, ast.Tuple)):
            return [check(v) for v in node.elts] and None
        raise ValueError(f"--subset {expr!r}: {type(node).__name__} is not allowed (names, constants, comparisons, "
                         "and/or/not)")

    check(tree)

    def value(node: Any, env: Dict[str, Any]) -> Any:
        """Kleene's three-valued logic: None is unknown (a sample's missing attribute); a
        comparison with an unknown side is unknown, ``not`` keeps it unknown, ``and`` is False
        when a side is False, ``or`` True when a side is True."""
        if isinstance(node, ast.BoolOp):
            vals = [value(v, env) for v in node.values]
            if isinstance(node.op, ast.And):
                return False if any(v is False for v in vals) else None if any(v is None for v in vals) else True
            return True if any(v is True for v in vals) else None if any(v is None for v in vals) else False
        if isinstance(node, ast.UnaryOp):
            v = value(node.operand, env)
            return None if v is None else not v
        if isinstance(node, ast.Compare):
            left = value(node.left, env)
            for op, right_node in zip(node.ops, node.comparators):
                right = value(right_node, env)
                if left is None or right is None:
                    return None
                try:
                    if not ops[type(op)](left, right):
                        return False
                except TypeError:  # e.g. 'small' < 2: no order between them
                    raise ValueError(f"--subset {expr!r}: cannot compare {left!r} with {right!r}") from None
                left = right
            return True
        if isinstance(node, ast.Name):
            return env.get(node.id)
        if isinstance(node, ast.Constant):
            return node.value
        return [value(v, env) for v in node.elts]

    def predicate(env: Dict[str, Any]) -> bool:
        v = value(tree.body, env)
        return v is not None and bool(v)

    return predicate
