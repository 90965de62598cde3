"""One image: render its scene, annotate the visible parts (polygons, a crowd RLE) and describe its refs."""
from __future__ import annotations

from io import BytesIO
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np

from .backdrop import background, camera, light_field, shadow_factor, shelf
from .grammar import Phrases, choose, refcoco_candidates, refcoco_plus_candidates, refcocog_candidates, sentence
from .layout import CAT_IDS, DATASETS, FIRST_IMAGE_ID, JPEG_QUALITY, SENT_ID_BASE
from .objects import render_object
from .plates import Look, attribute_looks
from .scene import Obj, Scene, plan
from .shapes import unit3

def polygons(mask: np.ndarray) -> List[List[float]]:
    """Visible mask -> simplified external contours, each a flat [x1, y1, ...] list of >= 3 points."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    polys = []
    for c in contours:
        if cv2.contourArea(c) < 6.0:
            continue
        a = cv2.approxPolyDP(c, 0.7, True).reshape(-1, 2)
        if len(a) < 3:
            continue
        polys.append([float(v) for v in a.reshape(-1)])
    # a fixed order: left to right by the first point
    polys.sort(key=lambda p: (min(p[0::2]), min(p[1::2])))
    return polys


def uncompressed_rle(mask: np.ndarray) -> Dict[str, Any]:
    """COCO uncompressed RLE: column-major runs, alternating 0s and 1s, starting with 0s."""
    flat = np.asfortranarray(mask.astype(np.uint8)).ravel(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]]))
    if flat.size and flat[0] == 1:
        runs = np.concatenate([[0], runs])
    return {"counts": [int(v) for v in runs], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def ann_geometry(segmentation: Any, h: int, w: int) -> Tuple[float, List[float]]:
    """pycocotools area and bbox of the union of a segmentation's parts."""
    from pycocotools import mask as mask_api

    if isinstance(segmentation, list):
        rle = mask_api.merge(mask_api.frPyObjects(segmentation, h, w))
    else:
        rle = mask_api.frPyObjects(segmentation, h, w)
    return float(mask_api.area(rle)), [float(v) for v in mask_api.toBbox(rle)]




def _paint(seed: int, index: int, omit: Optional[int] = None) -> Tuple[Scene, np.ndarray, Optional[np.ndarray]]:
    """Plan and render scene ``index``; returns (scene, uint8 pixels, books mask or None).

    ``omit``: the position in ``scene.objs`` of an object rendered (so that every random stream
    is consumed exactly as in the full scene) but neither painted nor shadowed: the *clean plate*
    of that object. With ``omit=None`` the pixels are those of :func:`make_image`.
    """
    st = _stage(seed, index, omit)
    _composite(st.img, st.draw, st.wb, st.lf)
    return st.scene, camera(st.img, st.rng), st.books


class _Staged(NamedTuple):
    """A scene rendered up to the objects' compositing: what :func:`_paint` and the attribute
    plates share (``state``: the rendering stream's state before object ``keep``'s render)."""

    scene: Scene
    rng: np.random.Generator
    light: Tuple[float, float, float]
    img: np.ndarray
    wb: np.ndarray
    lf: np.ndarray
    books: Optional[np.ndarray]
    draw: List[Obj]
    state: Optional[Dict[str, Any]]


def _stage(seed: int, index: int, omit: Optional[int] = None, keep: Optional[int] = None) -> _Staged:
    """Plan scene ``index``, render its objects, backdrop, shadows and light (see :func:`_paint`)."""
    scene = plan(seed, index)
    rrng = np.random.default_rng([seed, index, 1])   # rendering stream
    light = unit3(0.55 * scene.side, -0.7, 0.55)
    tone, colours = background(scene, rrng)
    wb = (1.0 + np.asarray((1.0, 0.0, -1.0), np.float32) * rrng.uniform(-0.035, 0.05)).astype(np.float32)
    colours *= wb
    state = None
    for k, o in enumerate(scene.objs):
        if k == keep:
            state = rrng.bit_generator.state
        render_object(o, rrng, light, scene.side)
    shown = [o for k, o in enumerate(scene.objs) if k != omit]
    lf = light_field(scene, rrng)
    tone *= shadow_factor(scene, shown)
    tone *= lf
    img = tone[..., None] * colours[:, None, :]
    books = shelf(scene, img, rrng, lf) if scene.shelf else None
    draw = sorted(shown, key=lambda a: (a.base, a.cx))
    return _Staged(scene, rrng, light, img, wb, lf, books, draw, state)


