"""Tests of refcoco_edit.imageio: decoding failures are reason-coded, every mode becomes RGB,
EXIF orientation keeps pixels and annotation masks aligned, stored bytes round-trip exactly."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from refcoco_edit.imageio import (
    ORIENT_TRANSPOSE,
    ImageError,
    LoadedImage,
    _orient_array,
    decode_image_bytes,
    encode_png,
    load_image,
)

RED = (220, 20, 30)
GREY = (120, 120, 120)


def _gradient(h=40, w=60):
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = np.linspace(0, 255, w)[None, :].astype(np.uint8)
    a[..., 1] = np.linspace(0, 255, h)[:, None].astype(np.uint8)
    a[..., 2] = 100
    return a


def _save(path, img, fmt, **kw):
    img.save(path, format=fmt, **kw)
    return path


def _check_roundtrip(li: LoadedImage):
    assert li.array.dtype == np.uint8 and li.array.ndim == 3 and li.array.shape[2] == 3
    assert np.array_equal(decode_image_bytes(li.encoded), li.array)
    assert li.format in ("jpeg", "png")


# -- failures ---------------------------------------------------------------------------------

def test_missing(tmp_path):
    with pytest.raises(ImageError) as e:
        load_image(tmp_path / "nope.jpg")
    assert e.value.reason == "missing_image"


def test_directory_is_missing_image(tmp_path):
    with pytest.raises(ImageError) as e:
        load_image(tmp_path)
    assert e.value.reason == "missing_image"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(tmp_path, fmt):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, fmt)
    data = buf.getvalue()
    p = tmp_path / f"t.{fmt.lower()}"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as e:
        load_image(p)
    assert e.value.reason == "corrupt_image"


def test_garbage(tmp_path):
    p = tmp_path / "g.jpg"
    p.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageError) as e:
        load_image(p)
    assert e.value.reason == "corrupt_image"
    with pytest.raises(ImageError) as e:
        decode_image_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert e.value.reason == "corrupt_image"


def test_decompression_bomb(tmp_path, monkeypatch):
    p = _save(tmp_path / "big.png", Image.fromarray(_gradient(100, 100)), "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10000 px > 2x the limit -> error
    with pytest.raises(ImageError) as e:
        load_image(p)
    assert e.value.reason == "corrupt_image"


def test_size_mismatch(tmp_path):
    p = _save(tmp_path / "a.jpg", Image.fromarray(_gradient(40, 60)), "JPEG")
    with pytest.raises(ImageError) as e:
        load_image(p, expected_hw=(10, 10))
    assert e.value.reason == "size_mismatch"
    assert "10x10" in str(e.value) and "40x60" in str(e.value)


def test_truncated_flag_untouched(tmp_path):
    from PIL import ImageFile

    before = ImageFile.LOAD_TRUNCATED_IMAGES
    load_image(_save(tmp_path / "a.png", Image.fromarray(_gradient()), "PNG"))
    assert ImageFile.LOAD_TRUNCATED_IMAGES == before


# -- plain RGB keeps the original bytes -------------------------------------------------------

@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_plain_rgb_keeps_original_bytes(tmp_path, fmt):
    a = _gradient()
    p = _save(tmp_path / f"a.{fmt.lower()}", Image.fromarray(a), fmt)
    li = load_image(p, expected_hw=(40, 60))
    assert li.mode == "RGB" and li.orientation == 1 and li.annotation_frame == "upright"
    assert li.encoded == p.read_bytes() and li.format == fmt.lower()
    if fmt == "PNG":
        assert np.array_equal(li.array, a)
    _check_roundtrip(li)


# -- modes ------------------------------------------------------------------------------------

def test_cmyk_jpeg_adobe(tmp_path):
    a = _gradient()
    p = _save(tmp_path / "cmyk.jpg", Image.fromarray(a).convert("CMYK"), "JPEG", quality=95)
    with Image.open(p) as im:  # PIL writes an Adobe APP14 marker (inverted CMYK) for CMYK JPEGs
        assert im.mode == "CMYK" and "adobe" in im.info
    li = load_image(p)
    assert li.mode == "CMYK" and li.format == "png"
    diff = np.abs(li.array.astype(int) - a.astype(int))
    assert diff.mean() < 2 and diff.max() < 12
    _check_roundtrip(li)


def test_grayscale_png(tmp_path):
    g = np.arange(40 * 60, dtype=np.uint32).reshape(40, 60).astype(np.uint8)
    li = load_image(_save(tmp_path / "l.png", Image.fromarray(g, "L"), "PNG"))
    assert li.mode == "L"
    assert np.array_equal(li.array, np.repeat(g[..., None], 3, axis=2))
    _check_roundtrip(li)


def test_palette_png(tmp_path):
    a = np.zeros((20, 30, 3), np.uint8)
    a[:10] = RED
    a[10:] = GREY
    pimg = Image.fromarray(a).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    li = load_image(_save(tmp_path / "p.png", pimg, "PNG"))
    assert li.mode == "P"
    assert np.array_equal(li.array, a)
    _check_roundtrip(li)


def test_palette_png_transparency(tmp_path):
    pimg = Image.new("P", (10, 6))
    pimg.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    px = np.zeros((6, 10), np.uint8)
    px[:, 5:] = 1  # right half: index 1 (blue) is transparent
    pimg.putdata(px.ravel().tolist())
    p = tmp_path / "pt.png"
    pimg.save(p, "PNG", transparency=1)
    li = load_image(p)
    assert li.mode == "P"
    assert (li.array[:, :5] == (255, 0, 0)).all()
    assert (li.array[:, 5:] == 255).all()  # composited on white
    _check_roundtrip(li)


def test_rgba_png_composited_on_white(tmp_path):
    a = np.zeros((4, 3, 4), np.uint8)
    a[..., :3] = RED
    a[0, :, 3] = 255
    a[1, :, 3] = 0
    a[2, :, 3] = 128
    a[3, :, 3] = 255
    li = load_image(_save(tmp_path / "rgba.png", Image.fromarray(a, "RGBA"), "PNG"))
    assert li.mode == "RGBA"
    assert (li.array[0] == RED).all() and (li.array[1] == 255).all()
    expected = [(c * 128 + 255 * 127 + 127) // 255 for c in RED]
    assert (li.array[2] == expected).all()
    _check_roundtrip(li)


def test_la_png(tmp_path):
    a = np.zeros((2, 2, 2), np.uint8)
    a[..., 0] = 10
    a[0, :, 1] = 255
    li = load_image(_save(tmp_path / "la.png", Image.fromarray(a, "LA"), "PNG"))
    assert (li.array[0] == 10).all() and (li.array[1] == 255).all()
    _check_roundtrip(li)


def test_16bit_png(tmp_path):
    v = np.array([[0, 257, 65535], [32768, 1000, 65280]], np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(v).save(p, "PNG")
    li = load_image(p)
    assert li.mode.startswith("I")
    expected = np.round(v.astype(float) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(li.array[..., 0], expected)
    assert np.array_equal(li.array[..., 0], li.array[..., 2])
    _check_roundtrip(li)


def test_quarantine_policy(tmp_path):
    p = _save(tmp_path / "l.png", Image.fromarray(np.zeros((5, 5), np.uint8), "L"), "PNG")
    with pytest.raises(ImageError) as e:
        load_image(p, mode_policy="quarantine")
    assert e.value.reason == "unsupported_mode"
    q = _save(tmp_path / "c.jpg", Image.fromarray(_gradient()).convert("CMYK"), "JPEG")
    with pytest.raises(ImageError) as e:
        load_image(q, mode_policy="quarantine")
    assert e.value.reason == "unsupported_mode"
    ok = load_image(_save(tmp_path / "rgb.png", Image.fromarray(_gradient()), "PNG"), mode_policy="quarantine")
    assert ok.mode == "RGB"


def test_bad_policy(tmp_path):
    with pytest.raises(ValueError):
        load_image(tmp_path / "x.png", mode_policy="whatever")


# -- EXIF orientation -------------------------------------------------------------------------

UP_H, UP_W = 30, 50
OBJ = (slice(4, 14), slice(30, 46))  # the object's rows / cols in the upright frame


def _upright_scene():
    a = np.zeros((UP_H, UP_W, 3), np.uint8)
    a[:] = GREY
    a[OBJ] = RED
    m = np.zeros((UP_H, UP_W), bool)
    m[OBJ] = True
    return a, m


# raw = inverse of the EXIF transpose applied to the upright picture
_INVERSE = {
    3: lambda x: np.rot90(x, 2),
    6: lambda x: np.rot90(x, 1),   # the file is stored rotated 90 ccw; the tag says rotate cw
    8: lambda x: np.rot90(x, -1),
}


def _exif_jpeg(path, raw, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.ascontiguousarray(raw)).save(path, "JPEG", quality=95, exif=exif)
    return path


def _object_colour_ok(array, mask):
    inner = mask.copy()
    # ignore the JPEG-ringed border of the object: erode by 2 px
    for _ in range(2):
        inner = inner & np.roll(inner, 1, 0) & np.roll(inner, -1, 0) & np.roll(inner, 1, 1) & np.roll(inner, -1, 1)
    assert inner.sum() > 20
    px = array[inner].astype(int)
    return np.abs(px - np.array(RED)).max() < 25 and np.abs(array[~mask].astype(int) - np.array(GREY)).mean() < 10


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_upright_annotation(tmp_path, orientation):
    up, up_mask = _upright_scene()
    raw = _INVERSE[orientation](up)
    p = _exif_jpeg(tmp_path / f"o{orientation}.jpg", raw, orientation)
    li = load_image(p, expected_hw=(UP_H, UP_W))
    assert li.orientation == orientation
    assert li.array.shape == (UP_H, UP_W, 3)
    assert li.annotation_frame == "upright"
    assert np.array_equal(li.orient_mask(up_mask), up_mask)
    assert _object_colour_ok(li.array, up_mask)
    with Image.open(p) as im:  # the same pixels as PIL's own exif_transpose
        assert np.array_equal(li.array, np.asarray(ImageOps.exif_transpose(im).convert("RGB")))
    assert li.format == "png"  # rotated: the original bytes would decode sideways
    _check_roundtrip(li)


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_raw_annotation(tmp_path, orientation):
    up, up_mask = _upright_scene()
    raw = _INVERSE[orientation](up)
    raw_mask = _INVERSE[orientation](up_mask)  # the annotator drew on the stored pixels
    p = _exif_jpeg(tmp_path / f"r{orientation}.jpg", raw, orientation)
    li = load_image(p, expected_hw=raw.shape[:2])
    assert li.annotation_frame == "raw"
    assert li.array.shape == (UP_H, UP_W, 3)
    oriented = li.orient_mask(raw_mask)
    assert np.array_equal(oriented, up_mask)
    assert _object_colour_ok(li.array, oriented)
    _check_roundtrip(li)


def test_exif_180_is_ambiguous(tmp_path):
    up, up_mask = _upright_scene()
    raw = _INVERSE[3](up)
    p = _exif_jpeg(tmp_path / "o3.jpg", raw, 3)
    assert load_image(p, expected_hw=(UP_H, UP_W)).annotation_frame == "upright"
    li = load_image(p, expected_hw=(UP_H, UP_W), ambiguous_frame="raw")
    assert li.annotation_frame == "raw"
    assert np.array_equal(li.orient_mask(_INVERSE[3](up_mask)), up_mask)


def test_exif_size_mismatch(tmp_path):
    up, _ = _upright_scene()
    p = _exif_jpeg(tmp_path / "o6.jpg", _INVERSE[6](up), 6)
    with pytest.raises(ImageError) as e:
        load_image(p, expected_hw=(UP_H + 1, UP_W))
    assert e.value.reason == "size_mismatch"


def test_orientation_table_matches_pil():
    assert ORIENT_TRANSPOSE == {
        2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
    }
    a = np.random.default_rng(1).integers(0, 255, (5, 7), dtype=np.uint8)
    for o, method in ORIENT_TRANSPOSE.items():
        assert np.array_equal(_orient_array(a, o), np.asarray(Image.fromarray(a).transpose(method))), o


@pytest.mark.parametrize("orientation", [2, 4, 5, 7])
def test_other_orientations_match_exif_transpose(tmp_path, orientation):
    raw = np.random.default_rng(orientation).integers(0, 255, (12, 20, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / "o.png"
    Image.fromarray(raw).save(p, "PNG", exif=exif)
    li = load_image(p)
    with Image.open(p) as im:
        assert np.array_equal(li.array, np.asarray(ImageOps.exif_transpose(im).convert("RGB")))
    _check_roundtrip(li)


# -- encode ---------------------------------------------------------------------------------

def test_encode_png_deterministic():
    a = _gradient()
    assert encode_png(a) == encode_png(a.copy())
    assert np.array_equal(decode_image_bytes(encode_png(a)), a)
    with pytest.raises(ValueError):
        encode_png(a.astype(np.float32))
