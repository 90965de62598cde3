"""The synthetic mini-RefCOCO: refer layout, COCO-valid masks, identifying expressions, determinism."""
from __future__ import annotations

import hashlib
import json
import pickle
import pickletools
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_api

from refcoco_edit.demo import DEFAULT_NUM_IMAGES, MARKER_NAME, ensure_demo, write_demo
from refcoco_edit.demo.scene import CLOSEUP_AT, CLOSEUP_EVERY
from refcoco_edit.errors import InputError
from refcoco_edit.vocab import COCO_CATEGORIES, COCO_SUPERCATEGORIES, COLOURS

# pycocotools' decode under numpy 2 warns about __array__(copy=...): not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

REF_FILES = {
    "refcoco": ("unc", "google"),
    "refcoco+": ("unc",),
    "refcocog": ("umd", "google"),
}
EXPECTED_SPLITS = {"unc": {"train", "val", "testA", "testB"}, "google": {"train", "val", "test"},
                   "umd": {"train", "val", "test"}}
# kept independent of the module's own list on purpose
LOCATION = {"left", "right", "middle", "center", "centre", "top", "bottom", "front", "back", "behind", "near",
            "far", "closest", "farthest", "furthest", "nearest", "leftmost", "rightmost", "side", "corner",
            "next", "beside", "between", "above", "below"}


def _files(root: Path) -> Dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_a")
    summary = write_demo(root)
    return root, summary


@pytest.fixture(scope="module")
def instances(demo) -> Dict[str, Any]:
    return json.loads((demo[0] / "refcoco" / "instances.json").read_text())


@pytest.fixture(scope="module")
def refs(demo) -> Dict[str, List[Dict[str, Any]]]:
    out = {}
    for ds, schemes in REF_FILES.items():
        for s in schemes:
            with open(demo[0] / ds / f"refs({s}).p", "rb") as f:
                out[f"{ds}/{s}"] = pickle.load(f)
    return out


@pytest.fixture(scope="module")
def anns(instances) -> Dict[int, Dict[str, Any]]:
    return {a["id"]: a for a in instances["annotations"]}


def test_layout(demo):
    root, summary = demo
    for ds, schemes in REF_FILES.items():
        assert (root / ds / "instances.json").is_file()
        for s in schemes:
            assert (root / ds / f"refs({s}).p").is_file()
    assert summary["images"] >= DEFAULT_NUM_IMAGES == 48
    assert summary["root"] == str(root) and Path(summary["images_dir"]) == root / "images"
    assert len(list((root / "images").glob("COCO_train2014_*.jpg"))) == summary["images"]
    assert set(summary["refs"]) == set(REF_FILES) and all(n > 0 for n in summary["refs"].values())
    # `build` exports one sample per sentence at least: far more than the 80 it needs
    assert summary["refs"]["refcoco"] >= 80 and summary["sentences"] > summary["refs"]["refcoco"]


def test_write_is_deterministic(demo, tmp_path):
    root, summary = demo
    again = write_demo(tmp_path / "b")
    assert {k: v for k, v in again.items() if k not in ("root", "images_dir")} == \
        {k: v for k, v in summary.items() if k not in ("root", "images_dir")}
    assert _files(tmp_path / "b") == _files(root)


def test_first_images_do_not_depend_on_num_images(demo, tmp_path):
    root, _ = demo
    write_demo(tmp_path / "small", num_images=2)
    for p in sorted((tmp_path / "small" / "images").iterdir()):
        assert p.read_bytes() == (root / "images" / p.name).read_bytes()


def test_images_and_categories(demo, instances):
    root, _ = demo
    imgs = instances["images"]
    assert len(imgs) >= 48 and len({i["id"] for i in imgs}) == len(imgs)
    for rec in imgs:
        assert rec["file_name"] == f"COCO_train2014_{rec['id']:012d}.jpg"
        assert 320 <= rec["width"] <= 640 and 320 <= rec["height"] <= 640
        with Image.open(root / "images" / rec["file_name"]) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert im.size == (rec["width"], rec["height"])
    cats = {c["id"]: c for c in instances["categories"]}
    assert {i: c["name"] for i, c in cats.items()} == COCO_CATEGORIES
    for sup, ids in COCO_SUPERCATEGORIES.items():
        assert all(cats[i]["supercategory"] == sup for i in ids)
    assert len({a["id"] for a in instances["annotations"]}) == len(instances["annotations"])
    # the three datasets share images and annotations
    data = (root / "refcoco" / "instances.json").read_bytes()
    assert (root / "refcoco+" / "instances.json").read_bytes() == data
    assert (root / "refcocog" / "instances.json").read_bytes() == data


