"""The attribute edit's yardstick and the recolouring (pipelines.recolor): the demo's attribute plates,
CIEDE2000 against the published test pairs, and what the recolour keeps and reaches."""
from __future__ import annotations

from typing import Tuple

import cv2
import numpy as np
import pytest

from refcoco_edit.pipelines.masks import dilate, erode
from refcoco_edit.pipelines.recolor import ciede2000, rgb_to_lab

# Sharma, Wu & Dalal (2005), Table 1: L1 a1 b1 L2 a2 b2 and the published CIEDE2000 (4 decimals).
SHARMA_PAIRS = np.array([
    [50.0000, 2.6772, -79.7751, 50.0000, 0.0000, -82.7485, 2.0425],
    [50.0000, 3.1571, -77.2803, 50.0000, 0.0000, -82.7485, 2.8615],
    [50.0000, 2.8361, -74.0200, 50.0000, 0.0000, -82.7485, 3.4412],
    [50.0000, -1.3802, -84.2814, 50.0000, 0.0000, -82.7485, 1.0000],
    [50.0000, -1.1848, -84.8006, 50.0000, 0.0000, -82.7485, 1.0000],
    [50.0000, -0.9009, -85.5211, 50.0000, 0.0000, -82.7485, 1.0000],
    [50.0000, 0.0000, 0.0000, 50.0000, -1.0000, 2.0000, 2.3669],
    [50.0000, -1.0000, 2.0000, 50.0000, 0.0000, 0.0000, 2.3669],
    [50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0009, 7.1792],
    [50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0010, 7.1792],
    [50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0011, 7.2195],
    [50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0012, 7.2195],
    [50.0000, -0.0010, 2.4900, 50.0000, 0.0009, -2.4900, 4.8045],
    [50.0000, -0.0010, 2.4900, 50.0000, 0.0010, -2.4900, 4.8045],
    [50.0000, -0.0010, 2.4900, 50.0000, 0.0011, -2.4900, 4.7461],
    [50.0000, 2.5000, 0.0000, 50.0000, 0.0000, -2.5000, 4.3065],
    [50.0000, 2.5000, 0.0000, 73.0000, 25.0000, -18.0000, 27.1492],
    [50.0000, 2.5000, 0.0000, 61.0000, -5.0000, 29.0000, 22.8977],
    [50.0000, 2.5000, 0.0000, 56.0000, -27.0000, -3.0000, 31.9030],
    [50.0000, 2.5000, 0.0000, 58.0000, 24.0000, 15.0000, 19.4535],
    [50.0000, 2.5000, 0.0000, 50.0000, 3.1736, 0.5854, 1.0000],
    [50.0000, 2.5000, 0.0000, 50.0000, 3.2972, 0.0000, 1.0000],
    [50.0000, 2.5000, 0.0000, 50.0000, 1.8634, 0.5757, 1.0000],
    [50.0000, 2.5000, 0.0000, 50.0000, 3.2592, 0.3350, 1.0000],
    [60.2574, -34.0099, 36.2677, 60.4626, -34.1751, 39.4387, 1.2644],
    [63.0109, -31.0961, -5.8663, 62.8187, -29.7946, -4.0864, 1.2630],
    [61.2901, 3.7196, -5.3901, 61.4292, 2.2480, -4.9620, 1.8731],
    [35.0831, -44.1164, 3.7933, 35.0232, -40.0716, 1.5901, 1.8645],
    [22.7233, 20.0904, -46.6940, 23.0331, 14.9730, -42.5619, 2.0373],
    [36.4612, 47.8580, 18.3852, 36.2715, 50.5065, 21.2231, 1.4146],
    [90.8027, -2.0831, 1.4410, 91.1528, -1.6435, 0.0447, 1.4441],
    [90.9257, -0.5406, -0.9208, 88.6381, -0.8985, -0.7239, 1.5381],
    [6.7747, -0.2908, -2.4247, 5.8714, -0.0985, -2.2286, 0.6377],
    [2.0776, 0.0795, -1.1350, 0.9033, -0.0636, -0.5514, 0.9082],
])


