"""The images the judge sees, as base64 data URLs, and their hashes (part of the cache key).

* the source: decoded as the metrics decode it (EXIF orientation applied, RGB) and encoded as
  PNG, at native resolution: the judge sees exactly the pixels that were scored;
* the output: the cached ``outputs/{sample_id}.png`` bytes as they are;
* the marked source (``ref_marked``): the source with the outline of the referred object's mask
  M drawn on it in :data:`~.protocol.OUTLINE_RGB`, encoded as PNG;
* ``same_object`` (the reference-based track): the exemplar with its object mask outlined, and the
  output with the edited area M_e outlined, the same way (:data:`EXEMPLAR_RULE`).
"""
from __future__ import annotations

import base64
import hashlib
from typing import Tuple

import numpy as np

from .protocol import OUTLINE_RGB

__all__ = ["data_url", "png_url", "outline_thickness", "marked_source", "MARK_RULE", "EXEMPLAR_RULE"]

MARK_RULE = ("the source with the contours of M (cv2.findContours, external and holes) drawn in RGB "
             f"{OUTLINE_RGB}, thickness max(2, round(min(H, W) / 150)) px, PNG")


EXEMPLAR_RULE = ("the exemplar with the contours of its exemplar_mask, and the cached output with the contours of "
                 f"M_e, each drawn as in the marked source (RGB {OUTLINE_RGB}), PNG")


def _mime(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return ""


def data_url(data: bytes) -> Tuple[str, str]:
    """(``data:image/...;base64,...``, sha256 of the bytes sent) of an encoded image."""
    mime = _mime(data)
    if not mime:
        from refcoco_edit.imageio import decode_image_bytes, encode_png

        data, mime = encode_png(decode_image_bytes(data)), "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}", hashlib.sha256(data).hexdigest()


def png_url(array: np.ndarray) -> Tuple[str, str]:
    """:func:`data_url` of an RGB array, encoded as PNG."""
    from refcoco_edit.imageio import encode_png

    return data_url(encode_png(array))


def outline_thickness(hw: Tuple[int, int]) -> int:
    """The outline's width in pixels for an image of ``hw``."""
    return max(2, int(round(min(hw) / 150)))


def marked_source(source: np.ndarray, mask: np.ndarray) -> bytes:
    """PNG bytes of ``source`` with the outline of ``mask`` drawn on it (:data:`MARK_RULE`)."""
    import cv2

    from refcoco_edit.imageio import encode_png

    img = np.ascontiguousarray(source.copy())
    contours, _ = cv2.findContours(np.asarray(mask, dtype=np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(img, contours, -1, OUTLINE_RGB, outline_thickness(img.shape[:2]))
    return encode_png(img)
