"""The removal fill (``pipelines/fill.py``) and its texture yardstick.

``texture_stats`` is 1.0 for the clean plate itself, ranks a blurred fill below it (where PSNR
ranks the blur *above* a copy of the right texture: why the yardstick exists), and a plausible
copy of the texture above the blur; noise of the wrong strength does not pass for texture.
``remove_fill`` changes only the hole, never reads the excluded pixels, and its patch method on a
real demo removal keeps more of the floor's texture than a Telea fill.
"""
from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

from refcoco_edit.pipelines.fill import FILL_METHODS, remove_fill, texture_stats


def _planks(h: int = 160, w: int = 200, seed: int = 0) -> np.ndarray:
    """A wood-like floor: planks with dark seams, wavy grain and sensor noise (RGB uint8)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    grain = 0.5 + 0.5 * np.sin(2 * np.pi * (yy / 7.0 + 0.15 * np.sin(xx / 23.0)))
    seam = (np.mod(yy, 24) < 1.5).astype(np.float32)
    lum = 150 * (1 - 0.18 * grain ** 2) * (1 - 0.5 * seam) + rng.normal(0, 2.0, (h, w))
    img = np.stack([lum * 1.0, lum * 0.78, lum * 0.55], axis=2)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _disc(h: int, w: int, cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _psnr(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    d = a[region].astype(np.float64) - b[region].astype(np.float64)
    return float(10 * np.log10(255.0 ** 2 / max(np.mean(d * d), 1e-10)))


def test_texture_is_one_for_the_plate_and_ranks_blur_below_a_texture_copy():
    plate = _planks()
    region = _disc(*plate.shape[:2], 80, 100, 30)
    assert texture_stats(plate, plate, region) == {"detail": 1.0, "texture": 1.0}

    blurred = plate.copy()
    blurred[region] = cv2.GaussianBlur(plate, (0, 0), 3.0)[region]
    # a plausible copy: the same floor from two planks further, out of phase with the plate (its
    # seams and grain lines fall elsewhere: a real fill never hits the exact phase)
    copy_shifted = plate.copy()
    copy_shifted[region] = np.roll(plate, (51, 11), axis=(0, 1))[region]
    assert not np.array_equal(copy_shifted[region], plate[region])
    t_blur, t_copy = texture_stats(blurred, plate, region), texture_stats(copy_shifted, plate, region)
    assert t_blur["texture"] < 0.6 and t_blur["detail"] < 0.5
    assert t_copy["texture"] > 0.85 and 0.8 < t_copy["detail"] < 1.25
    assert t_copy["texture"] > t_blur["texture"] + 0.3
    # PSNR prefers the blur: it does not see texture
    assert _psnr(blurred, plate, region) > _psnr(copy_shifted, plate, region)


def test_noise_of_the_wrong_strength_is_not_texture():
    plate = _planks()
    region = _disc(*plate.shape[:2], 80, 100, 30)
    rng = np.random.default_rng(3)
    flat = plate.copy()
    flat[region] = cv2.GaussianBlur(plate, (0, 0), 6.0)[region]
    noisy = flat.astype(np.float32)
    noisy[region] += rng.normal(0, 50.0, (int(region.sum()), 3))
    noisy = np.clip(noisy, 0, 255).astype(np.uint8)
    copy = plate.copy()
    copy[region] = np.roll(plate, (51, 11), axis=(0, 1))[region]
    t_noise = texture_stats(noisy, plate, region)
    # as much fine energy as the plate (detail about 1), but not its gradients: texture says so
    assert t_noise["detail"] > 0.9
    assert t_noise["texture"] < 0.4 < texture_stats(copy, plate, region)["texture"] - 0.4


def test_texture_stats_checks_its_inputs():
    plate = _planks(40, 40)
    with pytest.raises(ValueError, match="empty"):
        texture_stats(plate, plate, np.zeros((40, 40), bool))
    with pytest.raises(ValueError, match="do not match"):
        texture_stats(plate[:20], plate, np.ones((40, 40), bool))


BUILT_IN = ("patch", "telea", "ns")  # FILL_METHODS less the optional pypatchmatch


def _red_neighbour_scene():
    img = _planks(120, 140)
    hole = _disc(120, 140, 60, 60, 16)
    # a red neighbour touching the hole: excluded, it must not bleed into the fill
    other = _disc(120, 140, 60, 88, 12) & ~hole
    img[other] = (230, 20, 20)
    return img, hole, other


@pytest.mark.parametrize("method", BUILT_IN)
def test_remove_fill_changes_only_the_hole_and_never_reads_the_excluded_pixels(method):
    assert set(BUILT_IN) < set(FILL_METHODS)
    img, hole, other = _red_neighbour_scene()
    out = remove_fill(img, hole, exclude=other, rng=np.random.default_rng(0), method=method)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.array_equal(out[~hole], img[~hole])
    r, g = out[hole][:, 0].astype(int), out[hole][:, 1].astype(int)
    assert np.max(r - g) < 90, "the excluded red object leaked into the fill"
    # the same neighbour not excluded does leak for the diffusion fills (the exclusion is what stops it)
    if method != "patch":
        leaky = remove_fill(img, hole, method=method)
        assert np.max(leaky[hole][:, 0].astype(int) - leaky[hole][:, 1].astype(int)) > np.max(r - g)


def test_remove_fill_pypatchmatch_fills_only_the_hole_and_is_seeded():
    img, hole, other = _red_neighbour_scene()
    out = remove_fill(img, hole, exclude=other, rng=np.random.default_rng(0), method="pypatchmatch")
    assert np.array_equal(out[~hole], img[~hole])
    assert np.max(out[hole][:, 0].astype(int) - out[hole][:, 1].astype(int)) < 90
    assert np.array_equal(out, remove_fill(img, hole, exclude=other, rng=np.random.default_rng(0), method="pypatchmatch"))
    assert not np.array_equal(out, remove_fill(img, hole, exclude=other, rng=np.random.default_rng(1),
                                               method="pypatchmatch"))


def test_pypatchmatch_is_installed_with_the_package_on_python_3_11_and_later():
    """setup.cfg's ``pypatchmatch; python_version >= "3.11"``: where the wheel exists, ``auto`` is it."""
    from refcoco_edit.pipelines.fill import default_method, pypatchmatch_available

    if sys.version_info >= (3, 11):
        assert pypatchmatch_available() and default_method() == "pypatchmatch"
    else:
        assert default_method() == "patch"


