"""Safe image decoding: every failure is a reason-coded ``ImageError``, never a crash.

COCO photos are mostly plain RGB JPEGs, but a real crawl also holds CMYK JPEGs (some written by
Adobe tools with inverted ink values), grayscale, palette and 16-bit PNGs, truncated files and
photos that carry an EXIF orientation tag. This module turns each of them into one thing: an
upright ``HxWx3 uint8`` RGB array, plus what is needed to keep the COCO annotation masks aligned
with it (see ``load_image`` for the annotation-frame rule).

Decoding never changes global PIL state (``LOAD_TRUNCATED_IMAGES`` stays off, so a truncated
file is an error, not a grey half image), and only decoder errors are caught, never everything.
"""
from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
from PIL import Image

from .errors import SampleError

__all__ = ["ImageError", "LoadedImage", "load_image", "encode_png", "decode_image_bytes", "ORIENT_TRANSPOSE"]


class ImageError(SampleError):
    """An image cannot be used. ``reason``: missing_image, corrupt_image, size_mismatch or
    unsupported_mode."""


# Formats we are willing to parse at all (smaller attack surface than every PIL plugin);
# intersected with the plugins this Pillow has (MPO, for one, is not a plugin in every version).
_WANTED_FORMATS = ("JPEG", "PNG", "MPO", "WEBP", "BMP", "TIFF", "GIF")
_formats_cache: Optional[Tuple[str, ...]] = None


def _formats() -> Tuple[str, ...]:
    global _formats_cache
    if _formats_cache is None:
        Image.init()
        _formats_cache = tuple(f for f in _WANTED_FORMATS if f in Image.OPEN)
    return _formats_cache

# What PIL's decoders raise on bad data. PNG raises SyntaxError for broken chunks, some
# plugins let struct/zlib errors through; DecompressionBombError is a plain Exception.
_DECODE_ERRORS = (
    OSError,  # includes UnidentifiedImageError and "image file is truncated"
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)

# EXIF orientation -> the PIL transpose that makes the image upright. Exactly the table of
# PIL.ImageOps.exif_transpose (a test checks this); kept here so masks get the same transform.
ORIENT_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# Modes the "convert" policy knows how to turn into RGB.
_CONVERTIBLE = {"RGB", "RGBX", "CMYK", "YCbCr", "L", "1", "P", "PA", "LA", "RGBA", "RGBa", "La",
                "I;16", "I;16L", "I;16B", "I;16N", "I"}


