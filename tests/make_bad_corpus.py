"""A mini-RefCOCO with one planted defect per image: the input of ``tests/test_bad_inputs.py``.

    python tests/make_bad_corpus.py OUT        # writes OUT/ and prints the manifest (JSON)

``make_bad_corpus(out_dir)`` writes the synthetic demo (16 images, ``refcoco_edit.demo``) and then
corrupts deterministic parts of it, each case on its own image:

image files (shared by every dataset of the demo; file names updated in every instances.json)
  truncated_jpeg      the JPEG cut in half                    -> generate / corrupt_image
  missing_image       the file deleted                        -> generate / missing_image
  cmyk_jpeg           re-saved as a CMYK JPEG                 -> converted (quarantine mode: unsupported_mode)
  grayscale_png       re-saved as an "L" PNG (file_name .png) -> converted (quarantine mode: unsupported_mode)
  palette_png         re-saved as a "P" PNG (file_name .png)  -> converted (quarantine mode: unsupported_mode)
  exif_rotated_jpeg   pixels stored rotated 90 degrees counter-clockwise with EXIF orientation 6, so
                      the upright view is the original photo; instances.json keeps the upright
                      width/height (the annotation was made on the upright photo) -> exported, masks aligned

``refcoco/`` only (instances.json annotations and refs(unc).p)
  polygon_4_numbers   a referred object's segmentation is [[x, y, w, h]] (pycocotools would read a box)
                                                              -> select / bad_polygon   (key ann:<id>)
  polygon_2_points    a referred object's polygon gets a second part of 2 points
                                                              -> select / bad_polygon   (key ann:<id>)
  malformed_rle       a referred object's segmentation is a compressed RLE whose counts cover more
                      than h*w pixels (an overflow for pycocotools' unchecked decoder)
                                                              -> select / bad_rle       (key ann:<id>)
  missing_annotation  a ref's ann_id points to no annotation  -> select / missing_annotation (key ref:<id>)
  empty_sentence      one sentence of a ref with other good sentences blanked ("" raw and sent)
                                                              -> select / empty_sentence (key sent:<id>)

The manifest (also written to ``OUT/bad_corpus.json``)::

    {"root": OUT, "images_dir": OUT/images, "good_image_ids": [...],
     "cases": {name: {"image_id", "file_name", "ann_id", "ref_id", "sent_id", "expected_stage",
                      "expected_reason", "quarantine_mode_reason", "key", "original"}}}

``expected_stage``/``expected_reason`` are None for the images that must be converted and exported;
``key`` is None for image cases (their quarantine keys are the sample ids of the image's samples).
``original`` is the path of a copy of the untouched demo image (under OUT/originals/) for the
image cases. Original demo files are kept bit for bit everywhere else.
"""
from __future__ import annotations

import io
import json
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
from PIL import Image

NUM_IMAGES = 16
MISSING_ANN_ID = 999_999_999
DATASETS = ("refcoco", "refcoco+", "refcocog")

# The order in which cases pick their image: the first image (by id) that fits and is still free.
# Annotation cases want an image with >= 3 refs, so that the image's other objects keep a
# look-alike and still give samples (the run goes on within the image, too).
CASES = (
    "exif_rotated_jpeg",
    "empty_sentence",
    "polygon_4_numbers",
    "polygon_2_points",
    "malformed_rle",
    "missing_annotation",
    "truncated_jpeg",
    "missing_image",
    "cmyk_jpeg",
    "grayscale_png",
    "palette_png",
)


def _read_json(p: Path) -> Dict[str, Any]:
    return json.loads(p.read_text())


def _write_json(p: Path, data: Dict[str, Any]) -> None:
    p.write_bytes(json.dumps(data, separators=(",", ":")).encode("utf-8"))