def test_polygons_are_valid_and_area_is_the_union(instances):
    sizes = {i["id"]: (i["height"], i["width"]) for i in instances["images"]}
    multi = 0
    for a in instances["annotations"]:
        if a["iscrowd"]:
            continue
        h, w = sizes[a["image_id"]]
        seg = a["segmentation"]
        assert isinstance(seg, list) and seg
        for poly in seg:
            assert len(poly) % 2 == 0 and len(poly) >= 6
            assert all(isinstance(v, float) for v in poly)
            xs, ys = np.asarray(poly[0::2]), np.asarray(poly[1::2])
            assert xs.min() >= 0 and ys.min() >= 0 and xs.max() <= w and ys.max() <= h
        parts = mask_api.frPyObjects(seg, h, w)
        union = mask_api.merge(parts)
        assert mask_api.decode(union).sum() > 0
        assert a["area"] == pytest.approx(float(mask_api.area(union)))
        assert a["bbox"] == pytest.approx([float(v) for v in mask_api.toBbox(union)])
        assert all(isinstance(v, float) for v in a["bbox"]) and isinstance(a["area"], float)
        if len(seg) > 1:
            multi += 1
            assert a["area"] <= sum(float(v) for v in mask_api.area(parts))
        closeup = (a["image_id"] - 1000) % CLOSEUP_EVERY == CLOSEUP_AT
        assert 0.003 < a["area"] / (h * w) < (0.95 if closeup else 0.25)
    assert multi >= 1, "no occluder split an object into a multi-part polygon"


def test_crowd_annotations_are_uncompressed_rle(instances, refs):
    sizes = {i["id"]: (i["height"], i["width"]) for i in instances["images"]}
    crowds = [a for a in instances["annotations"] if a["iscrowd"]]
    assert len(crowds) >= 1
    for a in crowds:
        h, w = sizes[a["image_id"]]
        seg = a["segmentation"]
        assert seg["size"] == [h, w]
        assert all(isinstance(c, int) and c >= 0 for c in seg["counts"])
        assert sum(seg["counts"]) == h * w
        rle = mask_api.frPyObjects(seg, h, w)
        assert mask_api.area(rle) > 0
        assert a["area"] == pytest.approx(float(mask_api.area(rle)))
        # column-major: compare with pycocotools' own encoding of the decoded mask
        m = mask_api.decode(rle)
        assert mask_api.encode(np.asfortranarray(m))["counts"] == rle["counts"]
    crowd_ids = {a["id"] for a in crowds}
    assert not any(r["ann_id"] in crowd_ids for rs in refs.values() for r in rs)


def test_refs_point_to_matching_annotations(refs, anns, instances):
    image_ids = {i["id"] for i in instances["images"]}
    for key, rs in refs.items():
        assert isinstance(rs, list) and rs
        assert len({r["ref_id"] for r in rs}) == len(rs), key
        assert len({r["ann_id"] for r in rs}) == len(rs), key
        for r in rs:
            assert set(r) == {"ref_id", "ann_id", "image_id", "split", "sent_ids", "sentences", "category_id",
                              "file_name"}
            a = anns[r["ann_id"]]
            assert a["iscrowd"] == 0
            assert a["category_id"] == r["category_id"] and a["image_id"] == r["image_id"] in image_ids
            assert r["file_name"] == f"COCO_train2014_{r['image_id']:012d}_{r['ann_id']}.jpg"
            assert r["sent_ids"] == [s["sent_id"] for s in r["sentences"]] and r["sentences"]
            for s in r["sentences"]:
                assert set(s) == {"tokens", "raw", "sent_id", "sent"}
                assert s["tokens"] and s["sent"] == " ".join(s["tokens"]) == s["sent"].lower()
                assert isinstance(s["raw"], str) and s["raw"].lower().startswith(s["tokens"][0])
    for ds, schemes in REF_FILES.items():
        ids = [i for i in (s["sent_id"] for r in refs[f"{ds}/{schemes[0]}"] for s in r["sentences"])]
        assert len(ids) == len(set(ids)), ds
    a = {s["sent_id"] for r in refs["refcoco/unc"] for s in r["sentences"]}
    b = {s["sent_id"] for r in refs["refcoco+/unc"] for s in r["sentences"]}
    assert not a & b
    # the two split schemes of one dataset hold the same refs, split differently
    assert [r["ref_id"] for r in refs["refcoco/unc"]] == [r["ref_id"] for r in refs["refcoco/google"]]


