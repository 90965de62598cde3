"""The referring-expression grammar: identifying RefCOCO, RefCOCO+ and RefCOCOg expressions of an object."""
from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .scene import Obj, Scene, pick

_NOUNS = {"cup": ("cup", "mug"), "bottle": ("bottle",), "sports ball": ("ball",), "apple": ("apple",),
          "orange": ("orange",), "bowl": ("bowl",), "vase": ("vase",), "book": ("book",), "donut": ("donut",),
          "teddy bear": ("teddy bear", "bear", "teddy"), "potted plant": ("plant", "potted plant")}
_LONG = {"cup": ("cup", "mug", "coffee mug"), "bottle": ("bottle", "glass bottle"),
         "sports ball": ("ball", "rubber ball"), "apple": ("apple",), "orange": ("orange",),
         "bowl": ("bowl", "ceramic bowl"), "vase": ("vase", "flower vase"), "book": ("book", "hardcover book"),
         "donut": ("donut", "frosted donut"), "teddy bear": ("teddy bear", "stuffed bear"),
         "potted plant": ("potted plant",)}
_VERBS = {"cup": ("sitting", "standing"), "bottle": ("standing",), "sports ball": ("lying", "resting"),
          "apple": ("sitting", "lying"), "orange": ("sitting", "lying"), "bowl": ("sitting",),
          "vase": ("standing",), "book": ("standing", "standing upright"), "donut": ("lying", "sitting"),
          "teddy bear": ("sitting",), "potted plant": ("standing",)}
# pattern -> (adjective form, post-modifier form); None where the form would sound wrong
_PATTERN_WORDS = {"striped": ("striped", "with a stripe"), "label": ("labeled", "with a label"),
                  "sprinkles": ("sprinkled", "with sprinkles")}
_PLAIN_WORDS = {"bottle": (None, "without a label"), "donut": ("plain", "without sprinkles"),
                "cup": ("plain", None), "sports ball": ("plain", None), "vase": ("plain", None)}
_SURFACES = {"wood": "wooden table", "tiles": "tiled counter", "cloth": "table"}
_NUM = {2: "two", 3: "three"}
# words that give a location: never in RefCOCO+ expressions
LOCATION_WORDS = frozenset(
    "left right middle center centre top bottom front back behind near far closest farthest furthest "
    "leftmost rightmost nearest side corner next beside between above below first second third last "
    "camera".split())


def _pos_word(o: Obj, S: List[Obj]) -> Optional[str]:
    """left / middle / right of o among S by x-order (S's x-ranges are disjoint by construction)."""
    if len(S) < 2:
        return None
    xs = sorted(S, key=lambda a: a.cx)
    k = xs.index(o)
    if k == 0:
        return "left"
    if k == len(xs) - 1:
        return "right"
    return "middle" if len(xs) == 3 else None


def _depth_word(o: Obj, S: List[Obj], H: int) -> Optional[str]:
    others = [a for a in S if a is not o]
    if not others:
        return None
    if all(o.base - a.base > 0.08 * H for a in others):
        return "front"
    if all(a.base - o.base > 0.08 * H for a in others):
        return "back"
    return None


def _size_word(o: Obj, S: List[Obj]) -> Optional[str]:
    """bigger/smaller (2 objects) or biggest/smallest (3+), only when clearly so (full and visible)."""
    others = [a for a in S if a is not o]
    if not others:
        return None
    two = len(S) == 2
    if all(o.full_area > 1.4 * a.full_area and o.vis_area > 1.3 * a.vis_area for a in others):
        return "bigger" if two else "biggest"
    if all(a.full_area > 1.4 * o.full_area and a.vis_area > 1.3 * o.vis_area for a in others):
        return "smaller" if two else "smallest"
    return None


def _plural(noun: str) -> str:
    return noun[:-1] + "ies" if noun.endswith("y") else noun + "s"


def _article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def _pattern_forms(o: Obj) -> Tuple[Optional[str], Optional[str]]:
    if o.pattern in _PATTERN_WORDS:
        return _PATTERN_WORDS[o.pattern]
    return _PLAIN_WORDS.get(o.cat, (None, None))


