"""A tiny street scene set in the refer layout, where a category appears once: the input of
``tests/system/test_replacement_real.py``.

    python tests/support/street_refer.py OUT        # writes OUT/ and prints the manifest (JSON)

``write_street(out_dir)`` draws two photo-like street images (sky gradient, facade, asphalt with
grain, soft lighting; PNG so that colours stay exact) and writes ``OUT/refcoco/instances.json``,
``OUT/refcoco/refs(unc).p`` and ``OUT/images/``:

``street-bus`` (image 1)  a yellow **bus** — the only bus of the data — with two **people** standing
                          in front of it (a magenta and a cyan shirt: colours nothing else has),
                          and a grey car to its right. The bus is annotated by a *coarse outline*
                          (its whole body, the people's pixels included), as annotators often do,
                          so its exemplar is clean only if the people in front are subtracted.
``street-cars`` (image 3) two **cars** (a red and a blue one, the referred objects: each is the
                          other's same-category distractor) and a person on the pavement.

Refs point at the two people of image 1 and the two cars of image 2. A car's replace target
that fits its box and size is a bus, whose only instance is in image 1: before exemplars could
come from any instance of the data, the bus (seen in one image) was offered for nothing, and the
build made no replacement at all.
"""
from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import cv2
import numpy as np
from PIL import Image

H, W = 200, 300
# the image ids: a build with seed 0 plans each image's edit types in a seeded order
# (``select.Selector._plan_image``); the cars' image is given an id whose order starts with replace,
# so that a default build (2 samples per image) asks one car for a replacement
BUS_IMAGE_ID, CARS_IMAGE_ID = 1, 3
SHIRTS = {"magenta": (225, 30, 200), "cyan": (30, 215, 225)}
CATEGORIES = [{"id": 1, "name": "person", "supercategory": "person"},
              {"id": 3, "name": "car", "supercategory": "vehicle"},
              {"id": 6, "name": "bus", "supercategory": "vehicle"}]