# -- CIEDE2000 ------------------------------------------------------------------------------------
def test_ciede2000_matches_the_34_published_pairs_both_ways():
    lab1, lab2, expected = SHARMA_PAIRS[:, :3], SHARMA_PAIRS[:, 3:6], SHARMA_PAIRS[:, 6]
    assert len(expected) == 34
    np.testing.assert_allclose(ciede2000(lab1, lab2), expected, atol=1e-4)
    np.testing.assert_allclose(ciede2000(lab2, lab1), expected, atol=1e-4)


def test_ciede2000_is_zero_on_equal_colours_and_works_on_images():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    lab = rgb_to_lab(img)
    assert lab.shape == (7, 5, 3) and np.all(ciede2000(lab, lab) == 0)
    # pure sRGB red against black: the red's own CIELAB (53.24, 80.09, 67.20) against (0, 0, 0)
    red = rgb_to_lab(np.array([[[255, 0, 0]]], np.uint8))[0, 0]
    np.testing.assert_allclose(red, [53.24, 80.09, 67.20], atol=0.02)
    assert ciede2000(red, np.zeros(3)) == pytest.approx(50.39, abs=0.05)


# -- the demo's attribute plates -----------------------------------------------------------------
CUP = 100205  # demo image index 2 (seed 0): a red cup, fully visible


def _demo_object(ann_id: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, bytes]:
    """(camera pixels before JPEG, the object's annotated mask, its exact visible mask before the
    polygons, the demo JPEG) of a demo object."""
    from pycocotools import mask as mask_api

    from refcoco_edit.demo.image import _annotate, _paint, make_image
    from refcoco_edit.demo.layout import FIRST_IMAGE_ID

    index = ann_id // 100 - FIRST_IMAGE_ID
    scene, pixels, books = _paint(0, index)
    anns = {a["id"]: a for a in _annotate(scene, books, FIRST_IMAGE_ID + index)}
    h, w = pixels.shape[:2]
    m = mask_api.decode(mask_api.merge(mask_api.frPyObjects(anns[ann_id]["segmentation"], h, w))).astype(bool)
    visible = next(o.visible for o in scene.objs if o.ann["id"] == ann_id)
    return pixels, m, visible, make_image(0, index)[0]


@pytest.fixture(scope="module")
def cup() -> Tuple[np.ndarray, np.ndarray, np.ndarray, bytes]:
    return _demo_object(CUP)


