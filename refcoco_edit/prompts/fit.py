"""Whether a replacement target fits the region of the object it replaces (shape-aware targets).

A target fits when (1) its typical physical size is within ``size_ratio`` of the source
category's (a bus for a person, a giraffe for a cup are implausible) and (2) its typical box
aspect (width / height) is within a factor ``aspect_tolerance`` of the source box's, so that an
exemplar scaled into the box covers at least ``1 / aspect_tolerance`` of it (a bus, 1.3:1 wide
in photos, does not fit a standing person's 0.45:1 box). Typical aspects come from the data
(the exemplar bank's median instance box) where known, else from :data:`CATEGORY_SHAPE`.
Imaginative targets of generative backends ("a robot") are not COCO categories and keep their
own rule (they are not filtered here).
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

# COCO category -> (typical largest extent in metres, typical box aspect width / height in photos);
# rough, hand-set figures: only the order of magnitude of size and the shape class matter here.
CATEGORY_SHAPE: Dict[str, Tuple[float, float]] = {
    "person": (1.7, 0.45), "bicycle": (1.7, 1.4), "car": (4.5, 1.6), "motorcycle": (2.0, 1.3),
    "airplane": (30.0, 2.0), "bus": (11.0, 1.3), "train": (60.0, 1.6), "truck": (7.0, 1.4),
    "boat": (6.0, 1.6), "traffic light": (0.9, 0.45), "fire hydrant": (0.8, 0.75), "stop sign": (0.75, 1.0),
    "parking meter": (1.3, 0.5), "bench": (1.6, 1.6), "bird": (0.3, 1.0), "cat": (0.5, 1.2),
    "dog": (0.7, 1.2), "horse": (2.2, 1.2), "sheep": (1.2, 1.3), "cow": (2.2, 1.4),
    "elephant": (4.5, 1.3), "bear": (2.0, 1.2), "zebra": (2.3, 1.3), "giraffe": (5.0, 0.7),
    "backpack": (0.5, 0.75), "umbrella": (1.0, 1.3), "handbag": (0.35, 1.0), "tie": (0.5, 0.4),
    "suitcase": (0.7, 0.8), "frisbee": (0.25, 1.5), "skis": (1.7, 1.0), "snowboard": (1.5, 0.9),
    "sports ball": (0.22, 1.0), "kite": (1.0, 1.0), "baseball bat": (0.9, 0.6), "baseball glove": (0.3, 1.0),
    "skateboard": (0.8, 1.3), "surfboard": (2.0, 0.9), "tennis racket": (0.7, 0.8), "bottle": (0.3, 0.4),
    "wine glass": (0.2, 0.5), "cup": (0.1, 0.9), "fork": (0.2, 0.5), "knife": (0.25, 0.5),
    "spoon": (0.18, 0.5), "bowl": (0.2, 2.0), "banana": (0.2, 1.4), "apple": (0.08, 1.0),
    "sandwich": (0.15, 1.3), "orange": (0.08, 1.0), "broccoli": (0.15, 1.1), "carrot": (0.18, 1.0),
    "hot dog": (0.18, 1.5), "pizza": (0.35, 1.5), "donut": (0.1, 1.4), "cake": (0.25, 1.3),
    "chair": (0.9, 0.7), "couch": (2.0, 1.8), "potted plant": (0.6, 0.7), "bed": (2.0, 1.5),
    "dining table": (1.5, 1.6), "toilet": (0.75, 0.7), "tv": (0.9, 1.4), "laptop": (0.35, 1.3),
    "mouse": (0.1, 1.2), "remote": (0.18, 0.8), "keyboard": (0.45, 2.2), "cell phone": (0.14, 0.7),
    "microwave": (0.5, 1.5), "oven": (0.8, 1.1), "toaster": (0.3, 1.2), "sink": (0.6, 1.6),
    "refrigerator": (1.8, 0.55), "book": (0.24, 0.75), "clock": (0.3, 1.0), "vase": (0.3, 0.5),
    "scissors": (0.2, 0.8), "teddy bear": (0.4, 0.8), "hair drier": (0.25, 0.9), "toothbrush": (0.19, 0.5),
}


def typical_aspect(category: str, aspects: Optional[Mapping[str, float]] = None) -> Optional[float]:
    """The category's typical box aspect (w / h): measured in the data when given, else the table's."""
    if aspects and category in aspects and aspects[category] > 0:
        return float(aspects[category])
    shape = CATEGORY_SHAPE.get(category)
    return shape[1] if shape else None


def size_plausible(source: str, target: str, size_ratio: float) -> bool:
    """Whether ``target``'s typical size is within ``size_ratio`` of ``source``'s (unknown: yes)."""
    a, b = CATEGORY_SHAPE.get(source), CATEGORY_SHAPE.get(target)
    if a is None or b is None or size_ratio <= 0:
        return True
    return max(a[0], b[0]) / min(a[0], b[0]) <= size_ratio


def aspect_gap(box_wh: Sequence[float], aspect: float) -> float:
    """max(r, 1/r) of the box's aspect over ``aspect``: 1 = same shape; the share of the box an
    exemplar of that aspect covers once scaled into it is 1 / this."""
    w, h = float(box_wh[0]), float(box_wh[1])
    if w <= 0 or h <= 0 or aspect <= 0:
        return 1.0
    r = (w / h) / aspect
    return max(r, 1.0 / r)


def fits(source: str, box_wh: Optional[Sequence[float]], target: str, aspect_tolerance: float,
         size_ratio: float, aspects: Optional[Mapping[str, float]] = None) -> bool:
    """Whether ``target`` may replace a ``source`` object whose box is ``box_wh`` (w, h); a rule
    with a tolerance <= 0 is off, and no box means no aspect rule."""
    if not size_plausible(source, target, size_ratio):
        return False
    if box_wh is None or aspect_tolerance <= 0:
        return True
    aspect = typical_aspect(target, aspects)
    return aspect is None or aspect_gap(box_wh, aspect) <= aspect_tolerance