def _backdrop(rng: np.random.Generator) -> np.ndarray:
    """Sky, a facade with windows, a kerb and asphalt with grain and a light falloff (float32)."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    img = np.zeros((H, W, 3), np.float32)
    sky = yy < 40
    img[sky] = (np.array([150, 185, 230], np.float32) + (yy[sky] / 40.0)[:, None] * np.array([30, 20, 5], np.float32))
    wall = (yy >= 40) & (yy < 120)
    img[wall] = np.array([168, 150, 130], np.float32)
    for wx in range(12, W, 40):  # windows of the facade
        img[52:78, wx:wx + 22] = (70, 80, 95)
    road = yy >= 120
    img[yy >= 120] = np.array([95, 95, 100], np.float32)
    img[(yy >= 118) & (yy < 124)] = (185, 180, 170)  # the kerb
    img[road & (np.abs(yy - 175) < 1.5) & ((xx // 25) % 2 == 0)] = (225, 225, 215)  # lane dashes
    grain = cv2.GaussianBlur(rng.standard_normal((H, W)).astype(np.float32), (0, 0), 0.8) * 7
    light = 1.08 - 0.18 * (xx / W)
    return (img + grain[..., None]) * light[..., None]


def _poly(points: List[Tuple[int, int]]) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    cv2.fillPoly(m, [np.array(points, np.int32)], 1)
    return m.astype(bool)


def _person(x: int, y_feet: int, height: int) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """A standing person (head, shirt, trousers) as {part: mask}, and its whole mask."""
    w = max(6, height // 4)
    head = np.zeros((H, W), np.uint8)
    cv2.circle(head, (x, y_feet - height + w // 2), w // 2, 1, -1)
    torso = _poly([(x - w // 2 - 1, y_feet - height + w), (x + w // 2 + 1, y_feet - height + w),
                   (x + w // 2, y_feet - height // 2), (x - w // 2, y_feet - height // 2)])
    legs = _poly([(x - w // 2, y_feet - height // 2), (x + w // 2, y_feet - height // 2),
                  (x + w // 2, y_feet), (x - w // 2, y_feet)])
    parts = {"head": head.astype(bool), "shirt": torso, "legs": legs}
    whole = parts["head"] | torso | legs
    return parts, whole


def _vehicle(x0: int, y0: int, x1: int, y1: int, bus: bool) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """A car or bus side view: body, windows, wheels; returns (whole mask, {part: mask})."""
    if bus:
        shell = _poly([(x0, y0 + 6), (x0 + 6, y0), (x1, y0), (x1, y1 - 8), (x0, y1 - 8)])
    else:
        mid = y0 + (y1 - y0) // 2
        shell = _poly([(x0, mid), (x0 + (x1 - x0) // 4, y0), (x1 - (x1 - x0) // 4, y0), (x1, mid),
                       (x1, y1 - 6), (x0, y1 - 6)])
    windows = np.zeros((H, W), bool)
    if bus:
        for wx in range(x0 + 10, x1 - 14, 22):
            windows[y0 + 8:y0 + 26, wx:wx + 16] = True
    else:
        windows[y0 + 4:y0 + (y1 - y0) // 2 - 2, x0 + (x1 - x0) // 4 + 3:x1 - (x1 - x0) // 4 - 3] = True
    wheels = np.zeros((H, W), np.uint8)
    r = max(5, (y1 - y0) // 5)
    for cx in (x0 + (x1 - x0) // 5, x1 - (x1 - x0) // 5):
        cv2.circle(wheels, (cx, y1 - r), r, 1, -1)
    whole = shell | wheels.astype(bool)
    return whole, {"body": shell & ~windows, "windows": windows & shell, "wheels": wheels.astype(bool)}


def _paint(img: np.ndarray, mask: np.ndarray, colour: Tuple[int, int, int], shade: float = 0.15) -> None:
    """Paint a flat colour with a vertical light gradient (lit from above) into ``mask``."""
    ys = np.nonzero(mask)[0]
    if ys.size == 0:
        return
    t = (np.arange(H, dtype=np.float32) - ys.min()) / max(1, np.ptp(ys))
    f = (1.0 + shade / 2 - shade * t)[:, None, None]
    layer = np.broadcast_to(np.array(colour, np.float32), img.shape) * f
    img[mask] = layer[mask]


def _shadow(img: np.ndarray, mask: np.ndarray, strength: float = 0.35) -> None:
    """A soft contact shadow under an object's base."""
    ys, xs = np.nonzero(mask)
    s = np.zeros((H, W), np.float32)
    cv2.ellipse(s, (int(xs.mean()), int(ys.max())), (int(np.ptp(xs) * 0.55) + 2, 4), 0, 0, 360, 1.0, -1)
    s = cv2.GaussianBlur(s, (0, 0), 2.0) * strength
    img *= (1.0 - s)[..., None]


def _rle(mask: np.ndarray) -> Dict[str, Any]:
    from pycocotools import mask as mask_api

    r = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")}