def _composite(img: np.ndarray, draw: List[Obj], wb: np.ndarray, lf: np.ndarray,
               looks: Optional[Dict[int, Look]] = None) -> None:
    """Paint the objects back to front into ``img`` (in place); ``looks``: another appearance
    of an object's crop (by ``id``), or a function of the lit-normalised pixels behind it."""
    for o in draw:
        ys, xs = slice(o.y0, o.y0 + o.alpha.shape[0]), slice(o.x0, o.x0 + o.alpha.shape[1])
        a = o.alpha[..., None]
        rgb = o.rgb
        if looks is not None and id(o) in looks:
            rgb = looks[id(o)]
            if callable(rgb):
                rgb = rgb(img[ys, xs] / np.maximum(wb * lf[ys, xs, None], np.float32(1e-4)))
            rgb = np.clip(rgb, 0.0, 1.0).astype(np.float32)
        img[ys, xs] = (rgb * wb) * (lf[ys, xs, None] * a) + img[ys, xs] * (1 - a)


def _annotate(scene: Scene, books: Optional[np.ndarray], image_id: int) -> List[Dict[str, Any]]:
    """Visible masks (front to back), polygons and the crowd RLE; keeps only annotated objects
    in ``scene.objs`` (each with its ``ann``) and returns the annotations."""
    W, H = scene.width, scene.height
    draw = sorted(scene.objs, key=lambda a: (a.base, a.cx))
    occ = np.zeros((H, W), bool)
    for o in reversed(draw):
        full = np.zeros((H, W), bool)
        full[o.y0:o.y0 + o.mask.shape[0], o.x0:o.x0 + o.mask.shape[1]] = o.mask
        o.visible = full & ~occ
        o.full_area = float(full.sum())
        occ |= full
    annotations: List[Dict[str, Any]] = []
    kept: List[Obj] = []
    for o in scene.objs:
        polys = polygons(o.visible)
        if not polys:
            continue
        area, bbox = ann_geometry(polys, H, W)
        if area < 1:
            continue
        o.vis_area = area
        o.ann = {"id": image_id * 100 + len(kept), "image_id": image_id, "category_id": CAT_IDS[o.cat],
                 "segmentation": polys, "area": area, "bbox": bbox, "iscrowd": 0}
        annotations.append(o.ann)
        kept.append(o)
    if books is not None:
        vis = books & ~occ
        if vis.any():
            seg = uncompressed_rle(vis)
            area, bbox = ann_geometry(seg, H, W)
            annotations.append({"id": image_id * 100 + 90, "image_id": image_id, "category_id": CAT_IDS["book"],
                                "segmentation": seg, "area": area, "bbox": bbox, "iscrowd": 1})
    scene.objs = kept
    return annotations


