"""Edit masks and exact paste-back (pipelines.masks)."""
from __future__ import annotations

import numpy as np
import pytest

from refcoco_edit.pipelines.base import PipelineError
from refcoco_edit.pipelines.masks import changed_region, check_output, dilate, edit_mask, erode, feather_alpha, paste_back


def _disk_mask(h: int = 40, w: int = 50, cy: int = 20, cx: int = 25, r: int = 8) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _random_case(seed: int, h: int = 37, w: int = 53):
    rng = np.random.default_rng(seed)
    src = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    edited = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = rng.random((h, w)) < rng.uniform(0.05, 0.6)
    return src, edited, mask


# -- dilate / erode -------------------------------------------------------------------------------
def test_dilate_zero_is_identity_copy():
    m = _disk_mask()
    out = dilate(m, 0)
    assert out.dtype == bool and np.array_equal(out, m)
    assert out is not m
    out[0, 0] = not out[0, 0]
    assert m[0, 0] != out[0, 0]  # a copy, not a view


def test_dilate_grows_roundly_and_contains_input():
    m = np.zeros((31, 31), bool)
    m[15, 15] = True
    d = dilate(m, 3)
    assert d.dtype == bool and d[m].all()
    # elliptical kernel: a round blob, corners of the 7x7 square excluded
    assert d[15, 12] and d[12, 15] and not d[12, 12]
    assert d.sum() < 49
    assert dilate(_disk_mask(), 2).sum() > _disk_mask().sum()


def test_erode_zero_identity_and_shrinks():
    m = _disk_mask()
    assert np.array_equal(erode(m, 0), m)
    e = erode(m, 2)
    assert e.sum() < m.sum() and not e[~m].any()


def test_erode_keeps_masks_touching_border():
    m = np.zeros((20, 20), bool)
    m[:, :6] = True  # touches the left border
    e = erode(m, 2)
    assert e[:, 0].all()  # the border side is not eaten away


# -- changed_region / edit_mask -------------------------------------------------------------------
def test_changed_region_removes_specks_and_keeps_blocks():
    src = np.full((40, 40, 3), 100, np.uint8)
    ed = src.copy()
    ed[5, 5] = 200  # a single-pixel speck
    ed[20:30, 20:30, 1] = 160  # a real change in one channel
    ed[35, 35] = 105  # below the threshold
    ch = changed_region(src, ed, threshold=12.0)
    assert ch.dtype == bool
    assert not ch[5, 5] and not ch[35, 35]
    assert ch[21:29, 21:29].all()
    assert not ch[:15].any()


def test_edit_mask_is_dilated_union():
    a = _disk_mask(cx=12)
    b = _disk_mask(cx=38, r=4)
    m = edit_mask(a, b, dilate_px=3)
    assert m[a].all() and m[b].all()
    assert m.sum() > (a | b).sum()
    assert np.array_equal(edit_mask(a, None, 0), a)


# -- feather_alpha --------------------------------------------------------------------------------
def test_feather_alpha_exactly_zero_outside_and_ramps_inside():
    m = _disk_mask(r=12)
    a = feather_alpha(m, 4)
    assert a.dtype == np.float32 and a.shape == m.shape
    assert np.all(a[~m] == 0.0)
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert a[20, 25] == 1.0  # deep inside
    edge = m & ~erode(m, 1)
    assert np.all(a[edge] > 0) and np.all(a[edge] < 1)  # soft seam inside M_e


def test_feather_alpha_zero_px_is_binary():
    m = _disk_mask()
    a = feather_alpha(m, 0)
    assert set(np.unique(a)) <= {0.0, 1.0} and np.array_equal(a > 0, m)


def test_feather_alpha_image_border_is_not_a_seam():
    m = np.zeros((20, 20), bool)
    m[:, :10] = True
    a = feather_alpha(m, 3)
    assert a[10, 0] == 1.0 and a[0, 0] == 1.0


# -- paste_back -----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("feather", [0, 1, 4])
def test_paste_back_is_exact_outside_mask(seed: int, feather: int):
    src, edited, mask = _random_case(seed)
    out = paste_back(src, edited, mask, feather_px=feather)
    assert out.dtype == np.uint8 and out.shape == src.shape
    assert np.array_equal(out[~mask], src[~mask])
    if feather == 0:
        assert np.array_equal(out[mask], edited[mask])


def test_paste_back_interior_takes_edited():
    src = np.zeros((40, 50, 3), np.uint8)
    edited = np.full((40, 50, 3), 200, np.uint8)
    m = _disk_mask(r=12)
    out = paste_back(src, edited, m, feather_px=3)
    assert np.array_equal(out[20, 25], edited[20, 25])
    assert np.array_equal(out[~m], src[~m])
    edge = m & ~erode(m, 1)
    assert np.all(out[edge][:, 0] < 200)  # blended seam


def test_paste_back_rejects_shape_mismatch():
    src, edited, mask = _random_case(0)
    with pytest.raises(ValueError):
        paste_back(src, edited[:-1], mask)
    with pytest.raises(ValueError):
        paste_back(src, edited, mask[:-1])


# -- check_output ---------------------------------------------------------------------------------
def _changed_case():
    src = np.full((40, 50, 3), 90, np.uint8)
    m = _disk_mask(r=10)
    out = src.copy()
    out[m] = (30, 200, 30)
    return src, out, m


def test_check_output_returns_stats():
    src, out, m = _changed_case()
    stats = check_output(src, out, m)
    assert set(stats) == {"changed_fraction", "mean_abs_diff_inside"}
    assert stats["changed_fraction"] == pytest.approx(1.0)
    assert stats["mean_abs_diff_inside"] > 50


def test_check_output_raises_on_a_changed_pixel_outside():
    src, out, m = _changed_case()
    out[0, 0, 2] ^= 1  # one channel of one pixel, by one level
    with pytest.raises(PipelineError) as e:
        check_output(src, out, m)
    assert e.value.reason == "pipeline_error"


def test_check_output_raises_no_change():
    src, _, m = _changed_case()
    with pytest.raises(PipelineError) as e:
        check_output(src, src.copy(), m)
    assert e.value.reason == "no_change"
    tiny = src.copy()
    tiny[m] += 1  # everywhere, but not meaningfully
    with pytest.raises(PipelineError) as e:
        check_output(src, tiny, m)
    assert e.value.reason == "no_change"


def test_check_output_raises_on_size_mismatch():
    src, out, m = _changed_case()
    with pytest.raises(PipelineError) as e:
        check_output(src, out[:, :-1], m)
    assert e.value.reason == "pipeline_error"
