"""Scene planning: which objects a scene holds (look-alike groups, colours, patterns) and where they stand."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

# Drawable categories: (height as a fraction of min(W, H), width / height).
_SIZE: Dict[str, Tuple[float, float]] = {
    "cup": (0.21, 0.95), "bottle": (0.37, 0.34), "sports ball": (0.20, 1.0), "apple": (0.18, 0.95),
    "orange": (0.17, 1.05), "bowl": (0.145, 2.2), "vase": (0.32, 0.44), "book": (0.28, 0.78),
    "donut": (0.15, 1.67), "teddy bear": (0.34, 0.8), "potted plant": (0.40, 0.62),
}
_REF_CATS = ("cup", "bottle", "sports ball", "apple", "orange", "bowl", "vase", "book", "donut", "teddy bear")
_CAT_COLOURS: Dict[str, Tuple[Optional[str], ...]] = {
    "cup": ("red", "blue", "white", "yellow", "green", "black", "pink"),
    "bottle": ("green", "brown", "blue", "white"),
    "sports ball": ("red", "blue", "yellow", "orange", "white", "green", "purple"),
    "apple": ("red", "green", "yellow"),
    "orange": (None,),  # always orange: colour never tells two oranges apart
    "bowl": ("white", "blue", "red", "yellow", "green", "gray"),
    "vase": ("blue", "white", "red", "purple", "green", "pink", "yellow"),
    "book": ("red", "blue", "green", "yellow", "black", "purple", "orange"),
    "donut": ("pink", "brown", "white"),
    "teddy bear": ("brown", "white", "pink", "gray"),
}
_PATTERNS: Dict[str, Tuple[str, ...]] = {
    "cup": ("plain", "striped"), "sports ball": ("plain", "striped"), "bottle": ("plain", "label"),
    "donut": ("plain", "sprinkles"), "vase": ("plain", "striped"),
}
_WIDE_BACK = ("bowl", "donut")      # occluded objects of the forced occlusions
_TALL_FRONT = ("bottle", "vase")   # their occluders: they split the back object in two

PAD = 3  # padding of an object's render crop (px)

# Hard cases of rule 1: every CLOSEUP_EVERY-th image (from CLOSEUP_AT) is a close-up of one big
# subject with two small look-alikes in front of it; every other one of those a "huge" subject
# (a book filling most of a square frame, over the default max_area_fraction).
CLOSEUP_EVERY, CLOSEUP_AT = 8, 3
_CLOSEUP_SUBJECTS = ("teddy bear", "vase", "bottle", "bowl", "cup")
_CLOSEUP_SMALL = ("apple", "orange", "sports ball", "donut")
SMALL_AREA_FRACTION = 0.0075  # of the image: above min_area_fraction (0.005), not "sizeable" (0.01)


@dataclass
class Obj:
    """One drawn object: its attributes (for the expressions) and its placement/render state."""

    cat: str
    colour: Optional[str]
    pattern: str
    jitter: float
    group: int = -1            # index of its look-alike group, -1 for single objects
    cx: float = 0.0
    base: float = 0.0          # y of the contact point with the table
    w: int = 0
    h: int = 0
    placed: bool = False
    x0: int = 0                # crop origin in the image
    y0: int = 0
    mask: Optional[np.ndarray] = None    # crop bool mask (full object)
    alpha: Optional[np.ndarray] = None   # crop float alpha (antialiased)
    rgb: Optional[np.ndarray] = None     # crop float colour
    visible: Optional[np.ndarray] = None  # image bool mask of the visible part
    full_area: float = 0.0
    vis_area: float = 0.0
    ann: Optional[Dict[str, Any]] = None
    albedo: Optional[np.ndarray] = None  # an attribute plate's base albedo (float RGB) instead of ``colour``'s

    @property
    def x_lo(self) -> float:
        return self.cx - self.w / 2

    @property
    def x_hi(self) -> float:
        return self.cx + self.w / 2


@dataclass
class Scene:
    """One planned image: its size, horizon (top of the table), surface, light side and objects."""

    index: int
    width: int
    height: int
    horizon: float
    surface: str               # wood | tiles | cloth
    side: int                  # -1: light from the left, +1: from the right
    objs: List[Obj] = field(default_factory=list)
    shelf: bool = False
    occlusion_pair: Optional[Tuple[Obj, Obj]] = None
    closeup: str = ""          # "" | "subject" | "huge": a hard case of rule 1 (see plan_closeup)


def pick(rng: np.random.Generator, seq: Sequence[Any]) -> Any:
    """One element of ``seq``, uniformly (one ``rng.integers`` draw)."""
    return seq[int(rng.integers(len(seq)))]


def plan(seed: int, index: int) -> Scene:
    """Choose the image size, look-alike groups, colours, patterns and positions of one scene."""
    if index % CLOSEUP_EVERY == CLOSEUP_AT:
        return plan_closeup(seed, index)
    rng = np.random.default_rng([seed, index, 0])
    W, H = int(rng.integers(320, 641)), int(rng.integers(320, 641))
    scene = Scene(index, W, H, horizon=float(H * rng.uniform(0.30, 0.46)),
                   surface=pick(rng, ("wood", "wood", "wood", "tiles", "cloth")),
                   side=int(pick(rng, (-1, 1))))
    scene.shelf = index % 16 == 5              # a crowd annotation (a row of books on a shelf)
    occlude = index % 6 == 2                   # forced partial occlusion -> multi-part polygon
    plant = index % 4 == 1                     # a non-ref background object
    pool = [c for c in _REF_CATS if not (scene.shelf and c == "book")]
    n_obj = int(rng.integers(3, 7))

    groups: List[Tuple[str, int]] = []
    if occlude:
        a = pick(rng, _WIDE_BACK)
        groups.append((a, 3 if rng.random() < 0.3 else 2))
        front = pick(rng, _TALL_FRONT)
        groups.append((front, 2 if rng.random() < 0.5 else 1))
    else:
        a = pick(rng, pool)
        groups.append((a, 3 if rng.random() < 0.35 else 2))
        rest = n_obj - groups[0][1]
        if rest >= 2 and rng.random() < 0.55:
            b = pick(rng, [c for c in pool if c != a])
            groups.append((b, 3 if rest >= 3 and rng.random() < 0.3 else 2))
    used = {c for c, _ in groups}
    n_rest = max(0, n_obj - sum(k for _, k in groups))
    singles = [c for c in pool if c not in used]
    order = rng.permutation(len(singles))
    groups += [(singles[int(j)], 1) for j in order[:n_rest]]

    objs: List[Obj] = []
    for gi, (cat, k) in enumerate(groups):
        members = _group_members(rng, cat, k, gi if k >= 2 else -1)
        objs.extend(members)
    if plant:
        objs.append(Obj("potted plant", "green", "plain", float(rng.uniform(0.9, 1.1))))
    if occlude:
        back = next(o for o in objs if o.cat in _WIDE_BACK)
        front = next(o for o in objs if o.cat in _TALL_FRONT)
        back.jitter = max(back.jitter, 1.1)
        scene.occlusion_pair = (back, front)
    pair = scene.occlusion_pair
    for attempt in range(4):   # crowded small images: retry with smaller objects
        for o in objs:
            o.placed = False
        scene.objs, scene.occlusion_pair = list(objs), pair
        groups_before = [o.group for o in objs]
        _place(scene, rng, 0.85 ** attempt)
        if len(scene.objs) >= 3 and any(o.group >= 0 for o in scene.objs):
            break
        for o, g in zip(objs, groups_before):
            o.group = g
    return scene


def _group_members(rng: np.random.Generator, cat: str, k: int, group: int) -> List[Obj]:
    """k objects of one category: same colour, all different, or mixed; sometimes one bigger."""
    choices = _CAT_COLOURS[cat]
    if len(choices) == 1 or k == 1:
        cols = [pick(rng, choices)] * k
    else:
        mode = pick(rng, ("same", "distinct", "distinct", "mixed"))
        if mode == "same" or (mode == "mixed" and k == 2):
            cols = [pick(rng, choices)] * k
        elif mode == "distinct":
            idx = rng.permutation(len(choices))[:k]
            cols = [choices[int(j)] for j in idx]
        else:
            idx = rng.permutation(len(choices))[:2]
            cols = [choices[int(idx[0])], choices[int(idx[0])], choices[int(idx[1])]]
            perm = rng.permutation(3)
            cols = [cols[int(j)] for j in perm]
    pats = _PATTERNS.get(cat, ("plain",))
    out = []
    for c in cols:
        pat = pats[1] if len(pats) > 1 and rng.random() < 0.35 else "plain"
        out.append(Obj(cat, c, pat, float(rng.uniform(0.9, 1.08)), group=group))
    if k >= 2 and rng.random() < 0.45:
        out[int(rng.integers(k))].jitter *= 1.45
    return out


def _place(scene: Scene, rng: np.random.Generator, scale: float = 1.0) -> None:
    """Rejection-sample positions: inside the table, boxes (almost) disjoint, look-alikes apart in x."""
    W, H, hz = scene.width, scene.height, scene.horizon
    u = min(W, H)
    bmin, bmax = hz + 0.2 * (H - hz), H - PAD - 1
    pair_back, pair_front = scene.occlusion_pair or (None, None)
    order = list(scene.objs)
    if pair_back is not None:
        order.remove(pair_back)
        order.remove(pair_front)
        order = [pair_back, pair_front] + order
    placed: List[Obj] = []
    for o in order:
        hf, aspect = _SIZE[o.cat]
        for attempt in range(90):
            shrink = 0.88 ** (attempt // 15)
            paired = o is pair_front and pair_back is not None and pair_back.placed and attempt < 45
            if paired:
                base = pair_back.base + rng.uniform(0.04, 0.09) * H
            else:
                base = rng.uniform(bmin, bmax)
            s = 0.8 + 0.38 * (base - hz) / (H - hz)
            h = int(round(hf * u * s * o.jitter * shrink * scale))
            w = int(round(h * aspect))
            if paired:
                cx = pair_back.cx + rng.uniform(-0.12, 0.12) * pair_back.w
                if w > 0.55 * pair_back.w:
                    continue
            else:
                lo, hi = PAD + w / 2, W - PAD - w / 2
                if hi <= lo:
                    continue
                cx = rng.uniform(lo, hi)
            cx = float(round(cx))
            base = float(round(base))
            x_lo, x_hi, top = cx - w / 2, cx + w / 2, base - h
            if x_lo < PAD or x_hi > W - PAD or top < PAD or base > H - PAD:
                continue
            if _fits(o, (x_lo, top, x_hi, base), placed, scene.occlusion_pair):
                o.cx, o.base, o.w, o.h, o.placed = cx, base, w, h, True
                placed.append(o)
                break
    # look-alike groups that lost members below two become single (non-ref) objects
    for g in {o.group for o in scene.objs if o.group >= 0}:
        members = [o for o in scene.objs if o.group == g and o.placed]
        if len(members) < 2:
            for o in members:
                o.group = -1
    scene.objs = [o for o in scene.objs if o.placed]
    if pair_front is not None and not (pair_front.placed and pair_back.placed):
        scene.occlusion_pair = None


def _fits(o: Obj, box: Tuple[float, float, float, float], placed: List[Obj],
          pair: Optional[Tuple[Obj, Obj]]) -> bool:
    """Whether ``box`` clears every placed object (the occlusion pair may overlap each other)."""
    x0, y0, x1, y1 = box
    area = (x1 - x0) * (y1 - y0)
    for p in placed:
        if pair is not None and {id(o), id(p)} == {id(pair[0]), id(pair[1])}:
            continue
        px0, py0, px1, py1 = p.x_lo, p.base - p.h, p.x_hi, p.base
        if p.cat == o.cat and not (x1 + 6 <= px0 or px1 + 6 <= x0):
            return False   # look-alikes never share an x-range: left/middle/right stay clear
        iw, ih = min(x1, px1) - max(x0, px0), min(y1, py1) - max(y0, py0)
        if iw > 0 and ih > 0 and iw * ih > 0.05 * min(area, (px1 - px0) * (py1 - py0)):
            return False
    return True




def plan_closeup(seed: int, index: int) -> Scene:
    """A close-up: one big subject (a single, referred to by its category) filling the frame, two
    small look-alikes in front of it (each about SMALL_AREA_FRACTION of the image).

    The subject has no other *sizeable* object beside it (and, when huge, covers more than 60% of
    the image): the sole prominent subject that rule 1 of the selection must drop. The small
    pair overlaps the subject's bottom edge, so they occlude it. Positions are set, not sampled.
    """
    rng = np.random.default_rng([seed, index, 0])
    huge = (index // CLOSEUP_EVERY) % 2 == 1
    W = int(rng.integers(320, 521))
    H = W if huge else int(round(W * rng.uniform(0.9, 1.2)))
    scene = Scene(index, W, H, horizon=float(H * rng.uniform(0.30, 0.40)),
                  surface=pick(rng, ("wood", "wood", "tiles", "cloth")), side=int(pick(rng, (-1, 1))),
                  closeup="huge" if huge else "subject")
    cat = "book" if huge else pick(rng, _CLOSEUP_SUBJECTS)
    subject = Obj(cat, pick(rng, _CAT_COLOURS[cat]), "plain", 1.0)
    small_cat = pick(rng, _CLOSEUP_SMALL)
    pair = _group_members(rng, small_cat, 2, 0)
    # the subject: centred, its base above the bottom edge so that the pair stands in front of it
    subject.base = float(round(H * 0.9))
    if huge:
        subject.h = int(round(subject.base - PAD - 0.03 * H))
        subject.w = int(round(min(0.8 * W, 0.85 * subject.h)))
    else:
        hf, aspect = _SIZE[cat]
        subject.h = int(round(min(rng.uniform(0.62, 0.75) * H, (0.7 * W) / aspect)))
        subject.w = int(round(subject.h * aspect))
    subject.cx = float(round(W / 2 + rng.uniform(-0.04, 0.04) * W))
    subject.placed = True
    # the pair: left and right of the centre, in front (larger base), sized by area fraction
    _, aspect = _SIZE[small_cat]
    fill = 0.62 if small_cat == "donut" else 0.77   # mask area / box area of the renderer
    for o, side in zip(pair, (-1, 1)):
        o.jitter = 1.0
        o.h = int(round(np.sqrt(SMALL_AREA_FRACTION * W * H / (fill * aspect))))
        o.w = int(round(o.h * aspect))
        o.base = float(round(min(H - PAD - 1, subject.base + rng.uniform(0.04, 0.08) * H)))
        o.cx = float(round(W / 2 + side * rng.uniform(0.2, 0.3) * W))
        o.placed = True
    scene.objs = [subject] + pair
    return scene