def _orient_array(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply the EXIF transpose of ``orientation`` to an HxW(xC) array (rows = y, cols = x)."""
    if orientation == 2:  # FLIP_LEFT_RIGHT
        out = a[:, ::-1]
    elif orientation == 3:  # ROTATE_180
        out = a[::-1, ::-1]
    elif orientation == 4:  # FLIP_TOP_BOTTOM
        out = a[::-1]
    elif orientation == 5:  # TRANSPOSE
        out = a.swapaxes(0, 1)
    elif orientation == 6:  # ROTATE_270 (counter-clockwise) = 90 degrees clockwise
        out = np.rot90(a, k=-1)
    elif orientation == 7:  # TRANSVERSE
        out = np.rot90(a, k=2).swapaxes(0, 1)
    elif orientation == 8:  # ROTATE_90 (counter-clockwise)
        out = np.rot90(a, k=1)
    else:
        out = a
    return np.ascontiguousarray(out)


@dataclass
class LoadedImage:
    """A decoded image, upright, with what is needed to align annotation masks with it."""

    array: np.ndarray
    """HxWx3 uint8 RGB, upright (EXIF orientation applied)."""
    orientation: int
    """The EXIF orientation tag of the file; 1 = none (invalid values read as 1)."""
    mode: str
    """The file's PIL mode ("RGB", "CMYK", "L", "P", "LA", "RGBA", "I;16", ...)."""
    annotation_frame: str
    """"upright" or "raw": in which frame the COCO annotation (instances w/h) was made."""
    encoded: bytes
    """Bytes to store as the sample's source image: the original file when it decodes to exactly
    ``array`` (plain RGB JPEG/PNG, orientation 1), else a PNG of ``array``."""
    format: str
    """"jpeg" or "png": the format of ``encoded``."""

    @property
    def hw(self) -> Tuple[int, int]:
        """(height, width) of the upright array."""
        return int(self.array.shape[0]), int(self.array.shape[1])

    def orient_mask(self, mask: np.ndarray) -> np.ndarray:
        """Map an annotation-frame HxW mask into the upright frame of ``array``.

        Identity when ``annotation_frame == "upright"``; otherwise the mask was drawn on the raw
        (stored, unrotated) pixels and gets the same EXIF transpose as the pixels did.
        """
        mask = np.asarray(mask)
        if self.annotation_frame == "upright":
            if mask.shape[:2] != self.hw:
                raise ValueError(f"mask is {mask.shape[0]}x{mask.shape[1]}, the image is {self.hw[0]}x{self.hw[1]}")
            return mask
        out = _orient_array(mask, self.orientation)
        if out.shape[:2] != self.hw:
            raise ValueError(
                f"mask is {mask.shape[0]}x{mask.shape[1]} in the raw frame; after orientation "
                f"{self.orientation} it does not match the image's {self.hw[0]}x{self.hw[1]}"
            )
        return out


def _open(data: bytes, name: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=_formats())
    except _DECODE_ERRORS as e:
        raise ImageError("corrupt_image", f"{name}: not a readable image ({type(e).__name__}: {e})") from e


def _orientation(img: Image.Image) -> int:
    """EXIF orientation tag, 1 when absent, invalid or unreadable (a broken EXIF block must not
    make a good photo unusable)."""
    try:
        value = img.getexif().get(0x0112, 1)
    except _DECODE_ERRORS:
        return 1
    try:
        value = int(value)
    except (TypeError, ValueError):
        return 1
    return value if value in ORIENT_TRANSPOSE else 1


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """HxWx4 uint8 -> HxWx3 uint8, alpha-composited over white (integer, deterministic)."""
    rgb = rgba[..., :3].astype(np.uint32)
    a = rgba[..., 3:4].astype(np.uint32)
    out = (rgb * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _to_rgb(img: Image.Image, name: str) -> np.ndarray:
    """A loaded PIL image of a convertible mode -> HxWx3 uint8 RGB."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        return _composite_on_white(np.asarray(img.convert("RGBA"), dtype=np.uint8))
    if mode.startswith("I"):
        # 16-bit (and 32-bit integer, how PIL may hand 16-bit PNGs) grey: scale 0..65535 -> 0..255.
        a = np.asarray(img).astype(np.int64)
        a = (np.clip(a, 0, 65535) * 255 + 32767) // 65535
        a = a.astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a[..., None], 3, axis=2))
    if mode in _CONVERTIBLE:
        # CMYK (PIL undoes the Adobe inversion from the APP14 marker), YCbCr, L, 1, P, RGBX.
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    raise ImageError("unsupported_mode", f"{name}: image mode {mode!r} cannot be converted to RGB")


def load_image(
    path: Union[str, Path],
    expected_hw: Optional[Tuple[int, int]] = None,
    mode_policy: str = "convert",
    ambiguous_frame: str = "upright",
) -> LoadedImage:
    """Decode an image file into an upright RGB array, or raise a reason-coded ``ImageError``.

    ``mode_policy``: "convert" turns CMYK, L, P, LA/RGBA (composited on white) and 16-bit grey
    into RGB; "quarantine" refuses every file whose mode is not RGB ("unsupported_mode").

    Annotation frame rule. COCO's ``width``/``height`` (``expected_hw`` = (h, w)) tell in which
    frame the annotation polygons were drawn:

    * ``expected_hw`` is None -> "upright";
    * it equals the upright size (after EXIF orientation) -> "upright";
    * else it equals the raw, stored size -> "raw": the annotator saw the unrotated pixels, so
      masks must get the same EXIF transpose as the pixels (``LoadedImage.orient_mask``);
    * else -> ImageError("size_mismatch").

    When both sizes are equal (orientation 2, 3, 4: flips and 180 degrees, or a square photo)
    the frame cannot be told from the size; it is ``ambiguous_frame``, "upright" by default.
    """
    if mode_policy not in ("convert", "quarantine"):
        raise ValueError(f"mode_policy must be 'convert' or 'quarantine', got {mode_policy!r}")
    if ambiguous_frame not in ("upright", "raw"):
        raise ValueError(f"ambiguous_frame must be 'upright' or 'raw', got {ambiguous_frame!r}")
    path = Path(path)
    name = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise ImageError("missing_image", f"{name}: image file does not exist") from e
    except OSError as e:  # a directory, no permission, I/O error
        raise ImageError("missing_image", f"{name}: image file cannot be read ({e})") from e

    img = _open(data, name)
    try:
        mode = img.mode
        if mode_policy == "quarantine" and mode != "RGB":
            raise ImageError("unsupported_mode", f"{name}: image mode is {mode!r}, not RGB (mode_policy=quarantine)")
        if mode not in _CONVERTIBLE:
            raise ImageError("unsupported_mode", f"{name}: image mode {mode!r} cannot be converted to RGB")
        orientation = _orientation(img)
        raw_w, raw_h = img.size
        up_h, up_w = (raw_w, raw_h) if orientation >= 5 else (raw_h, raw_w)

        if expected_hw is None:
            frame = "upright"
        else:
            eh, ew = int(expected_hw[0]), int(expected_hw[1])
            up_ok = (eh, ew) == (up_h, up_w)
            raw_ok = (eh, ew) == (raw_h, raw_w)
            if up_ok and raw_ok:
                frame = ambiguous_frame
            elif up_ok:
                frame = "upright"
            elif raw_ok:
                frame = "raw"
            else:
                raise ImageError(
                    "size_mismatch",
                    f"{name}: instances.json says {eh}x{ew} (h x w), the file is {raw_h}x{raw_w} "
                    f"as stored and {up_h}x{up_w} upright (EXIF orientation {orientation})",
                )

        try:
            img.load()
            rgb = _to_rgb(img, name)
        except _DECODE_ERRORS as e:
            raise ImageError("corrupt_image", f"{name}: cannot decode ({type(e).__name__}: {e})") from e
        fmt = img.format
    finally:
        img.close()

    if orientation != 1:
        rgb = _orient_array(rgb, orientation)

    if mode == "RGB" and orientation == 1 and fmt in ("JPEG", "PNG"):
        encoded, out_fmt = data, fmt.lower()
    else:
        encoded, out_fmt = encode_png(rgb), "png"
    return LoadedImage(array=rgb, orientation=orientation, mode=mode, annotation_frame=frame,
                       encoded=encoded, format=out_fmt)


def encode_png(array: np.ndarray, compress_level: int = 1) -> bytes:
    """HxW, HxWx3 or HxWx4 uint8 array -> PNG bytes. Deterministic (no timestamps, fixed level):
    the same array always gives the same bytes, which keeps resumed runs byte-identical."""
    a = np.asarray(array)
    if a.dtype != np.uint8:
        raise ValueError(f"encode_png needs a uint8 array, got {a.dtype}")
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ValueError(f"encode_png needs an HxW, HxWx3 or HxWx4 array, got shape {a.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG", compress_level=int(compress_level))
    return buf.getvalue()


def decode_image_bytes(data: bytes) -> np.ndarray:
    """Encoded image bytes (as stored in a sample) -> HxWx3 uint8 RGB.

    RGBA/LA are composited on white, L/P/CMYK/16-bit converted as by ``load_image``. The EXIF
    orientation is *not* applied: bytes written by this toolkit are already upright (originals are
    kept only when their orientation is 1). Raises ImageError("corrupt_image") on bad bytes.
    """
    img = _open(bytes(data), "image bytes")
    try:
        if img.mode not in _CONVERTIBLE:
            raise ImageError("unsupported_mode", f"image bytes: mode {img.mode!r} cannot be converted to RGB")
        try:
            img.load()
            return _to_rgb(img, "image bytes")
        except _DECODE_ERRORS as e:
            raise ImageError("corrupt_image", f"image bytes: cannot decode ({type(e).__name__}: {e})") from e
    finally:
        img.close()