class Phrases:
    """Identifying descriptions of one object among its look-alikes, by kind."""

    def __init__(self, o: Obj, group: List[Obj], H: int):
        self.o, self.G, self.H = o, group, H
        same_col = [a for a in group if a.colour == o.colour]
        same_pat = [a for a in group if a.pattern == o.pattern]
        self.colour_unique = o.colour is not None and len(same_col) == 1
        self.same_col = same_col if o.colour is not None else []
        self.pattern_unique = len(same_pat) == 1 and _pattern_forms(o) != (None, None)
        self.col_pat_unique = o.colour is not None and sum(
            1 for a in group if a.colour == o.colour and a.pattern == o.pattern) == 1 and \
            _pattern_forms(o) != (None, None)
        self.pos = _pos_word(o, group)
        self.depth = _depth_word(o, group, H)
        self.size = _size_word(o, group)
        self.pos_in_col = _pos_word(o, self.same_col) if len(self.same_col) >= 2 else None
        self.size_in_col = _size_word(o, self.same_col) if len(self.same_col) >= 2 else None


def _noun(o: Obj, rng: np.random.Generator) -> str:
    return pick(rng, _NOUNS[o.cat])


def refcoco_candidates(ph: Phrases, rng: np.random.Generator) -> List[List[str]]:
    """Short RefCOCO-style expressions, in pools (spatial, colour, other)."""
    o, c = ph.o, ph.o.colour
    N = lambda: _noun(o, rng)  # noqa: E731
    spatial, colour, other = [], [], []
    three = len(ph.G) == 3
    if ph.pos == "middle":
        spatial += [f"middle {N()}", f"{N()} in the middle", f"the middle {N()}", f"center {N()}"]
    elif ph.pos:
        p = ph.pos
        spatial += [f"{p} {N()}", f"{N()} on the {p}", f"the {N()} on the {p}", f"{N()} on {p}"]
        if three:
            spatial += [f"{p}most {N()}", f"far {p} {N()}"]
    if ph.depth == "front":
        spatial += [f"front {N()}", f"{N()} in front", f"closest {N()}"]
    elif ph.depth == "back":
        spatial += [f"back {N()}", f"{N()} in the back", f"farthest {N()}"]
    if ph.colour_unique:
        colour += [f"{c} {N()}", f"the {c} {N()}"]
        if ph.pos in ("left", "right"):
            colour += [f"{c} {N()} on the {ph.pos}", f"the {c} {N()} on the {ph.pos}"]
    if ph.pos_in_col == "middle":
        colour += [f"middle {c} {N()}"]
    elif ph.pos_in_col:
        colour += [f"{c} {N()} on the {ph.pos_in_col}", f"{ph.pos_in_col} {c} {N()}"]
    if ph.size_in_col:
        colour += [f"{ph.size_in_col} {c} {N()}", f"the {ph.size_in_col} {c} {N()}"]
    if ph.size:
        other += [f"{ph.size} {N()}", f"the {ph.size} {N()}"]
    if len(ph.G) == 1:  # the only one of its category: the bare noun identifies it
        other += [N(), f"the {N()}"]
    adj, post = _pattern_forms(o)
    if ph.pattern_unique:
        if adj:
            other.append(f"{adj} {N()}")
        if post:
            other.append(f"{N()} {post}")
    return [spatial, colour, other]


def refcoco_plus_candidates(ph: Phrases, rng: np.random.Generator) -> List[List[str]]:
    """Appearance-only expressions (no location words), in pools (colour, size, pattern)."""
    o, c = ph.o, ph.o.colour
    N = lambda: _noun(o, rng)  # noqa: E731
    colour, size, pattern = [], [], []
    adj, post = _pattern_forms(o)
    if ph.colour_unique:
        colour += [f"{c} {N()}", f"the {c} {N()}", f"{c} colored {N()}"]
        if ph.size:
            colour.append(f"the {ph.size} {c} {N()}")
    if ph.size:
        big = "big" if ph.size.startswith("big") else "small"
        size += [f"{ph.size} {N()}", f"the {ph.size} {N()}", f"{big} {N()}"]
    if ph.size_in_col:
        size += [f"{ph.size_in_col} {c} {N()}", f"the {ph.size_in_col} {c} {N()}"]
    if len(ph.G) == 1:
        size += [N(), f"the {N()}"]
    if ph.pattern_unique:
        if adj:
            pattern.append(f"{adj} {N()}")
        if post:
            pattern.append(f"{N()} {post}")
    if ph.col_pat_unique and (adj or post):
        pattern.append(f"{c} {adj} {N()}" if adj else f"{c} {N()} {post}")
    return [colour, size, pattern]


def _landmark(L: Obj, objs: List[Obj], rng: np.random.Generator) -> Optional[str]:
    """A description that identifies another object L of the image, or None."""
    same = [a for a in objs if a.cat == L.cat]
    n = _noun(L, rng)
    if len(same) == 1:
        return f"the {L.colour} {n}" if L.colour and L.cat not in ("potted plant",) and rng.random() < 0.6 else f"the {n}"
    if L.colour and sum(1 for a in same if a.colour == L.colour) == 1:
        return f"the {L.colour} {n}"
    return None


