"""Classical CPU ground-truth pipelines (pipelines.classical) on synthetic scenes with known masks."""
from __future__ import annotations

import colorsys
from typing import Dict, Optional, Tuple

import cv2
import numpy as np
import pytest

from refcoco_edit.pipelines.base import EditRequest, PipelineError, get_pipeline
from refcoco_edit.pipelines.classical import ExemplarComposite, InpaintRemoval, clean_exemplar
from refcoco_edit.pipelines.recolor import Recolor
from refcoco_edit.pipelines.masks import dilate, erode
from refcoco_edit.vocab import COLOURS, MATERIALS

H, W = 240, 320


# -- synthetic scenes -----------------------------------------------------------------------------
def make_scene(seed: int = 0) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """A sky/grass background with texture and a few shaded objects; returns (image, masks)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    horizon = int(H * 0.4)
    sky = np.array([150, 185, 225], np.float32) + (yy[..., None] / H) * np.array([40, 30, 10], np.float32)
    grass = np.array([70, 120, 50], np.float32) + 25 * np.sin(xx / 11.0 + yy / 17.0)[..., None] * np.array(
        [0.4, 1.0, 0.3], np.float32)
    img = np.where((yy < horizon)[..., None], sky, grass)
    noise = cv2.GaussianBlur(rng.standard_normal((H, W)).astype(np.float32), (0, 0), 1.2) * 12
    img = img + noise[..., None]
    masks: Dict[str, np.ndarray] = {}

    def add(name: str, mask: np.ndarray, colour: Tuple[int, int, int]) -> None:
        ys, xs = np.nonzero(mask)
        cx = xs.min() + 0.3 * np.ptp(xs)
        cy = ys.min() + 0.3 * np.ptp(ys)
        r = np.hypot(xx - cx, yy - cy) / max(np.ptp(xs), np.ptp(ys), 1)
        shade = np.clip(1.15 - 0.9 * r, 0.35, 1.2)
        obj = np.array(colour, np.float32) * shade[..., None] + 0.5 * noise[..., None]
        img[mask] = obj[mask]
        masks[name] = mask

    def canvas() -> np.ndarray:
        return np.zeros((H, W), np.uint8)

    m = canvas(); cv2.ellipse(m, (100, 150), (45, 35), 0, 0, 360, 1, -1); add("red", m.astype(bool), (210, 40, 40))
    m = canvas(); cv2.rectangle(m, (210, 110), (260, 200), 1, -1); add("blue", m.astype(bool), (40, 70, 200))
    m = canvas(); cv2.ellipse(m, (305, 50), (30, 22), 0, 0, 360, 1, -1); add("border", m.astype(bool), (230, 200, 40))
    m = canvas(); cv2.circle(m, (40, 215), 2, 1, -1); add("tiny", m.astype(bool), (250, 250, 250))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), masks


def make_exemplar(seed: int = 1, h: int = 80, w: int = 60) -> np.ndarray:
    """An RGBA cut-out (a striped brown 'animal') with junk colours where alpha is 0."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    a = np.zeros((h, w), np.uint8)
    cv2.ellipse(a, (w // 2, int(h * 0.6)), (w // 2 - 4, int(h * 0.3)), 0, 0, 360, 255, -1)
    cv2.circle(a, (w // 2, int(h * 0.22)), w // 5, 255, -1)
    a[2, 2] = 255  # a stray speck: cleaning must drop it
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    s = np.clip(1.1 - 0.8 * np.hypot(xx - w * 0.35, yy - h * 0.3) / h, 0.4, 1.1)
    body = np.array([150, 95, 50], np.float32) * s[..., None] - (np.sin(xx / 2.0) > 0.6)[..., None] * 40
    body = np.clip(body, 0, 255).astype(np.uint8)
    rgb[a > 0] = body[a > 0]
    return np.dstack([rgb, a])


@pytest.fixture(scope="module")
def scene() -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    return make_scene()


@pytest.fixture(scope="module")
def exemplar() -> np.ndarray:
    return make_exemplar()


def request(scene, edit_type: str, obj: str, target: str = "", seed: int = 0,
            exemplar: Optional[np.ndarray] = None) -> EditRequest:
    img, masks = scene
    m = masks[obj]
    ys, xs = np.nonzero(m)
    return EditRequest(
        sample_id=f"test-{obj}", edit_type=edit_type, image=img, mask=m,
        bbox=[float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)],
        prompt=f"{edit_type} the {obj} object", edit_phrase=target, edit_target=target, seed=seed,
        category="thing", exemplar=exemplar,
    )


CASES = [
    ("classical-remove", "remove", "red", ""),
    ("classical-remove", "remove", "border", ""),
    ("classical-replace", "replace", "red", "dog"),
    ("classical-replace", "replace", "border", "dog"),
    ("classical-attribute", "attribute", "red", "blue"),
    ("classical-attribute", "attribute", "blue", "wooden"),
]


def run_case(scene, exemplar, name, edit_type, obj, target, seed=0, **kwargs):
    pipe = get_pipeline(name, **kwargs)
    ex = exemplar if pipe.needs_exemplar else None
    req = request(scene, edit_type, obj, target, seed=seed, exemplar=ex)
    return pipe, req, pipe([req])[0]


def hue_deg(rgb) -> float:
    r, g, b = (float(c) / 255.0 for c in rgb)
    return 360.0 * colorsys.rgb_to_hsv(r, g, b)[0]


def hue_dist(a: float, b: float) -> float:
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d)


# -- registry -------------------------------------------------------------------------------------
def test_registry_builds_classical_pipelines():
    assert isinstance(get_pipeline("classical-remove"), InpaintRemoval)
    assert isinstance(get_pipeline("classical-replace"), ExemplarComposite)
    assert isinstance(get_pipeline("classical-attribute", shading_gain=0.8), Recolor)


def test_registry_typo_did_you_mean():
    with pytest.raises(KeyError, match="did you mean 'classical-remove'"):
        get_pipeline("classical-remov")


# -- the contract, for every pipeline -------------------------------------------------------------
@pytest.mark.parametrize("name,edit_type,obj,target", CASES)
def test_contract(scene, exemplar, name, edit_type, obj, target):
    img, masks = scene
    _, _, out = run_case(scene, exemplar, name, edit_type, obj, target)
    assert out.image.shape == img.shape and out.image.dtype == np.uint8
    assert out.edit_mask.shape == img.shape[:2] and out.edit_mask.dtype == bool
    m_e = out.edit_mask
    assert np.array_equal(out.image[~m_e], img[~m_e])  # bit-exact outside M_e
    assert masks[obj][m_e].sum() == masks[obj].sum() and not np.any(masks[obj] & ~m_e)  # M ⊆ M_e
    diff = np.abs(out.image.astype(int) - img.astype(int)).max(axis=2)
    assert (diff[m_e] > 8).mean() > 0.2  # clearly differs inside
    assert out.params and "stats" in out.params


@pytest.mark.parametrize("name,edit_type,obj,target", CASES)
def test_determinism(scene, exemplar, name, edit_type, obj, target):
    _, _, a = run_case(scene, exemplar, name, edit_type, obj, target, seed=7)
    _, _, b = run_case(scene, exemplar, name, edit_type, obj, target, seed=7)
    assert a.image.tobytes() == b.image.tobytes()
    assert np.array_equal(a.edit_mask, b.edit_mask)
    assert a.params == b.params


def test_different_seed_changes_grain(scene, exemplar):
    _, _, a = run_case(scene, exemplar, "classical-remove", "remove", "red", "", seed=1)
    _, _, b = run_case(scene, exemplar, "classical-remove", "remove", "red", "", seed=2)
    assert a.image.tobytes() != b.image.tobytes()
    assert np.array_equal(a.edit_mask, b.edit_mask)


VARIATION_CASES = CASES + [("classical-attribute", "attribute", "blue", "white"), ("classical-attribute", "attribute", "red", "black"),
                           ("classical-attribute", "attribute", "red", "glass")]


@pytest.mark.parametrize("name,edit_type,obj,target", VARIATION_CASES)
def test_variations_are_other_images_and_keep_the_contract(scene, exemplar, name, edit_type, obj, target):
    """``vary`` (a sample's candidates after the first): every seed gives another image, each
    one bit-exact outside its M_e, the drawn values in params; the canonical edit (``vary``
    False) is the same with or without the variation machinery, whatever other seeds ran."""
    import dataclasses

    img, masks = scene
    # the removal: patch filling (the default) on the small object, Telea on the big one (fast either way)
    pipe = get_pipeline(name, **({"method": "telea"} if name == "classical-remove" and obj == "red" else {}))
    req = request(scene, edit_type, obj, target, seed=3, exemplar=exemplar if pipe.needs_exemplar else None)
    canonical = pipe([req])[0]
    outs = [pipe([dataclasses.replace(req, seed=s, vary=True)])[0] for s in (3, 11, 12)]
    images = [canonical.image.tobytes()] + [o.image.tobytes() for o in outs]
    assert len(set(images)) == len(images), "a variation gave the pixels of another candidate"
    for o in outs:
        assert np.array_equal(o.image[~o.edit_mask], img[~o.edit_mask])
        assert not np.any(masks[obj] & ~o.edit_mask)
        assert o.params["variation"], o.params
    assert "variation" not in canonical.params
    assert pipe([req])[0].image.tobytes() == canonical.image.tobytes()


def test_colour_variation_keeps_the_colour_name(scene, exemplar):
    """A recolouring's variations turn its Lab hue by 3-9 degrees: other shades of the target
    colour, never another colour."""
    import dataclasses

    img, masks = scene
    m = erode(masks["red"], 4)
    pipe = get_pipeline("classical-attribute")
    req = request(scene, "attribute", "red", "blue", seed=0)

    def lab_hue(out) -> float:
        lab = cv2.cvtColor(out.image.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)[m]
        return float(np.degrees(np.arctan2(np.median(lab[:, 2]), np.median(lab[:, 1]))))

    base = lab_hue(pipe([req])[0])
    for seed in range(5):
        out = pipe([dataclasses.replace(req, seed=seed, vary=True)])[0]
        assert 1.0 < hue_dist(lab_hue(out), base) < 12.0, (seed, lab_hue(out), base, out.params["variation"])
        assert hue_dist(hue_deg(np.median(out.image[m], axis=0)), 240.0) < 30.0  # still blue


def test_params_record_init_kwargs(scene, exemplar):
    _, _, out = run_case(scene, exemplar, "classical-replace", "replace", "red", "dog", scale=0.8, clone_mode="mixed")
    assert out.params["scale"] == 0.8 and out.params["clone_mode"] == "mixed"
    assert out.params["anchor"] == "bottom" and isinstance(out.params["dilate_px"], int)


# -- common input checks --------------------------------------------------------------------------
@pytest.mark.parametrize("name,edit_type", [("classical-remove", "remove"), ("classical-replace", "replace"),
                                            ("classical-attribute", "attribute")])
def test_check_inputs_empty_mask(scene, exemplar, name, edit_type):
    img, _ = scene
    pipe = get_pipeline(name)
    req = EditRequest("s", edit_type, img, np.zeros(img.shape[:2], bool), [0, 0, 0, 0], "p", "blue", "blue", 0,
                      exemplar=exemplar)
    with pytest.raises(PipelineError) as e:
        pipe.check_inputs(req)
    assert e.value.reason == "empty_mask"
    with pytest.raises(PipelineError):
        pipe.generate(req)


def test_wrong_edit_type_rejected(scene):
    with pytest.raises(PipelineError) as e:
        get_pipeline("classical-remove").check_inputs(request(scene, "attribute", "red", "blue"))
    assert e.value.reason == "pipeline_error"


# -- removal --------------------------------------------------------------------------------------
@pytest.mark.parametrize("obj", ["red", "blue", "border"])
def test_remove_moves_colour_toward_background(scene, exemplar, obj):
    img, masks = scene
    m = masks[obj]
    _, _, out = run_case(scene, exemplar, "classical-remove", "remove", obj, "")
    ring = dilate(m, 25) & ~dilate(m, 10)
    for other in masks.values():
        ring &= ~dilate(other, 3)
    bg = img[ring].astype(float).mean(axis=0)
    before = np.linalg.norm(img[m].astype(float).mean(axis=0) - bg)
    after = np.linalg.norm(out.image[m].astype(float).mean(axis=0) - bg)
    assert after < 0.5 * before


def test_remove_large_mask_is_coarse_to_fine_and_seamless(scene, exemplar):
    img, _ = scene
    big = np.zeros(img.shape[:2], np.uint8)
    cv2.ellipse(big, (160, 150), (90, 60), 0, 0, 360, 1, -1)
    req = EditRequest("s", "remove", img, big.astype(bool), [70, 90, 181, 121], "p", "", "", 3)
    out = InpaintRemoval(max_direct_px=2000).generate(req)
    assert np.array_equal(out.image[~out.edit_mask], img[~out.edit_mask])
    # no hard seam: across the M_e border the jump is like the background's own texture
    edge = out.edit_mask & ~erode(out.edit_mask, 1)
    outside = dilate(out.edit_mask, 1) & ~out.edit_mask
    jump = abs(out.image[edge].astype(float).mean() - img[outside].astype(float).mean())
    assert jump < 20


# -- replacement ----------------------------------------------------------------------------------
def _pasted(out, img) -> np.ndarray:
    x, y, w, h = out.params["placement"]
    return np.array([x, y, x + w, y + h])


def test_replace_pastes_inside_source_box(scene, exemplar):
    img, masks = scene
    _, _, out = run_case(scene, exemplar, "classical-replace", "replace", "red", "dog")
    x0, y0, x1, y1 = _pasted(out, img)
    ys, xs = np.nonzero(masks["red"])
    assert x0 >= xs.min() and x1 <= xs.max() + 1 and y0 >= ys.min() and y1 == ys.max() + 1  # bottom anchored
    assert out.params["blend"] == "normal"
    region = out.image[y0:y1, x0:x1].astype(float)
    # the exemplar's brown shows up where the red object was
    assert region[..., 0].mean() > region[..., 2].mean() + 20
    assert abs(region[..., 0].mean() - region[..., 1].mean()) < 80


def test_replace_stores_cleaned_exemplar(scene, exemplar):
    _, _, out = run_case(scene, exemplar, "classical-replace", "replace", "red", "dog")
    ex = out.exemplar
    assert ex is not None and ex.ndim == 3 and ex.shape[2] == 4 and ex.dtype == np.uint8
    n, _ = cv2.connectedComponents((ex[..., 3] > 0).astype(np.uint8))
    assert n == 2  # background + one blob: the stray speck is gone
    assert ex.shape[0] < exemplar.shape[0]  # cropped to the blob


@pytest.mark.parametrize("obj,scale,anchor", [("border", 1.0, "bottom"), ("border", 1.8, "bottom"),
                                              ("border", 1.8, "center"), ("tiny", 1.0, "bottom"),
                                              ("tiny", 3.0, "center")])
def test_replace_at_border_and_tiny(scene, exemplar, obj, scale, anchor):
    img, masks = scene
    _, _, out = run_case(scene, exemplar, "classical-replace", "replace", obj, "dog", scale=scale, anchor=anchor)
    x0, y0, x1, y1 = _pasted(out, img)
    assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
    assert np.array_equal(out.image[~out.edit_mask], img[~out.edit_mask])
    assert out.edit_mask[masks[obj]].all()
    diff = np.abs(out.image.astype(int) - img.astype(int)).max(axis=2)
    assert diff[y0:y1, x0:x1].max() > 8  # something was pasted
    if obj == "tiny" and scale == 1.0:
        assert out.params["blend"] == "alpha"  # too small for Poisson


@pytest.mark.parametrize("mode", ["normal", "mixed", "monochrome", "alpha"])
def test_replace_clone_modes(scene, exemplar, mode):
    img, _ = scene
    _, _, out = run_case(scene, exemplar, "classical-replace", "replace", "blue", "dog", clone_mode=mode)
    assert np.array_equal(out.image[~out.edit_mask], img[~out.edit_mask])


def test_replace_missing_exemplar(scene):
    pipe = get_pipeline("classical-replace")
    req = request(scene, "replace", "red", "dog", exemplar=None)
    with pytest.raises(PipelineError) as e:
        pipe.check_inputs(req)
    assert e.value.reason == "no_exemplar"
    with pytest.raises(PipelineError) as e:
        pipe([req])
    assert e.value.reason == "no_exemplar"


def test_replace_empty_alpha_exemplar(scene, exemplar):
    ex = exemplar.copy()
    ex[..., 3] = 0
    with pytest.raises(PipelineError) as e:
        get_pipeline("classical-replace").check_inputs(request(scene, "replace", "red", "dog", exemplar=ex))
    assert e.value.reason == "no_exemplar"


def test_clean_exemplar_rgb_without_alpha():
    ex = np.full((10, 12, 3), 50, np.uint8)
    out = clean_exemplar(ex)
    assert out.shape == (10, 12, 4) and (out[..., 3] == 255).all()


def test_replace_bad_options():
    with pytest.raises(ValueError):
        ExemplarComposite(clone_mode="nope")
    with pytest.raises(ValueError):
        ExemplarComposite(anchor="top")


# -- attribute ------------------------------------------------------------------------------------
@pytest.mark.parametrize("target,obj", [("blue", "red"), ("green", "red"), ("red", "blue"), ("yellow", "blue")])
def test_recolor_hue(scene, exemplar, target, obj):
    _, masks = scene
    _, _, out = run_case(scene, exemplar, "classical-attribute", "attribute", obj, target)
    core = erode(masks[obj], 3)
    mean = out.image[core].astype(float).mean(axis=0)
    assert hue_dist(hue_deg(mean), hue_deg(COLOURS[target])) < 15
    assert out.params["kind"] == "colour" and out.params["attribute"] == target


def test_recolor_keeps_shading(scene, exemplar):
    img, masks = scene
    _, _, out = run_case(scene, exemplar, "classical-attribute", "attribute", "red", "blue")
    core = erode(masks["red"], 3)
    before = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[core].astype(float)
    after = cv2.cvtColor(out.image, cv2.COLOR_RGB2GRAY)[core].astype(float)
    assert np.corrcoef(before, after)[0, 1] > 0.9


@pytest.mark.parametrize("target,lo,hi", [("white", 80, 101), ("black", 0, 20), ("gray", 40, 62)])
def test_recolor_neutral_lightness(scene, exemplar, target, lo, hi):
    """The lit body (90th percentile of L) reaches the target's lightness, the rest keeps the
    object's shading (no flat fill: L follows the source's), and the colour is neutral."""
    img, masks = scene
    _, _, out = run_case(scene, exemplar, "classical-attribute", "attribute", "red", target)
    core = erode(masks["red"], 3)
    lab = cv2.cvtColor(out.image.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)[core]
    src = cv2.cvtColor(img.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)[core]
    assert lo <= np.percentile(lab[:, 0], 90) <= hi
    assert np.corrcoef(src[:, 0], lab[:, 0])[0, 1] > 0.95
    assert np.hypot(lab[:, 1].mean(), lab[:, 2].mean()) < 6  # neutral


def test_recolor_grey_alias_and_case(scene, exemplar):
    _, _, out = run_case(scene, exemplar, "classical-attribute", "attribute", "red", " Grey ")
    assert out.params["attribute"] == "gray"


@pytest.mark.parametrize("material", MATERIALS)
def test_materials_change_object(scene, exemplar, material):
    img, masks = scene
    _, _, out = run_case(scene, exemplar, "classical-attribute", "attribute", "red", material, seed=5)
    assert out.params["kind"] == "material"
    m = masks["red"]
    assert np.abs(out.image[m].astype(int) - img[m].astype(int)).mean() > 10
    assert np.array_equal(out.image[~out.edit_mask], img[~out.edit_mask])


def test_recolor_unknown_attribute(scene):
    pipe = get_pipeline("classical-attribute")
    with pytest.raises(PipelineError) as e:
        pipe.check_inputs(request(scene, "attribute", "red", "plaid"))
    assert e.value.reason == "pipeline_error" and "unknown attribute" in str(e.value)


def test_recolor_same_colour_is_no_change():
    img = np.full((60, 80, 3), (90, 140, 70), np.uint8)
    m = np.zeros((60, 80), bool)
    m[15:45, 20:60] = True
    img[m] = COLOURS["red"]
    req = EditRequest("s", "attribute", img, m, [20, 15, 40, 30], "p", "red", "red", 0)
    with pytest.raises(PipelineError) as e:
        Recolor().generate(req)
    assert e.value.reason == "no_change"


# -- removal methods: patch (default) and telea; shadows -----------------------------------------
@pytest.mark.parametrize("method,shadow", [("patch", "auto"), ("patch", "off"), ("telea", "auto"), ("telea", "on")])
@pytest.mark.parametrize("obj", ["red", "border"])
def test_remove_methods_are_bit_exact_outside_me(scene, exemplar, method, shadow, obj):
    img, masks = scene
    _, _, out = run_case(scene, exemplar, "classical-remove", "remove", obj, "", method=method, shadow=shadow)
    m_e = out.edit_mask
    assert np.array_equal(out.image[~m_e], img[~m_e])
    assert not np.any(masks[obj] & ~m_e)
    assert out.params["method"] == method
    assert out.params["shadow"] == shadow
    assert (out.params["shadow_px"] == 0) if shadow == "off" or (shadow, method) == ("auto", "telea") else True


def test_telea_method_keeps_the_former_pixels(scene):
    """method=telea is the former remover: same M_e, same fill, same grain, byte for byte."""
    from refcoco_edit.pipelines.classical import _removal_dilate_px, finish_output, inpaint
    from refcoco_edit.pipelines.masks import edit_mask

    img, masks = scene
    req = request(scene, "remove", "red", seed=5)
    out = InpaintRemoval(method="telea").generate(req)
    dp = _removal_dilate_px(masks["red"], 0.03, 5)
    m_e = edit_mask(masks["red"], None, dp)
    old = finish_output(img, inpaint(img, m_e, 5, rng=np.random.default_rng(5), noise=0.8), m_e, min(4, dp), {})
    assert out.image.tobytes() == old.image.tobytes()


def test_remove_bad_method():
    with pytest.raises(ValueError, match="method"):
        InpaintRemoval(method="lama")
    with pytest.raises(ValueError, match="patch_size"):
        InpaintRemoval(patch_size=2)
    with pytest.raises(ValueError, match="shadow"):
        InpaintRemoval(shadow="yes")


def _stripes(h: int = 120, w: int = 160, period: int = 10) -> np.ndarray:
    xx = np.arange(w, dtype=np.float32)[None, :].repeat(h, 0)
    v = 120 + 60 * (np.sin(2 * np.pi * xx / period) > 0)
    return np.clip(np.dstack([v, v * 0.8, v * 0.6]), 0, 255).astype(np.uint8)


def test_patch_fill_continues_a_texture_better_than_telea():
    from refcoco_edit.pipelines.classical import inpaint
    from refcoco_edit.pipelines.patch_inpaint import patch_inpaint

    truth = _stripes()
    hole = np.zeros(truth.shape[:2], bool)
    hole[30:90, 50:110] = True
    img = truth.copy()
    img[hole] = (200, 30, 30)

    def err(out):
        return float(np.mean((out[hole].astype(float) - truth[hole].astype(float)) ** 2))

    patch = patch_inpaint(img, hole, np.random.default_rng(0), lowpass=0.0)
    telea = inpaint(img, hole, 5)
    assert np.array_equal(patch[~hole], img[~hole])
    assert err(patch) < 0.5 * err(telea)
    assert patch.tobytes() == patch_inpaint(img, hole, np.random.default_rng(0), lowpass=0.0).tobytes()


def _shadow_scene():
    """A flat textured floor, a blue box standing on it, its darker cast shadow to the right, and
    a dark red box of another colour touching its other side."""
    rng = np.random.default_rng(0)
    img = np.full((120, 160, 3), (170, 150, 120), np.float32) + rng.normal(0, 2, (120, 160, 1))
    obj = np.zeros((120, 160), bool)
    obj[40:90, 60:90] = True
    shadow = np.zeros((120, 160), bool)
    shadow[80:90, 90:110] = True
    img[shadow] *= 0.6
    other = np.zeros((120, 160), bool)
    other[70:90, 40:60] = True
    img[other] = (90, 20, 20)
    img[obj] = (40, 60, 200)
    return np.clip(img, 0, 255).astype(np.uint8), obj, shadow, other


def test_shadow_region_takes_the_shadow_not_a_dark_neighbour():
    from refcoco_edit.pipelines.patch_inpaint import shadow_region

    img, obj, shadow, other = _shadow_scene()
    found = shadow_region(img, obj)
    assert not np.any(found & obj)
    assert (found & shadow).sum() > 0.8 * shadow.sum()
    assert (found & other).sum() == 0
    assert (found & ~shadow).sum() < 0.3 * shadow.sum()  # its soft edge
    assert not shadow_region(img, np.zeros_like(obj)).any()


def test_remove_erases_the_shadow_with_the_object():
    img, obj, shadow, _ = _shadow_scene()
    req = EditRequest("s", "remove", img, obj, [60, 40, 30, 50], "remove it", "remove", "", 0)
    out = InpaintRemoval().generate(req)
    assert out.edit_mask[shadow].mean() > 0.8 and out.params["shadow_px"] > 0
    floor = np.array((170, 150, 120), float)
    assert np.abs(out.image[shadow].astype(float).mean(axis=0) - floor).max() < 20
    old = InpaintRemoval(method="telea").generate(req)
    assert not old.edit_mask[shadow].all()


# -- replacement: the exemplar is scaled to the region; targets that do not fit are refused ------
def _box_request(img, box, exemplar, target):
    x0, y0, x1, y1 = box
    m = np.zeros(img.shape[:2], bool)
    m[y0:y1, x0:x1] = True
    return EditRequest("s", "replace", img, m, [x0, y0, x1 - x0, y1 - y0], f"turn it into a {target}", f"a {target}",
                       target, 0, exemplar=exemplar)


def _solid_exemplar(h, w, colour=(200, 180, 40)):
    ex = np.zeros((h, w, 4), np.uint8)
    ex[..., :3] = colour
    ex[..., 3] = 255
    return ex


def test_bus_for_person_is_refused_not_pasted_small():
    """'turn the man with grey hair into a bus': a wide bus in a standing man's box would be a
    fifth of his height at the bottom of the box; the pipeline refuses it (shape_mismatch)."""
    img = make_scene()[0]
    man = (130, 20, 170, 220)              # 40 x 200: a standing person
    bus = _solid_exemplar(60, 150)         # 2.5 : 1, a bus seen from the side
    with pytest.raises(PipelineError) as e:
        ExemplarComposite().generate(_box_request(img, man, bus, "bus"))
    assert e.value.reason == "shape_mismatch"
    # min_cover=0 turns the rule off: then the paste is the small strip the rule prevents
    out = ExemplarComposite(min_cover=0.0).generate(_box_request(img, man, bus, "bus"))
    x, y, w, h = out.params["placement"]
    assert h < 0.25 * 200 and y + h == 220


def test_fitting_exemplar_fills_the_region():
    img = make_scene()[0]
    box = (130, 20, 170, 220)                # 40 x 200
    tall = _solid_exemplar(150, 45)          # 0.3 : 1, stretched toward 0.2 : 1 within 1.25
    out = ExemplarComposite().generate(_box_request(img, box, tall, "bottle"))
    x, y, w, h = out.params["placement"]
    assert out.params["cover"] >= 0.8 and h >= 0.8 * 200 and y + h == 220  # 0.3:1 stretched to 0.24:1
    assert w * h >= 0.8 * 40 * 200


# -- replacement: who is in front, the fill of the uncovered hole, soft edges, contact shadow -----
def _rect(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_occludes_rules():
    """Contained box in front; overlapping outlines by base.in_front's shared-pixel rule; disjoint
    exact outlines by whose convex hull holds whom (the one behind has a notch); else neither."""
    from refcoco_edit.pipelines.classical import occludes

    bus = _rect(100, 200, 20, 80, 20, 180)
    person = _rect(100, 200, 30, 95, 90, 104)   # before the bus, feet below it: box not inside
    assert occludes(person, bus) and not occludes(bus, person)  # overlap: the smaller share is in front
    exact = bus & ~person
    assert occludes(person, exact) and not occludes(exact, person)  # disjoint: the bus's hull holds him
    cup = _rect(100, 200, 40, 60, 60, 80)
    assert occludes(cup, exact & ~cup) and not occludes(exact & ~cup, cup)  # wholly inside: in front
    box = _rect(100, 200, 10, 50, 30, 170)
    apple = np.zeros((100, 200), np.uint8)
    cv2.circle(apple, (100, 60), 18, 1, -1)
    apple = apple.astype(bool)
    assert occludes(apple, box & ~apple) and not occludes(box & ~apple, apple)  # the box's notch
    left, right = _rect(100, 200, 20, 80, 10, 90), _rect(100, 200, 20, 80, 92, 190)
    assert not occludes(left, right) and not occludes(right, left)  # side by side


def _disc_exemplar(d, colour=(200, 40, 40)):
    ex = np.zeros((d, d, 4), np.uint8)
    cv2.circle(ex, (d // 2, d // 2), d // 2 - 1, (*colour, 255), -1)
    return ex


def test_replace_fills_the_uncovered_hole_with_the_remover():
    """Where a round exemplar does not cover the square it replaces, the remover of
    classical-remove continues the stripes; the former Telea fill smears them."""
    truth = _stripes(160, 200)
    img = truth.copy()
    box = (80, 50, 130, 100)
    img[50:100, 80:130] = (30, 30, 200)
    req = _box_request(img, box, _disc_exemplar(50), "sports ball")
    kw = dict(contact_shadow=0.0, shadow="off", harmonize=0.0)
    new = ExemplarComposite(**kw).generate(req)
    old = ExemplarComposite(fill="telea", **kw).generate(req)
    corners = _rect(160, 200, 50, 100, 80, 130) & (new.image.astype(int) - truth).any(axis=-1)
    corners &= ~dilate(np.abs(new.image.astype(int) - (200, 40, 40)).max(axis=-1) < 60, 3)  # the disc and its edge

    def err(out):
        return float(np.mean((out.image[corners].astype(float) - truth[corners].astype(float)) ** 2))

    assert corners.sum() > 200 and err(new) < 0.5 * err(old)
    assert not (np.abs(new.image[corners].astype(int) - (30, 30, 200)).max(axis=-1) < 40).any()  # no old blue left


def _floor_request(box, target="sports ball", others=None, h=120, w=160):
    rng = np.random.default_rng(0)
    img = np.full((h, w, 3), (150, 140, 120), np.float32) + rng.normal(0, 2, (h, w, 1))
    img = np.clip(img, 0, 255).astype(np.uint8)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = (40, 60, 200)
    req = _box_request(img, box, _disc_exemplar(40), target)
    req.other_masks = others
    return img, req


def test_replace_edges_are_soft_unless_edge_px_is_zero():
    img, req = _floor_request((60, 40, 100, 80))
    for edge_px, soft in ((0.8, True), (0.0, False)):
        out = ExemplarComposite(edge_px=edge_px, harmonize=0.0, contact_shadow=0.0).generate(req)
        r = out.image[..., 0].astype(int)
        ring = dilate(r > 190, 2) & ~erode(r > 190, 2) & out.edit_mask
        between = ring & (r > 160) & (r < 190)  # neither floor (150) nor object (200): the blend
        assert (between.sum() > 40) == soft, (edge_px, int(between.sum()))


def test_contact_shadow_only_where_the_ground_is_background():
    box = (60, 40, 100, 80)
    img, req = _floor_request(box)
    out = ExemplarComposite().generate(req)
    under = np.zeros(img.shape[:2], bool)
    under[80:83, 70:90] = True  # just under the base
    assert out.params["contact_shadow_px"] > 0
    assert (img[under].astype(int) - out.image[under].astype(int)).mean() > 10  # darker
    assert np.array_equal(out.image[~out.edit_mask], img[~out.edit_mask])
    off = ExemplarComposite(contact_shadow=0.0).generate(req)
    assert off.params["contact_shadow_px"] == 0 and abs(int(off.image[under].mean()) - int(img[under].mean())) < 6
    # no shadow under a kite, nor on another object standing under the base, nor past the border
    _, kite = _floor_request(box, target="kite")
    assert ExemplarComposite().generate(kite).params["contact_shadow_px"] == 0
    mat = _rect(120, 160, 80, 100, 50, 110)
    _, on_mat = _floor_request(box, others=[mat])
    res = ExemplarComposite().generate(on_mat)
    assert res.params["contact_shadow_px"] == 0 and np.array_equal(res.image[mat], on_mat.image[mat])
    _, bottom = _floor_request((60, 80, 100, 120))
    assert ExemplarComposite().generate(bottom).params["contact_shadow_px"] == 0


def test_replace_keeps_the_old_shadow_or_erases_it():
    """shadow=keep (default): the hole stops at the old object's shadow; erase: it goes with the
    object (classical-remove's M_e); the YAML booleans on/off mean erase/off."""
    img, obj, shadow, _ = _shadow_scene()
    req = EditRequest("s", "replace", img, obj, [60, 40, 30, 50], "p", "a ball", "sports ball", 0,
                      exemplar=_disc_exemplar(30))
    kept = ExemplarComposite(contact_shadow=0.0).generate(req)
    erased = ExemplarComposite(shadow="erase", contact_shadow=0.0).generate(req)
    far = shadow & ~dilate(obj, 8)
    assert np.array_equal(kept.image[far], img[far])
    assert erased.params["shadow_px"] > 0 and erased.edit_mask[far].all()
    assert erased.image[far].astype(float).mean() > img[far].astype(float).mean() + 20  # lit floor again
    assert ExemplarComposite(shadow=True).params["shadow"] == "erase"
    assert ExemplarComposite(shadow=False).params["shadow"] == "off"
    with pytest.raises(ValueError, match="shadow"):
        ExemplarComposite(shadow="auto")
    with pytest.raises(ValueError, match="fill"):
        ExemplarComposite(fill="nope")