def _save(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def make_bad_corpus(out_dir: str | Path) -> Dict[str, Any]:
    """Write the demo into ``out_dir`` and plant the defects; return the manifest (see module doc)."""
    from pycocotools import mask as mask_api

    from refcoco_edit.demo import write_demo

    root = Path(out_dir)
    write_demo(root, num_images=NUM_IMAGES)
    images_dir = root / "images"
    originals = root / "originals"
    originals.mkdir(parents=True, exist_ok=True)

    inst_path = root / "refcoco" / "instances.json"
    refs_path = root / "refcoco" / "refs(unc).p"
    inst = _read_json(inst_path)
    with open(refs_path, "rb") as f:
        refs: List[Dict[str, Any]] = pickle.load(f)

    images = {im["id"]: im for im in inst["images"]}
    anns = {a["id"]: a for a in inst["annotations"]}
    refs_of: Dict[int, List[Dict[str, Any]]] = {}
    for r in refs:
        refs_of.setdefault(r["image_id"], []).append(r)

    def first_ref(iid: int) -> Dict[str, Any]:
        return min(refs_of[iid], key=lambda r: r["ref_id"])

    def multi_sentence_ref(iid: int) -> Optional[Dict[str, Any]]:
        c = [r for r in refs_of.get(iid, []) if len(r["sentences"]) >= 2]
        return min(c, key=lambda r: r["ref_id"]) if c else None

    needs: Dict[str, Callable[[int], bool]] = {
        "exif_rotated_jpeg": lambda iid: images[iid]["width"] != images[iid]["height"],
        "empty_sentence": lambda iid: multi_sentence_ref(iid) is not None,
        "polygon_4_numbers": lambda iid: len(refs_of[iid]) >= 3,
        "polygon_2_points": lambda iid: len(refs_of[iid]) >= 3,
        "malformed_rle": lambda iid: len(refs_of[iid]) >= 3,
    }
    used: Dict[str, int] = {}
    free = sorted(i for i in images if refs_of.get(i))
    for case in CASES:
        ok = needs.get(case, lambda iid: True)
        iid = next(i for i in free if ok(i))
        free.remove(iid)
        used[case] = iid

    cases: Dict[str, Dict[str, Any]] = {}
    renamed: Dict[int, str] = {}  # image id -> new file name (all datasets' instances.json)

    def entry(case: str, **kw: Any) -> Dict[str, Any]:
        iid = used[case]
        e = {"image_id": iid, "file_name": images[iid]["file_name"], "ann_id": None, "ref_id": None,
             "sent_id": None, "expected_stage": None, "expected_reason": None,
             "quarantine_mode_reason": None, "key": None, "original": None}
        e.update(kw)
        cases[case] = e
        return e

    def keep_original(iid: int) -> Path:
        name = images[iid]["file_name"]
        dst = originals / name
        shutil.copyfile(images_dir / name, dst)
        return dst

    def pixels(iid: int) -> Image.Image:
        with Image.open(images_dir / images[iid]["file_name"]) as im:
            return im.convert("RGB")

    # -- image files ------------------------------------------------------------------------
    iid = used["truncated_jpeg"]
    orig = keep_original(iid)
    data = orig.read_bytes()
    (images_dir / images[iid]["file_name"]).write_bytes(data[: len(data) // 2])
    entry("truncated_jpeg", expected_stage="generate", expected_reason="corrupt_image", original=str(orig))

    iid = used["missing_image"]
    orig = keep_original(iid)
    (images_dir / images[iid]["file_name"]).unlink()
    entry("missing_image", expected_stage="generate", expected_reason="missing_image", original=str(orig))

    iid = used["cmyk_jpeg"]
    orig = keep_original(iid)
    (images_dir / images[iid]["file_name"]).write_bytes(_save(pixels(iid).convert("CMYK"), "JPEG", quality=95))
    entry("cmyk_jpeg", quarantine_mode_reason="unsupported_mode", original=str(orig))

    for case, mode in (("grayscale_png", "L"), ("palette_png", "P")):
        iid = used[case]
        orig = keep_original(iid)
        rgb = pixels(iid)
        im = rgb.convert("L") if mode == "L" else rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
        assert im.mode == mode
        old = images[iid]["file_name"]
        new = old.rsplit(".", 1)[0] + ".png"
        (images_dir / new).write_bytes(_save(im, "PNG"))
        (images_dir / old).unlink()
        renamed[iid] = new
        entry(case, quarantine_mode_reason="unsupported_mode", original=str(orig))
        cases[case]["file_name"] = new

    iid = used["exif_rotated_jpeg"]
    orig = keep_original(iid)
    upright = np.asarray(pixels(iid))
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # 90 degrees counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": undoes the rotation above
    (images_dir / images[iid]["file_name"]).write_bytes(
        _save(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes()))
    entry("exif_rotated_jpeg", original=str(orig))  # instances keep the upright width/height

    # -- annotations (refcoco only) -----------------------------------------------------------
    iid = used["polygon_4_numbers"]
    ref = first_ref(iid)
    ann = anns[ref["ann_id"]]
    x, y, w, h = ann["bbox"]
    ann["segmentation"] = [[float(x), float(y), float(w), float(h)]]
    entry("polygon_4_numbers", ann_id=ann["id"], ref_id=ref["ref_id"], expected_stage="select",
          expected_reason="bad_polygon", key=f"ann:{ann['id']}")

    iid = used["polygon_2_points"]
    ref = first_ref(iid)
    ann = anns[ref["ann_id"]]
    good = ann["segmentation"][0]
    ann["segmentation"] = [good, list(good[:4])]  # a valid part plus a 2-point part
    entry("polygon_2_points", ann_id=ann["id"], ref_id=ref["ref_id"], expected_stage="select",
          expected_reason="bad_polygon", key=f"ann:{ann['id']}")

    iid = used["malformed_rle"]
    ref = first_ref(iid)
    ann = anns[ref["ann_id"]]
    h, w = images[iid]["height"], images[iid]["width"]
    taller = np.zeros((h + 7, w), dtype=np.uint8, order="F")
    taller[h // 4: h // 2, w // 4: w // 2] = 1
    counts = mask_api.encode(np.asfortranarray(taller))["counts"].decode("ascii")
    ann["segmentation"] = {"size": [h, w], "counts": counts}  # counts cover (h+7)*w pixels
    entry("malformed_rle", ann_id=ann["id"], ref_id=ref["ref_id"], expected_stage="select",
          expected_reason="bad_rle", key=f"ann:{ann['id']}")

    # -- refs (refcoco unc only) ----------------------------------------------------------------
    iid = used["missing_annotation"]
    ref = first_ref(iid)
    assert MISSING_ANN_ID not in anns
    ref["ann_id"] = MISSING_ANN_ID
    entry("missing_annotation", ann_id=MISSING_ANN_ID, ref_id=ref["ref_id"], expected_stage="select",
          expected_reason="missing_annotation", key=f"ref:{ref['ref_id']}")

    iid = used["empty_sentence"]
    ref = multi_sentence_ref(iid)
    sent = ref["sentences"][0]
    sent.update(raw="", sent="", tokens=[])
    assert all(s["sent"].strip() for s in ref["sentences"][1:])
    entry("empty_sentence", ref_id=ref["ref_id"], sent_id=sent["sent_id"], expected_stage="select",
          expected_reason="empty_sentence", key=f"sent:{sent['sent_id']}")

    # -- write back ------------------------------------------------------------------------------
    for r in refs:
        if r["image_id"] in renamed:
            r["file_name"] = r["file_name"].rsplit(".", 1)[0] + ".png"
    for im in inst["images"]:
        if im["id"] in renamed:
            im["file_name"] = renamed[im["id"]]
    _write_json(inst_path, inst)
    with open(refs_path, "wb") as f:
        pickle.dump(refs, f, protocol=2)
    for ds in DATASETS[1:]:  # the other datasets share the image files: keep their file names right
        p = root / ds / "instances.json"
        other = _read_json(p)
        for im in other["images"]:
            if im["id"] in renamed:
                im["file_name"] = renamed[im["id"]]
        _write_json(p, other)

    bad = {c["image_id"] for c in cases.values()}
    manifest = {
        "root": str(root),
        "images_dir": str(images_dir),
        "good_image_ids": sorted(i for i in images if i not in bad),
        "cases": cases,
    }
    (root / "bad_corpus.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python tests/make_bad_corpus.py OUT", file=sys.stderr)
        return 2
    print(json.dumps(make_bad_corpus(argv[0]), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