def test_attribute_plates_change_the_object_and_nothing_else(cup):
    """Before the JPEG: every pixel farther than the 1-px soft edge + the camera's lens blur from
    the object is the demo image's, bit for bit; the object's own pixels change."""
    from refcoco_edit.demo import render_attribute_plates

    pixels, m, visible, _ = cup
    plates = render_attribute_plates(CUP, ["blue", "white", "wooden", "glass"], seed=0, jpeg=False)
    # its 1-px soft edge (3x3 blur) and the lens blur's 5x5 kernel: 3 px in each direction, diagonals too
    near = cv2.dilate(visible.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    core = erode(m, 2)
    for target, plate in plates.items():
        assert plate.shape == pixels.shape and plate.dtype == np.uint8
        assert np.array_equal(plate[~near], pixels[~near]), target
        moved = np.abs(plate.astype(int) - pixels.astype(int)).max(axis=2)
        assert (moved[core] > 12).mean() > 0.5, target   # the cup's body changed (its coffee may not)
    lab = rgb_to_lab(plates["blue"])[core]
    src = rgb_to_lab(pixels)[core]
    assert np.median(lab[:, 2]) < -25 and np.median(src[:, 1]) > 30   # red -> blue
    white = rgb_to_lab(plates["white"])[core]
    assert np.median(white[:, 0]) > np.median(src[:, 0]) + 15 and np.median(np.hypot(white[:, 1], white[:, 2])) < 8


def test_attribute_plate_keeps_the_shading_and_matches_the_demo_jpeg(cup):
    """The plate in a colour keeps the object's shading (a red->blue plate's lightness
    follows the source's); with the JPEG, 8x8 blocks away from the object are the demo file's."""
    from refcoco_edit.demo import render_attribute_plate
    from refcoco_edit.imageio import decode_image_bytes

    _, m, visible, jpeg_bytes = cup
    plate = render_attribute_plate(CUP, "green", seed=0)
    demo = decode_image_bytes(jpeg_bytes)
    far = ~dilate(visible, 24)
    assert np.array_equal(plate[far], demo[far])
    core = erode(m, 3)
    ls, lp = rgb_to_lab(demo)[core][:, 0], rgb_to_lab(plate)[core][:, 0]
    assert np.corrcoef(ls, lp)[0, 1] > 0.8


def test_attribute_plate_refuses_unknown_targets_and_objects():
    from refcoco_edit.demo import render_attribute_plate

    with pytest.raises(ValueError, match="unknown attribute"):
        render_attribute_plate(CUP, "plaid")
    with pytest.raises(ValueError, match="not the annotation id"):
        render_attribute_plate(42, "blue")


# -- the recolouring ------------------------------------------------------------------------------
def _demo_request(ann_id: int, target: str, seed: int = 0, vary: bool = False):
    """(image, mask, EditRequest) of an attribute edit of a demo object, as the build makes it."""
    from refcoco_edit.imageio import decode_image_bytes
    from refcoco_edit.pipelines.base import EditRequest

    _, m, _, jpeg_bytes = _demo_object(ann_id)
    image = decode_image_bytes(jpeg_bytes)
    ys, xs = np.nonzero(m)
    req = EditRequest(sample_id=f"ann{ann_id}", edit_type="attribute", image=image, mask=m,
                      bbox=[int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1],
                      prompt=f"make it {target}", edit_phrase=target, edit_target=target, seed=seed, vary=vary)
    return image, m, req


def _hue(lab: np.ndarray) -> float:
    return float(np.degrees(np.arctan2(np.median(lab[:, 2]), np.median(lab[:, 1]))) % 360.0)


@pytest.mark.parametrize("target", ["blue", "green", "white"])
def test_recolour_keeps_the_luminance_structure_and_reaches_the_target(cup, target):
    """Red cup -> target: L inside M follows the source's (shading, coffee; for white, whose
    stripe is white too, the true plate's), the body takes the target's hue (white: its
    lightness, the shading kept, not a flat fill)."""
    from refcoco_edit.demo import render_attribute_plate
    from refcoco_edit.pipelines.recolor import Recolor
    from refcoco_edit.vocab import COLOURS

    image, m, req = _demo_request(CUP, target)
    out = Recolor().generate(req).image
    core = erode(m, 2)
    ls, lo = rgb_to_lab(image)[core], rgb_to_lab(out)[core]
    want = rgb_to_lab(np.array([[COLOURS[target]]], np.uint8))[0, 0]
    if target == "white":
        lp = rgb_to_lab(render_attribute_plate(CUP, "white"))[core]
        assert np.corrcoef(lp[:, 0], lo[:, 0])[0, 1] > 0.9
        assert np.percentile(lo[:, 0], 90) > 80 and np.median(np.hypot(lo[:, 1], lo[:, 2])) < 8
        assert lo[:, 0].std() > 0.6 * ls[:, 0].std()   # the shading stays
    else:
        assert np.corrcoef(ls[:, 0], lo[:, 0])[0, 1] > 0.9
        dh = abs((_hue(lo) - _hue(want[None]) + 180.0) % 360.0 - 180.0)
        assert dh < 20


def test_recolour_beats_the_former_one_against_the_plates(cup):
    """The yardstick in small: on the demo's red cup, CIEDE2000 to the true plate inside M is lower
    and the luminance SSIM higher than the former recolouring's (method=lab), for a light, a
    dark and a saturated target."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from perf.bench_recolor import compare

    from refcoco_edit.demo import render_attribute_plates
    from refcoco_edit.pipelines.recolor import Recolor

    targets = ["white", "black", "blue"]
    plates = render_attribute_plates(CUP, targets, seed=0)
    for t in targets:
        image, m, req = _demo_request(CUP, t)
        new = compare(Recolor().generate(req).image, plates[t], m)
        old = compare(Recolor(method="lab").generate(req).image, plates[t], m)
        assert new["de"] < old["de"] and new["ssim_l"] > old["ssim_l"], (t, new, old)


def test_recolour_is_deterministic_and_its_variations_are_distinct(cup):
    from refcoco_edit.pipelines.recolor import Recolor

    pipe = Recolor()
    _, m, req = _demo_request(CUP, "blue", seed=3)
    a, b = pipe.generate(req).image, pipe.generate(req).image
    assert np.array_equal(a, b)
    _, _, r1 = _demo_request(CUP, "blue", seed=3, vary=True)
    _, _, r2 = _demo_request(CUP, "blue", seed=4, vary=True)
    v1, v2 = pipe.generate(r1), pipe.generate(r2)
    assert "variation" in v1.params and v1.params["variation"] != v2.params["variation"]
    assert not np.array_equal(v1.image, a) and not np.array_equal(v1.image, v2.image)
    assert np.array_equal(pipe.generate(r1).image, v1.image)


def _two_tone(h: int = 90, w: int = 80) -> Tuple[np.ndarray, np.ndarray]:
    """A 'person': a light shirt over a dark jacket, one smooth shading across both, and a face-like
    pattern of dark dots on the shirt; on a grey background."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.full((h, w, 3), 120, np.float32)
    m = ((xx - 40) / 30) ** 2 + ((yy - 45) / 40) ** 2 <= 1.0
    shade = np.clip(1.05 - 0.6 * np.hypot(xx - 30, yy - 30) / 50.0, 0.3, 1.0)
    albedo = np.where((xx < 40)[..., None], np.float32([0.85, 0.8, 0.75]), np.float32([0.09, 0.09, 0.11]))
    dots = (((xx - 28) % 9 < 2) & ((yy - 20) % 9 < 2) & (xx < 38))[..., None]
    albedo = np.where(dots, albedo * 0.3, albedo)
    img = np.where(m[..., None], 255.0 * albedo * shade[..., None], img)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), m