def _relations(o: Obj, L: Obj, H: int) -> List[str]:
    """True spatial relations of o to a landmark L (left/right of, next to, in front of, behind)."""
    near = abs(o.base - L.base) < 0.1 * H
    if o.x_hi < L.x_lo:
        return ["to the left of"] + (["next to"] if near and L.x_lo - o.x_hi < 0.4 * min(o.w, L.w) else [])
    if o.x_lo > L.x_hi:
        return ["to the right of"] + (["next to"] if near and o.x_lo - L.x_hi < 0.4 * min(o.w, L.w) else [])
    if o.base > L.base + 0.05 * H:
        return ["in front of"]
    if o.base < L.base - 0.05 * H:
        return ["behind"]
    return []


def refcocog_candidates(ph: Phrases, scene: Scene, rng: np.random.Generator) -> List[List[str]]:
    """Longer sentences: an identifying noun phrase + what it does + where, relative to a landmark."""
    o, c, H = ph.o, ph.o.colour, scene.height
    L_ = lambda: pick(rng, _LONG[o.cat])  # noqa: E731
    N = lambda: _noun(o, rng)  # noqa: E731
    plural = lambda: _plural(_noun(o, rng))  # noqa: E731
    k = _NUM.get(len(ph.G), str(len(ph.G)))
    adj, post = _pattern_forms(o)
    app, loc = [], []
    if ph.colour_unique:
        app += [_article(f"{c} {L_()}"), f"the {c} {L_()}"]
    if ph.col_pat_unique and adj:
        app.append(_article(f"{c} {adj} {N()}"))
    if ph.pattern_unique and post:
        app.append(_article(f"{N()} {post}"))
    if ph.size:
        app.append(f"the {ph.size} of the {k} {plural()}")
    if ph.size_in_col:
        app.append(f"the {ph.size_in_col} {c} {N()}")
    if len(ph.G) == 1:
        app.append(f"the {L_()}")
    if ph.pos in ("left", "right"):
        p = ph.pos
        loc += [f"the {N()} on the {p}", f"the {N()} furthest to the {p}", f"the {p}most of the {k} {plural()}"]
    elif ph.pos == "middle":
        loc += [f"the {N()} in the middle", f"the middle one of the three {plural()}"]
    if ph.depth == "front":
        loc.append(f"the {N()} closest to the camera")
    elif ph.depth == "back":
        loc.append(f"the {N()} furthest back")
    if ph.pos_in_col in ("left", "right"):
        loc.append(f"the {c} {N()} on the {ph.pos_in_col}")
    # landmarks: the nearest other objects that can be named unambiguously
    others = sorted((a for a in scene.objs if a is not o),
                    key=lambda a: (abs(a.cx - o.cx) + abs(a.base - o.base), a.cx))
    rels = []
    for L in others:
        desc = _landmark(L, scene.objs, rng)
        rel = _relations(o, L, H)
        if desc and rel:
            rels.append(f"{pick(rng, rel)} {desc}")
        if len(rels) == 2:
            break
    surface = _SURFACES[scene.surface]
    verb = pick(rng, _VERBS[o.cat])
    out_app, out_loc = [], []
    for pool, out, located in ((app, out_app, False), (loc, out_loc, True)):
        for np_ in pool:
            tails = [f" {verb} on the {surface}"] + ([] if located else [f" on the {surface}"])
            for r in rels:
                tails += [f" {verb} {r}", f" that is {r}"] + ([] if located else [f" {r}"])
            out.append(np_ + pick(rng, tails))
    return [out_app, out_loc]


def choose(pools: List[List[str]], rng: np.random.Generator, k_max: int) -> List[str]:
    """1..k_max distinct expressions, round-robin over the non-empty pools in a random order."""
    pools = [list(p) for p in pools if p]
    if not pools:
        return []
    for p in pools:
        perm = rng.permutation(len(p))
        p[:] = [p[int(j)] for j in perm]
    order = [pools[int(j)] for j in rng.permutation(len(pools))]
    k = int(rng.integers(1, k_max + 1))
    out: List[str] = []
    i = 0
    while len(out) < k and any(order):
        p = order[i % len(order)]
        if p:
            s = p.pop(0)
            if s not in out:
                out.append(s)
        i += 1
    return out


def sentence(raw: str, sent_id: int) -> Dict[str, Any]:
    """A refer sentence record: {tokens, raw, sent_id, sent} (lower-case alphanumeric tokens)."""
    tokens = re.findall(r"[a-z0-9]+", raw.lower())
    return {"tokens": tokens, "raw": raw, "sent_id": int(sent_id), "sent": " ".join(tokens)}