def _polygon(mask: np.ndarray) -> List[List[float]]:
    """The mask's outer contour as a COCO polygon (the refer data's usual segmentation form)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    c = max(contours, key=cv2.contourArea).reshape(-1, 2)
    return [[float(v) for xy in c for v in xy]]


def _ann(ann_id: int, image_id: int, cat: int, mask: np.ndarray, polygon: bool = True) -> Dict[str, Any]:
    ys, xs = np.nonzero(mask)
    bbox = [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)]
    seg: Any = _polygon(mask) if polygon else _rle(mask)
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "segmentation": seg,
            "area": float(mask.sum()), "bbox": bbox, "iscrowd": 0}


def _ref(ref_id: int, ann: Dict[str, Any], file_name: str, texts: List[str], first_sent: int) -> Dict[str, Any]:
    sents = [{"tokens": t.split(), "raw": t, "sent_id": first_sent + k, "sent": t} for k, t in enumerate(texts)]
    return {"ref_id": ref_id, "ann_id": ann["id"], "image_id": ann["image_id"], "split": "train",
            "sent_ids": [s["sent_id"] for s in sents], "sentences": sents, "category_id": ann["category_id"],
            "file_name": file_name}


def write_street(out_dir: str | Path) -> Dict[str, Any]:
    """Write the two-image street set into ``out_dir``; return the manifest: root, images_dir,
    the annotation ids (bus, people, cars) and the shirt colours of the people in front of the bus."""
    root = Path(out_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "refcoco").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    images, anns, refs = [], [], []

    # -- image 1: the bus, two people in front of it, a car -----------------------------------
    img = _backdrop(rng)
    bus, bus_parts = _vehicle(40, 70, 210, 150, bus=True)
    car1, car1_parts = _vehicle(222, 118, 292, 150, bus=False)
    for m in (bus, car1):
        _shadow(img, m)
    _paint(img, bus_parts["body"], (235, 190, 40))
    _paint(img, bus_parts["windows"], (55, 70, 85), 0.3)
    _paint(img, bus_parts["wheels"], (25, 25, 28))
    _paint(img, car1_parts["body"], (150, 150, 155))
    _paint(img, car1_parts["windows"], (60, 70, 80), 0.3)
    _paint(img, car1_parts["wheels"], (25, 25, 28))
    people = []
    for x, shirt in ((95, "magenta"), (150, "cyan")):
        parts, whole = _person(x, 158, 64)
        _shadow(img, whole, 0.25)
        _paint(img, parts["head"], (225, 180, 140))
        _paint(img, parts["shirt"], SHIRTS[shirt], 0.05)
        _paint(img, parts["legs"], (40, 45, 70))
        people.append(whole)
    bus_coarse = bus | ((people[0] | people[1]) & _poly([(40, 70), (210, 70), (210, 150), (40, 150)]))
    images.append(("street-bus", BUS_IMAGE_ID, img))
    anns += [_ann(1001, BUS_IMAGE_ID, 6, bus_coarse), _ann(1002, BUS_IMAGE_ID, 1, people[0]),
             _ann(1003, BUS_IMAGE_ID, 1, people[1]), _ann(1004, BUS_IMAGE_ID, 3, car1)]

    # -- image 3: two cars and a person -------------------------------------------------------
    img = _backdrop(rng)
    red, red_parts = _vehicle(30, 122, 120, 166, bus=False)
    blue, blue_parts = _vehicle(160, 126, 246, 168, bus=False)
    p_parts, person = _person(272, 128, 56)
    for m in (red, blue, person):
        _shadow(img, m)
    for parts, body in ((red_parts, (200, 40, 35)), (blue_parts, (40, 70, 190))):
        _paint(img, parts["body"], body)
        _paint(img, parts["windows"], (60, 70, 80), 0.3)
        _paint(img, parts["wheels"], (25, 25, 28))
    _paint(img, p_parts["head"], (225, 180, 140))
    _paint(img, p_parts["shirt"], (90, 140, 60), 0.05)
    _paint(img, p_parts["legs"], (40, 45, 70))
    images.append(("street-cars", CARS_IMAGE_ID, img))
    anns += [_ann(3001, CARS_IMAGE_ID, 3, red), _ann(3002, CARS_IMAGE_ID, 3, blue),
             _ann(3003, CARS_IMAGE_ID, 1, person)]

    records = []
    for _name, image_id, arr in images:
        file_name = f"COCO_train2014_{image_id:012d}.png"
        Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8)).save(root / "images" / file_name)
        records.append({"id": image_id, "file_name": file_name, "height": H, "width": W})
    by_id = {a["id"]: a for a in anns}
    fn = {r["id"]: r["file_name"] for r in records}
    texts = {1002: ["man in pink", "left man in front of the bus"], 1003: ["man in light blue", "right man"],
             3001: ["red car", "left car"], 3002: ["blue car", "car on the right"]}
    sent = 0
    for k, (ann_id, t) in enumerate(texts.items()):
        refs.append(_ref(k, by_id[ann_id], fn[by_id[ann_id]["image_id"]], t, sent))
        sent += len(t)
    instances = {"info": {"description": "refcoco-edit tests: street scenes with one bus"}, "licenses": [],
                 "images": records, "annotations": anns, "categories": CATEGORIES}
    (root / "refcoco" / "instances.json").write_text(json.dumps(instances))
    with open(root / "refcoco" / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    return {"root": str(root), "images_dir": str(root / "images"), "bus": 1001, "people": [1002, 1003],
            "cars": [3001, 3002], "shirts": {k: list(v) for k, v in SHIRTS.items()}}


if __name__ == "__main__":  # pragma: no cover - a helper for looking at the data by hand
    print(json.dumps(write_street(sys.argv[1]), indent=1))