def _jpeg(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _locate(ann_id: int, seed: int) -> Tuple[int, int]:
    """(scene index, position in its ``scene.objs``) of demo annotation ``ann_id`` (ValueError if none)."""
    image_id, pos = divmod(int(ann_id), 100)
    index = image_id - FIRST_IMAGE_ID
    if index < 0 or pos >= 90:
        raise ValueError(f"{ann_id} is not the annotation id of a demo object")
    scene, _, books = _paint(seed, index)
    objs = list(scene.objs)
    _annotate(scene, books, image_id)
    hit = [k for k, o in enumerate(objs) if o.ann is not None and o.ann["id"] == int(ann_id)]
    if not hit:
        raise ValueError(f"demo image {image_id} (seed {seed}) has no object with annotation id {ann_id}")
    return index, hit[0]


def _finish(pixels: np.ndarray, jpeg: bool) -> np.ndarray:
    """The camera's pixels, or (``jpeg``) the same through the demo's JPEG encoding and decoder."""
    if not jpeg:
        return pixels
    from ..imageio import decode_image_bytes

    return decode_image_bytes(_jpeg(pixels))


def render_clean_plate(ann_id: int, seed: int = 0, jpeg: bool = True) -> np.ndarray:
    """The demo image of annotation ``ann_id`` as it would look without that object: the same
    seeded scene re-rendered with the object (and its cast and contact shadows) left out.

    Everything else is identical to the image :func:`write_demo` writes (same wall, table,
    lighting and sensor noise), so the clean plate is the ground truth of removing the object;
    an object it occluded shows whole. ``jpeg=True`` passes it through the same JPEG encoding as
    the demo's images (HxWx3 uint8, decoded as the loader decodes them); ``jpeg=False`` gives
    the camera's pixels before compression. ``ann_id`` must be a non-crowd annotation of a demo
    image of this ``seed`` (ValueError otherwise).
    """
    index, pos = _locate(ann_id, seed)
    _, pixels, _ = _paint(seed, index, omit=pos)
    return _finish(pixels, jpeg)


def render_attribute_plates(ann_id: int, targets: Sequence[str], seed: int = 0,
                            jpeg: bool = True) -> Dict[str, np.ndarray]:
    """The demo image of annotation ``ann_id`` with that object in each target colour or
    material (``vocab.COLOURS`` / ``vocab.MATERIALS``), under the same light: the ground truth
    of its attribute edits (``demo.plates`` says how each is drawn).

    Only the object's own pixels (its visible part and its 1-px soft edge) differ from the image
    :func:`write_demo` writes, before the camera's 0.6-px lens blur: the scene's random streams
    are consumed exactly as for that image. ``jpeg`` as for :func:`render_clean_plate`; one
    scene render serves every target.
    """
    index, pos = _locate(ann_id, seed)
    st = _stage(seed, index, keep=pos)
    o = st.scene.objs[pos]
    looks = attribute_looks(o, st.state, st.light, st.scene.side, list(targets), (seed, index, 3, pos))
    cam = st.rng.bit_generator.state
    out: Dict[str, np.ndarray] = {}
    for t, look in looks.items():
        img = st.img.copy()
        _composite(img, st.draw, st.wb, st.lf, {id(o): look})
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = cam
        out[t] = _finish(camera(img, rng), jpeg)
    return out


def render_attribute_plate(ann_id: int, target: str, seed: int = 0, jpeg: bool = True) -> np.ndarray:
    """The demo image of annotation ``ann_id`` with that object in colour or material ``target``
    (one of ``vocab.COLOURS`` or ``vocab.MATERIALS``): see :func:`render_attribute_plates`."""
    return render_attribute_plates(ann_id, [target], seed, jpeg)[target]


def make_image(seed: int, index: int) -> Tuple[bytes, Dict[str, Any], List[Dict[str, Any]], Dict[str, List[Dict[str, Any]]]]:
    """Render one scene; returns (jpeg bytes, image record, annotations, refs per dataset)."""
    scene, pixels, books = _paint(seed, index)
    # one text stream per dataset, so that changing one dataset's wording leaves the others alone
    trngs = {ds: np.random.default_rng([seed, index, 2, j]) for j, ds in enumerate(DATASETS)}
    H = scene.height
    image_id = FIRST_IMAGE_ID + index
    file_name = f"COCO_train2014_{image_id:012d}.jpg"
    annotations = _annotate(scene, books, image_id)
    kept = scene.objs

    # refs: every object but the potted plant; those with look-alikes (>= 2 of their category)
    # pass rule 2 by category, the single ones only if visually alike (rule 2's hard cases), and
    # the big subject of a close-up scene is the hard case of rule 1
    refs: Dict[str, List[Dict[str, Any]]] = {ds: [] for ds in DATASETS}
    n_sent = {ds: 0 for ds in DATASETS}
    by_cat: Dict[str, List[Obj]] = {}
    for o in kept:
        by_cat.setdefault(o.cat, []).append(o)
    for k, o in enumerate(kept):
        group = by_cat[o.cat]
        if o.cat == "potted plant":
            continue
        ph = Phrases(o, group, H)
        r0, r1, r2 = trngs["refcoco"], trngs["refcoco+"], trngs["refcocog"]
        texts = {
            "refcoco": choose(refcoco_candidates(ph, r0), r0, 3),
            "refcoco+": choose(refcoco_plus_candidates(ph, r1), r1, 3),
            "refcocog": choose(refcocog_candidates(ph, scene, r2), r2, 2),
        }
        for ds, sents in texts.items():
            if not sents:
                continue  # e.g. RefCOCO+ has no appearance-only way to tell identical twins apart
            if ds == "refcocog":
                sents = [s[0].upper() + s[1:] + "." for s in sents]
            recs = []
            for s in sents:
                recs.append(sentence(s, SENT_ID_BASE[ds] + index * 100 + n_sent[ds]))
                n_sent[ds] += 1
            refs[ds].append({
                "ref_id": index * 20 + k, "ann_id": o.ann["id"], "image_id": image_id, "split": "",
                "sent_ids": [r["sent_id"] for r in recs], "sentences": recs,
                "category_id": CAT_IDS[o.cat], "file_name": f"COCO_train2014_{image_id:012d}_{o.ann['id']}.jpg",
            })
    record = {"id": image_id, "file_name": file_name, "height": H, "width": scene.width}
    return _jpeg(pixels), record, annotations, refs