def test_every_image_has_lookalike_refs(refs, instances):
    per_image = defaultdict(lambda: defaultdict(int))
    for r in refs["refcoco/unc"]:
        per_image[r["image_id"]][r["category_id"]] += 1
    for rec in instances["images"]:
        assert max(per_image[rec["id"]].values(), default=0) >= 2, rec["id"]
    n_cats = [len({a["category_id"] for a in instances["annotations"] if a["image_id"] == rec["id"]})
              for rec in instances["images"]]
    assert sum(n >= 2 for n in n_cats) >= 0.7 * len(n_cats)


def test_hard_cases_of_the_two_rules(refs, instances):
    """Close-ups hold a referred sole prominent subject (rule 1 must drop it): over 60% of the
    image, or with no other object of 1% of the image; single objects are referred too (rule 2
    must drop those that nothing resembles)."""
    sizes = {i["id"]: i["height"] * i["width"] for i in instances["images"]}
    by_image = defaultdict(list)
    for a in instances["annotations"]:
        if not a["iscrowd"]:
            by_image[a["image_id"]].append(a)
    referred = {r["ann_id"] for r in refs["refcoco/unc"]}
    closeups = [i for i in sizes if (i - 1000) % CLOSEUP_EVERY == CLOSEUP_AT]
    assert len(closeups) == 6
    huge = 0
    for i in closeups:
        anns = sorted(by_image[i], key=lambda a: -a["area"])
        subject, rest = anns[0], anns[1:]
        assert subject["id"] in referred
        assert len({a["category_id"] for a in anns}) == 2 and len(rest) == 2
        assert all(0.005 <= a["area"] / sizes[i] < 0.01 for a in rest)
        huge += subject["area"] / sizes[i] > 0.6
    assert huge == 3
    singles = [a for anns in by_image.values() for a in anns
               if a["id"] in referred and sum(b["category_id"] == a["category_id"] for b in anns) == 1]
    assert len(singles) >= 40


def test_splits_are_per_image(refs):
    for key, rs in refs.items():
        split_of: Dict[int, str] = {}
        for r in rs:
            assert split_of.setdefault(r["image_id"], r["split"]) == r["split"], key
        scheme = key.split("/")[1]
        assert set(split_of.values()) == EXPECTED_SPLITS[scheme], key
        train = sum(s == "train" for s in split_of.values()) / len(split_of)
        assert 0.45 <= train <= 0.75, (key, train)


def test_refcoco_plus_has_no_location_words(refs):
    for r in refs["refcoco+/unc"]:
        for s in r["sentences"]:
            assert not LOCATION & set(s["tokens"]), s["raw"]


def test_refcoco_has_spatial_and_colour_expressions(refs):
    sents = [set(s["tokens"]) for r in refs["refcoco/unc"] for s in r["sentences"]]
    colours = set(COLOURS)
    assert sum(bool(t & {"left", "right", "middle"}) for t in sents) >= 20
    assert sum(bool(t & colours) for t in sents) >= 20
    assert sum(bool(t & colours) and bool(t & {"left", "right"}) for t in sents) >= 3
    lengths = [len(t) for t in sents]
    g_lengths = [len(s["tokens"]) for r in refs["refcocog/umd"] for s in r["sentences"]]
    assert np.mean(lengths) < 5 < np.mean(g_lengths)


def test_positions_in_refcoco_expressions_are_true(refs, anns):
    """'left X' with no colour word: X is the leftmost object of its category in the image, etc."""
    by_image_cat = defaultdict(list)
    for a in anns.values():
        if not a["iscrowd"]:
            by_image_cat[(a["image_id"], a["category_id"])].append(a)
    checked = 0
    for r in refs["refcoco/unc"]:
        a = anns[r["ann_id"]]
        centre = lambda b: b["bbox"][0] + b["bbox"][2] / 2  # noqa: E731
        xs = sorted(centre(b) for b in by_image_cat[(a["image_id"], a["category_id"])])
        for s in r["sentences"]:
            t = set(s["tokens"])
            if t & set(COLOURS) or t & {"front", "back", "closest", "farthest"}:
                continue
            if t & {"left", "leftmost"}:
                assert centre(a) == xs[0], s["raw"]
            elif t & {"right", "rightmost"}:
                assert centre(a) == xs[-1], s["raw"]
            elif "middle" in t or "center" in t:
                assert len(xs) == 3 and centre(a) == xs[1], s["raw"]
            else:
                continue
            checked += 1
    assert checked >= 20