def test_golden_keeps_features_and_lifts_dark_cloth_not_a_stencil():
    """The issue's 'golden man': a dark jacket becomes gold (not black), the white shirt is not
    blown out (the former path, lit by luminance over its median, clipped it to white) and the
    shirt's dots stay visible."""
    from refcoco_edit.pipelines.base import EditRequest
    from refcoco_edit.pipelines.recolor import Recolor

    img, m = _two_tone()
    req = EditRequest("s", "attribute", img, m, [10, 5, 60, 80], "p", "golden", "golden", 0)
    new, old = (rgb_to_lab(Recolor(**kw).generate(req).image) for kw in ({}, {"method": "lab"}))
    jacket = erode(m, 3) & (np.arange(m.shape[1])[None, :] > 44)
    shirt = erode(m, 3) & (np.arange(m.shape[1])[None, :] < 36)
    assert np.median(new[jacket][:, 0]) > 28 and np.median(new[jacket][:, 2]) > 20   # gold: yellow, b* > 0
    assert np.median(new[shirt][:, 0]) < 96 < np.median(old[shirt][:, 0])
    yy, xx = np.mgrid[0:m.shape[0], 0:m.shape[1]]
    dots = (((xx - 28) % 9 < 2) & ((yy - 20) % 9 < 2) & (xx < 38)) & erode(m, 3)
    around = dilate(dots, 2) & ~dots & erode(m, 3) & (xx < 38)
    assert np.median(new[around][:, 0]) - np.median(new[dots][:, 0]) > 10
