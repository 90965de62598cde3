"""COCO RLE masks through pycocotools, plus validation before anything reaches its C code.

pycocotools' ``rleDecode`` writes ``sum(counts)`` values into an ``h*w`` buffer without a
bounds check, and ``frPyObjects`` silently reads a 4-number "polygon" as a bounding box. So every
mask from outside is validated here first; encoding and decoding themselves are always done by
pycocotools, never by hand.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence

import numpy as np

from .errors import ReasonError


class MaskError(ReasonError, ValueError):
    """A mask annotation is malformed. ``reason`` is a quarantine reason code."""


def _mask_api():
    from pycocotools import mask as mask_api

    return mask_api


def encode(mask: np.ndarray) -> Dict[str, Any]:
    """Binary HxW mask -> RLE dict {size: [h, w], counts: str}."""
    m = np.asfortranarray(np.asarray(mask, dtype=np.uint8) > 0, dtype=np.uint8)
    rle = _mask_api().encode(m)
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode(rle: Dict[str, Any]) -> np.ndarray:
    """RLE dict (compressed string counts, as stored by us) -> bool HxW mask."""
    validate_compressed(rle)
    r = {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": _counts_bytes(rle["counts"])}
    return _mask_api().decode(r).astype(bool)


def area(rle: Dict[str, Any]) -> int:
    return int(_mask_api().area({"size": list(rle["size"]), "counts": _counts_bytes(rle["counts"])}))


def _counts_bytes(counts: Any) -> bytes:
    return counts.encode("ascii") if isinstance(counts, str) else bytes(counts)


def compressed_counts_sum(counts: Any) -> int:
    """Sum of the run lengths of a compressed COCO counts string (validation only).

    Mirrors the parsing rule of pycocotools' ``rleFrString`` to check a string before its C
    decoder, which has no bounds check, sees it. Raises MaskError on a character outside the
    alphabet or a truncated run.
    """
    s = _counts_bytes(counts)
    cnts: List[int] = []
    p = 0
    n = len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise MaskError("bad_rle", "RLE counts string ends inside a run")
            c = s[p] - 48
            if c < 0 or c > 63:
                raise MaskError("bad_rle", f"RLE counts has an invalid character {chr(s[p])!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(cnts) > 2:
            x += cnts[-2]
        if x < 0:
            raise MaskError("bad_rle", "RLE counts has a negative run")
        cnts.append(x)
    return sum(cnts)


def validate_compressed(rle: Any, hw: Sequence[int] | None = None) -> None:
    """Check an RLE dict: a size of two positive ints (equal to ``hw`` if given) and counts that
    cover exactly h*w pixels."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise MaskError("bad_rle", "RLE must be a dict with 'size' and 'counts'")
    size = rle["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, (int, np.integer)) and v > 0 for v in size)):
        raise MaskError("bad_rle", f"RLE size must be two positive ints, got {size!r}")
    h, w = int(size[0]), int(size[1])
    if hw is not None and (h, w) != (int(hw[0]), int(hw[1])):
        raise MaskError("bad_rle", f"RLE size {h}x{w} differs from the image's {hw[0]}x{hw[1]}")
    counts = rle["counts"]
    if isinstance(counts, (list, tuple)):
        if not all(isinstance(c, (int, np.integer)) and c >= 0 for c in counts):
            raise MaskError("bad_rle", "uncompressed RLE counts must be non-negative ints")
        total = int(sum(counts))
    elif isinstance(counts, (str, bytes)):
        total = compressed_counts_sum(counts)
    else:
        raise MaskError("bad_rle", f"RLE counts must be a string or a list, got {type(counts).__name__}")
    if total != h * w:
        raise MaskError("bad_rle", f"RLE counts cover {total} pixels, the mask has {h * w}")


# pycocotools' rleFrPoly casts scale*coordinate to a C int and allocates per step along the
# outline: coordinates of 1e9 crash the process (segfault), 1e7 take seconds. No real polygon
# lies that far outside its image.
MAX_POLYGON_COORD = 1e5


def validate_polygons(polys: Any, limit: float = MAX_POLYGON_COORD) -> None:
    """Each polygon: a flat list of >= 6 finite numbers, even length (>= 3 points), every
    coordinate within [-limit, limit]."""
    if not isinstance(polys, list) or not polys:
        raise MaskError("bad_polygon", "segmentation polygon list is empty")
    for i, p in enumerate(polys):
        if not isinstance(p, (list, tuple)):
            raise MaskError("bad_polygon", f"polygon {i} is not a list of coordinates")
        if len(p) % 2:
            raise MaskError("bad_polygon", f"polygon {i} has an odd number of coordinates ({len(p)})")
        if len(p) < 6:
            raise MaskError("bad_polygon", f"polygon {i} has {len(p) // 2} points; at least 3 are needed")
        for v in p:
            if not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(float(v)):
                raise MaskError("bad_polygon", f"polygon {i} has a non-finite or non-numeric coordinate {v!r}")
            if abs(v) > limit:
                raise MaskError("bad_polygon", f"polygon {i} has a coordinate {v!r} far outside any image (|v| > {limit:g})")


def segmentation_to_rle(segmentation: Any, h: int, w: int) -> Dict[str, Any]:
    """A COCO ``segmentation`` (polygons, uncompressed RLE or compressed RLE) -> one merged RLE.

    A multi-part polygon is the union of its parts (the refer API summed them).
    """
    mask_api = _mask_api()
    if isinstance(segmentation, list):
        validate_polygons(segmentation)
        rles = mask_api.frPyObjects([list(map(float, p)) for p in segmentation], h, w)
        rle = mask_api.merge(rles)
    elif isinstance(segmentation, dict):
        validate_compressed(segmentation, (h, w))
        if isinstance(segmentation["counts"], (list, tuple)):
            rle = mask_api.frPyObjects(segmentation, h, w)
        else:
            rle = {"size": [h, w], "counts": _counts_bytes(segmentation["counts"])}
    else:
        raise MaskError("bad_polygon", f"segmentation must be polygons or RLE, got {type(segmentation).__name__}")
    counts = rle["counts"]
    return {"size": [int(h), int(w)], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def merge(rles: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Union of RLE masks of the same size."""
    mask_api = _mask_api()
    r = mask_api.merge([{"size": list(x["size"]), "counts": _counts_bytes(x["counts"])} for x in rles], intersect=False)
    return {"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")}


def to_bbox(rle: Dict[str, Any]) -> List[float]:
    b = _mask_api().toBbox({"size": list(rle["size"]), "counts": _counts_bytes(rle["counts"])})
    return [float(v) for v in b]