def test_pickles_hold_plain_data_only(demo):
    root, _ = demo
    for ds, schemes in REF_FILES.items():
        for s in schemes:
            data = (root / ds / f"refs({s}).p").read_bytes()
            ops = {op.name for op, _, _ in pickletools.genops(data)}
            assert not ops & {"GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD", "INST", "OBJ", "NEWOBJ"}, ops
            assert data[:2] == b"\x80\x02"  # protocol 2


def test_ensure_demo_writes_once_and_repairs(tmp_path):
    out = tmp_path / "cache" / "demo"
    assert ensure_demo(out, num_images=2) == out
    marker = json.loads((out / MARKER_NAME).read_text())
    assert marker["params"]["num_images"] == 2 and marker["params"]["seed"] == 0
    assert marker["summary"]["images"] == 2 and marker["summary"]["root"] == str(out)
    img = next((out / "images").iterdir())
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    ensure_demo(out, num_images=2)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    # a missing marker means "not complete": the demo is written again, whatever was there
    good = img.read_bytes()
    img.write_bytes(b"half written")
    (out / MARKER_NAME).unlink()
    ensure_demo(out, num_images=2)
    assert (out / MARKER_NAME).is_file() and img.read_bytes() == good
    # other params -> rewritten
    ensure_demo(out, num_images=3)
    assert json.loads((out / MARKER_NAME).read_text())["summary"]["images"] == 3
    assert len(list((out / "images").iterdir())) == 3
    # no temp folders left next to it
    assert [p.name for p in out.parent.iterdir()] == ["demo"]


def test_ensure_demo_never_replaces_foreign_folders(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(InputError):
        ensure_demo(out, num_images=1)
    assert (out / "thesis.tex").read_text() == "precious"


def test_bad_params_are_rejected(tmp_path):
    with pytest.raises(ValueError):
        write_demo(tmp_path / "x", num_images=0)
    with pytest.raises(ValueError):
        write_demo(tmp_path / "x", seed=-1)


# -- clean plates (the ground truth of removals) --------------------------------------------------
def _ann_mask(ann: Dict[str, Any], h: int, w: int) -> np.ndarray:
    return mask_api.decode(mask_api.merge(mask_api.frPyObjects(ann["segmentation"], h, w))).astype(bool)


@pytest.mark.parametrize("image_index", [2, 5])
def test_clean_plate_differs_only_at_the_object_and_its_shadow(demo, instances, image_index):
    import cv2

    from refcoco_edit.demo import render_clean_plate

    root, _ = demo
    rec = instances["images"][image_index]
    H, W = rec["height"], rec["width"]
    photo = np.asarray(Image.open(root / "images" / rec["file_name"]).convert("RGB"))
    objs = [a for a in instances["annotations"] if a["image_id"] == rec["id"] and not a["iscrowd"]]
    for ann in objs[:2]:
        m = _ann_mask(ann, H, W)
        raw = render_clean_plate(ann["id"], jpeg=False)
        jpg = render_clean_plate(ann["id"])
        assert raw.shape == jpg.shape == photo.shape and raw.dtype == np.uint8
        # inside the object: the background shows, clearly not the object
        d_in = np.abs(jpg.astype(int) - photo.astype(int)).max(axis=2)[m]
        assert d_in.mean() > 12
        # far from the object (outside its box grown by its height on each side): untouched
        x, y, w, h = [int(v) for v in ann["bbox"]]
        near = np.zeros((H, W), bool)
        g = max(w, h)
        near[max(0, y - g):y + h + g, max(0, x - g):x + w + g] = True
        d_raw = np.abs(jpg.astype(int) - photo.astype(int)).max(axis=2)
        assert d_raw[~near].max() <= 2  # JPEG of the same pixels: at most rounding noise
        # its shadow is gone too: just below the object the plate is brighter than the photo
        below = cv2.dilate(m.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~m
        below[: y + int(0.8 * h)] = False
        lum = lambda a: a.astype(float).mean(axis=2)  # noqa: E731
        assert (lum(raw) - lum(photo))[below].mean() > 2


def test_clean_plate_is_deterministic_and_checks_its_id():
    from refcoco_edit.demo import render_clean_plate

    a = render_clean_plate(100001)
    assert a.tobytes() == render_clean_plate(100001).tobytes()
    with pytest.raises(ValueError):
        render_clean_plate(100090)  # the crowd id block
    with pytest.raises(ValueError):
        render_clean_plate(100099 - 40)  # no such object in image 1000