def test_without_pypatchmatch_auto_is_the_patch_fill_and_asking_for_it_says_how_to_get_it(monkeypatch):
    from refcoco_edit.pipelines.classical import ExemplarComposite, InpaintRemoval
    from refcoco_edit.pipelines.fill import default_method, resolve_method

    monkeypatch.setitem(sys.modules, "patchmatch", None)  # `import patchmatch` fails as where not installed
    assert default_method() == "patch" and resolve_method("auto") == "patch"
    assert InpaintRemoval().params["method"] == "patch" and InpaintRemoval().params["patch_size"] == 7
    assert ExemplarComposite().params["fill"] == "patch"
    img, hole, other = _red_neighbour_scene()
    with pytest.raises(ImportError, match="pip install pypatchmatch"):
        remove_fill(img, hole, exclude=other, method="pypatchmatch")
    with pytest.raises(ValueError, match="pip install pypatchmatch"):
        InpaintRemoval(method="pypatchmatch")
    with pytest.raises(ValueError, match="pip install pypatchmatch"):
        ExemplarComposite(fill="pypatchmatch")


def test_auto_records_the_fill_it_stands_for():
    from refcoco_edit.pipelines.classical import ExemplarComposite, InpaintRemoval
    from refcoco_edit.pipelines.fill import DEFAULT_PATCH, default_method

    m = default_method()
    removal = InpaintRemoval()
    assert removal.params["method"] == m and removal.params["patch_size"] == DEFAULT_PATCH[m]
    assert InpaintRemoval(method="auto", patch_size=9).params["patch_size"] == 9
    assert ExemplarComposite().params["fill"] == m and ExemplarComposite(fill="telea").params["fill"] == "telea"
    for bad in ("lama", "PATCH"):
        with pytest.raises(ValueError, match="must be one of"):
            InpaintRemoval(method=bad)
    with pytest.raises(ValueError, match="patch_size"):
        InpaintRemoval(patch_size=1)


def test_remove_fill_patch_is_patch_inpaint_and_seeded():
    from refcoco_edit.pipelines.patch_inpaint import patch_inpaint

    img = _planks(100, 120)
    hole = _disc(100, 120, 50, 60, 14)
    a = remove_fill(img, hole, rng=np.random.default_rng(5))
    assert np.array_equal(a, patch_inpaint(img, hole, np.random.default_rng(5)))
    assert np.array_equal(a, remove_fill(img, hole, rng=np.random.default_rng(5)))
    assert np.array_equal(remove_fill(img, np.zeros_like(hole)), img)
    with pytest.raises(ValueError, match="method"):
        remove_fill(img, hole, method="lama")
    with pytest.raises(ValueError, match="hole"):
        remove_fill(img, hole[:10])


def test_patch_fill_keeps_more_texture_than_telea_on_a_demo_removal():
    """A real demo removal (a mug on the plank floor, demo image 0) against its clean plate."""
    from pycocotools import mask as mask_utils

    from refcoco_edit.demo import render_clean_plate
    from refcoco_edit.demo.image import make_image
    from refcoco_edit.imageio import decode_image_bytes

    jpeg, info, anns, _ = make_image(0, 0)
    image = decode_image_bytes(jpeg)
    H, W = image.shape[:2]

    def decode(a):
        seg = a["segmentation"]
        rles = mask_utils.frPyObjects(seg, H, W)
        return mask_utils.decode(mask_utils.merge(rles) if isinstance(rles, list) else rles).astype(bool)

    target = next(a for a in anns if a["id"] == 100000)
    mask = decode(target)
    others = np.zeros_like(mask)
    for a in anns:
        if a["id"] != target["id"] and not a.get("iscrowd", 0):
            others |= decode(a)
    others &= ~mask
    hole = cv2.dilate(mask.astype(np.uint8), np.ones((11, 11), np.uint8)).astype(bool) & ~others
    exclude = cv2.dilate(others.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    plate = render_clean_plate(100000)
    stats = {m: texture_stats(remove_fill(image, hole, exclude=exclude, rng=np.random.default_rng(0), method=m),
                              plate, mask) for m in ("patch", "telea")}
    assert stats["patch"]["texture"] > stats["telea"]["texture"] + 0.1
    assert stats["patch"]["detail"] > stats["telea"]["detail"] + 0.1
