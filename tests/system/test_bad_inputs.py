"""Bad input, end to end through the real CLI: every defect is quarantined with its reason and
the run goes on, or (unsafe pickle, escaping image path) the run stops with exit 2 and one line.

The corpus (``tests/support/make_bad_corpus.py``) is the 16-image demo with one planted defect per image;
five images are left untouched ("good"). Each build runs in a subprocess with ``--num-images none``
so that every image, and so every planted case, is visited.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any, Dict, List, Set, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_api

from conftest import run_cli
from support.make_bad_corpus import make_bad_corpus
from refcoco_edit import rle
from refcoco_edit.imageio import decode_image_bytes

CONVERTED = ("cmyk_jpeg", "grayscale_png", "palette_png")
SELECT_CASES = ("polygon_4_numbers", "polygon_2_points", "malformed_rle", "missing_annotation", "empty_sentence")
IMAGE_QUARANTINED = ("truncated_jpeg", "missing_image")


# ----------------------------------------------------------------------------------------------
# fixtures and helpers
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Dict[str, Any]:
    return make_bad_corpus(tmp_path_factory.mktemp("bad-corpus") / "data")


def _build(corpus: Dict[str, Any], workdir: Path, *extra: str):
    return run_cli("build", "--out", str(workdir), "--refcoco", corpus["root"], "--images", corpus["images_dir"],
                   "--num-images", "none", *extra, timeout=120)


@pytest.fixture(scope="module")
def convert_run(corpus, tmp_path_factory) -> Tuple[Path, Any]:
    w = tmp_path_factory.mktemp("bad-build") / "W"
    return w, _build(corpus, w)


@pytest.fixture(scope="module")
def quarantine_run(corpus, tmp_path_factory) -> Tuple[Path, Any]:
    w = tmp_path_factory.mktemp("bad-build-q") / "W"
    return w, _build(corpus, w, "--image-modes", "quarantine")


def _quarantine(w: Path) -> List[Dict[str, Any]]:
    files = sorted((w / "quarantine").glob("*.parquet"))
    return [r for f in files for r in pq.read_table(f).to_pylist()]


def _selected(w: Path) -> List[Dict[str, Any]]:
    cols = ["sample_id", "image_id", "ref_id", "ann_id", "sent_id"]
    return pq.read_table(w / "select" / "shard-00000.parquet", columns=cols).to_pylist()


def _exported(w: Path) -> List[Dict[str, Any]]:
    files = sorted((w / "export").glob("*.parquet"))
    assert files, f"no export in {w}"
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pylist()


def _samples_of(selected: List[Dict[str, Any]], image_id: int) -> Set[str]:
    return {r["sample_id"] for r in selected if r["image_id"] == image_id}


def _expected_quarantine(corpus: Dict[str, Any], selected: List[Dict[str, Any]],
                         image_modes: str = "convert") -> Set[Tuple[str, str, str]]:
    """(stage, key, reason) of every record the planted cases must produce, and nothing else."""
    out = set()
    for name, case in corpus["cases"].items():
        reason = case["expected_reason"]
        if image_modes == "quarantine" and case["quarantine_mode_reason"]:
            reason = case["quarantine_mode_reason"]
        if reason is None:
            continue
        if name in SELECT_CASES:
            out.add(("select", case["key"], reason))
        else:  # an image case: every sample of the image fails at generate
            sids = _samples_of(selected, case["image_id"])
            assert sids, f"{name}: image {case['image_id']} gave no sample, so the case was never visited"
            out |= {("generate", sid, reason) for sid in sids}
    return out


def _ok_run(run) -> None:
    w, proc = run
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr + proc.stdout


def _original(case: Dict[str, Any]) -> np.ndarray:
    with Image.open(case["original"]) as im:
        return np.asarray(im.convert("RGB"))


def _annotation_mask(corpus: Dict[str, Any], ann_id: int) -> np.ndarray:
    """The annotation's mask straight from instances.json through pycocotools (union of parts)."""
    inst = json.loads((Path(corpus["root"]) / "refcoco" / "instances.json").read_text())
    ann = next(a for a in inst["annotations"] if a["id"] == ann_id)
    img = next(i for i in inst["images"] if i["id"] == ann["image_id"])
    rles = mask_api.frPyObjects(ann["segmentation"], img["height"], img["width"])
    return mask_api.decode(mask_api.merge(rles)).astype(bool)


def _check_intact(row: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray]:
    """Reference == source outside M_e bit for bit, and differs inside it."""
    src = decode_image_bytes(row["source_image"]["bytes"])
    ref = decode_image_bytes(row["reference_image"]["bytes"])
    me = rle.decode(row["edit_mask"])
    sid = row["sample_id"]
    assert src.shape == ref.shape and me.shape == src.shape[:2], sid
    assert np.array_equal(src[~me], ref[~me]), f"{sid}: reference differs from source outside M_e"
    assert me.any() and not np.array_equal(src[me], ref[me]), f"{sid}: no change inside M_e"
    return src, ref


def _one_line_exit_2(proc) -> str:
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("refcoco-edit: error:"), lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    return lines[0]


def _refcoco_copy(corpus: Dict[str, Any], dst: Path) -> Path:
    """A refer root holding a copy of the corpus's refcoco/ (images stay in the corpus)."""
    shutil.copytree(Path(corpus["root"]) / "refcoco", dst / "refcoco")
    return dst


# ----------------------------------------------------------------------------------------------
# the corpus itself
# ----------------------------------------------------------------------------------------------

def test_corpus_plants_each_case_on_its_own_image(corpus):
    cases = corpus["cases"]
    ids = [c["image_id"] for c in cases.values()]
    assert len(ids) == len(set(ids)) == 11
    assert len(corpus["good_image_ids"]) == 16 - 11 and not set(ids) & set(corpus["good_image_ids"])
    images = Path(corpus["images_dir"])
    assert not (images / cases["missing_image"]["file_name"]).exists()
    modes = {n: Image.open(images / cases[n]["file_name"]).mode for n in CONVERTED}
    assert modes == {"cmyk_jpeg": "CMYK", "grayscale_png": "L", "palette_png": "P"}
    with Image.open(images / cases["exif_rotated_jpeg"]["file_name"]) as im:
        stored_wh, orientation = im.size, im.getexif().get(0x0112)
    h, w = _original(cases["exif_rotated_jpeg"]).shape[:2]
    assert orientation == 6 and stored_wh == (h, w) and h != w  # stored sideways


# ----------------------------------------------------------------------------------------------
# default run (--image-modes convert)
# ----------------------------------------------------------------------------------------------

def test_run_goes_on_and_quarantines_exactly_the_planted_cases(corpus, convert_run):
    _ok_run(convert_run)
    w, proc = convert_run
    got = _quarantine(w)
    assert all(r["error"] for r in got)
    triples = [(r["stage"], r["key"], r["reason"]) for r in got]
    assert len(triples) == len(set(triples)), "a record is quarantined twice"
    expected = _expected_quarantine(corpus, _selected(w))
    assert set(triples) == expected
    # every reason of the issue shows up, each from its own case
    reasons = {(r["stage"], r["reason"]) for r in got}
    assert reasons == {("generate", "corrupt_image"), ("generate", "missing_image"), ("select", "bad_polygon"),
                       ("select", "bad_rle"), ("select", "missing_annotation"), ("select", "empty_sentence")}
    assert "quarantined" in proc.stdout


def test_broken_records_never_reach_the_export_but_their_images_still_do(corpus, convert_run):
    _ok_run(convert_run)
    w, _ = convert_run
    rows = _exported(w)
    cases = corpus["cases"]
    bad_anns = {cases[n]["ann_id"] for n in ("polygon_4_numbers", "polygon_2_points", "malformed_rle")}
    assert not {r["ann_id"] for r in rows} & bad_anns
    assert cases["missing_annotation"]["ref_id"] not in {r["ref_id"] for r in rows}
    assert cases["empty_sentence"]["sent_id"] not in {r["sent_id"] for r in rows}
    assert all(r["referring_expression"].strip() for r in rows)
    exported_images = {r["image_id"] for r in rows}
    assert not exported_images & {cases[n]["image_id"] for n in IMAGE_QUARANTINED}
    for n in SELECT_CASES:  # the image's other objects still make samples
        assert cases[n]["image_id"] in exported_images, n


def test_every_sample_not_quarantined_is_exported_and_intact(corpus, convert_run):
    _ok_run(convert_run)
    w, _ = convert_run
    selected = _selected(w)
    failed = {r["key"] for r in _quarantine(w) if r["stage"] != "select"}
    rows = _exported(w)
    assert {r["sample_id"] for r in rows} == {r["sample_id"] for r in selected} - failed
    images = {i["id"]: i for i in json.loads((Path(corpus["root"]) / "refcoco" / "instances.json").read_text())["images"]}
    good = set(corpus["good_image_ids"])
    for sid in set().union(*(_samples_of(selected, i) for i in good)):
        assert sid not in failed
    n_good = 0
    for row in rows:
        src, _ = _check_intact(row)
        info = images[row["image_id"]]
        assert src.shape == (info["height"], info["width"], 3)
        if row["image_id"] in good:
            # an untouched RGB JPEG is kept as its original bytes
            n_good += 1
            raw = (Path(corpus["images_dir"]) / info["file_name"]).read_bytes()
            assert row["source_image"]["bytes"] == raw
            assert np.array_equal(rle.decode(row["source_mask"]), _annotation_mask(corpus, row["ann_id"]))
    assert n_good == sum(len(_samples_of(selected, i)) for i in good) > 0


@pytest.mark.parametrize("name,tol", [("cmyk_jpeg", 2.0), ("grayscale_png", None), ("palette_png", 4.0)])
def test_cmyk_grayscale_palette_are_converted_and_exported(corpus, convert_run, name, tol):
    _ok_run(convert_run)
    w, _ = convert_run
    case = corpus["cases"][name]
    want = _samples_of(_selected(w), case["image_id"])
    rows = [r for r in _exported(w) if r["image_id"] == case["image_id"]]
    assert want and {r["sample_id"] for r in rows} == want
    orig = _original(case)
    for row in rows:
        src = decode_image_bytes(row["source_image"]["bytes"])
        assert src.shape == orig.shape
        if name == "grayscale_png":
            assert np.array_equal(src[..., 0], src[..., 1]) and np.array_equal(src[..., 0], src[..., 2])
            grey = np.asarray(Image.open(case["original"]).convert("L"))
            assert np.array_equal(src[..., 0], grey)
        else:
            assert np.abs(src.astype(int) - orig.astype(int)).mean() < tol
        assert np.array_equal(rle.decode(row["source_mask"]), _annotation_mask(corpus, row["ann_id"]))


def test_exif_rotated_photo_is_turned_upright_and_masks_line_up(corpus, convert_run):
    _ok_run(convert_run)
    w, _ = convert_run
    case = corpus["cases"]["exif_rotated_jpeg"]
    want = _samples_of(_selected(w), case["image_id"])
    rows = [r for r in _exported(w) if r["image_id"] == case["image_id"]]
    assert want and {r["sample_id"] for r in rows} == want
    orig = _original(case).astype(float)  # the un-rotated demo photo the annotation was made on
    for row in rows:
        src = decode_image_bytes(row["source_image"]["bytes"]).astype(float)
        assert src.shape == orig.shape  # upright, not the stored sideways frame
        assert np.abs(src - orig).mean() < 3.0  # the same photo, up to one JPEG re-encode
        mask = rle.decode(row["source_mask"])
        assert np.array_equal(mask, _annotation_mask(corpus, row["ann_id"]))
        # the mask covers the same object in both: its colour under the mask is the object's colour
        obj = orig[mask].mean(axis=0)
        assert np.abs(src[mask].mean(axis=0) - obj).max() < 4.0
        # ... which a wrongly oriented photo would not show there (the check can tell)
        for wrong in (np.rot90(orig, 2), orig[::-1], orig[:, ::-1]):
            assert np.abs(wrong[mask].mean(axis=0) - obj).max() > 10.0
        # the edit happened on that object: M_e holds the source mask
        me = rle.decode(row["edit_mask"])
        assert (me & mask).sum() >= 0.99 * mask.sum()


# ----------------------------------------------------------------------------------------------
# --image-modes quarantine
# ----------------------------------------------------------------------------------------------

def _is_grey(png: bytes) -> bool:
    with Image.open(io.BytesIO(png)) as im:
        a = np.asarray(im.convert("RGBA"))
    rgb = a[..., :3][a[..., 3] > 0]
    return bool(len(rgb)) and np.array_equal(rgb[:, 0], rgb[:, 1]) and np.array_equal(rgb[:, 0], rgb[:, 2])


def test_image_modes_quarantine_quarantines_non_rgb_images(corpus, quarantine_run):
    _ok_run(quarantine_run)
    w, _ = quarantine_run
    selected = _selected(w)
    records = _quarantine(w)
    got = {(r["stage"], r["key"], r["reason"]) for r in records}
    expected = _expected_quarantine(corpus, selected, image_modes="quarantine")
    assert expected <= got
    cases = corpus["cases"]
    for n in CONVERTED:
        sids = _samples_of(selected, cases[n]["image_id"])
        assert sids and {("generate", s, "unsupported_mode") for s in sids} <= got, n

    # nothing else: a replace whose seeded exemplar draw hits an unusable instance moves on to
    # the next instance, so no good sample is lost to the quarantined images
    assert got == expected, sorted(got ^ expected)
    unusable_images = {cases[n]["image_id"] for n in CONVERTED + IMAGE_QUARANTINED}

    rows = _exported(w)
    failed = {r["key"] for r in records if r["stage"] != "select"}
    assert {r["sample_id"] for r in rows} == {r["sample_id"] for r in selected} - failed
    exported_images = {r["image_id"] for r in rows}
    assert not exported_images & unusable_images
    # an EXIF-rotated photo is RGB: still exported; good images too
    assert cases["exif_rotated_jpeg"]["image_id"] in exported_images
    assert set(corpus["good_image_ids"]) <= exported_images
    for row in rows:
        _check_intact(row)
        # no exemplar is cut from a quarantined image either (the grayscale one would show as grey)
        if row["exemplar_image"] and row["exemplar_image"]["bytes"]:
            assert not _is_grey(row["exemplar_image"]["bytes"]), row["sample_id"]


# ----------------------------------------------------------------------------------------------
# unusable input: exit 2, one line, nothing executed, nothing written
# ----------------------------------------------------------------------------------------------

class _Payload:
    """Unpickled by a plain ``pickle.load``, this creates the folder ``path``."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _evil_refs(corpus: Dict[str, Any], marker: Path) -> bytes:
    with open(Path(corpus["root"]) / "refcoco" / "refs(unc).p", "rb") as f:
        refs = pickle.load(f)
    refs[3]["sentences"][0]["tokens"] = _Payload(str(marker))
    return pickle.dumps(refs, protocol=2)


def test_pickle_with_a_non_data_object_stops_the_run_unexecuted(corpus, tmp_path):
    # the payload is live: a plain unpickler runs it
    control = tmp_path / "control-marker"
    pickle.loads(_evil_refs(corpus, control))
    assert control.is_dir()

    marker = tmp_path / "pwned-marker"
    root = _refcoco_copy(corpus, tmp_path / "evil")
    (root / "refcoco" / "refs(unc).p").write_bytes(_evil_refs(corpus, marker))
    w = tmp_path / "W"
    proc = run_cli("build", "--out", str(w), "--refcoco", str(root), "--images", corpus["images_dir"],
                   "--num-images", "none", timeout=120)
    line = _one_line_exit_2(proc)
    assert "refs(unc).p" in line and "mkdir" in line
    assert not marker.exists()
    assert not w.exists()  # refused before the workspace was touched


def test_image_path_escaping_the_images_folder_stops_the_run(corpus, tmp_path):
    root = _refcoco_copy(corpus, tmp_path / "escape")
    p = root / "refcoco" / "instances.json"
    inst = json.loads(p.read_text())
    good = corpus["good_image_ids"][0]
    next(i for i in inst["images"] if i["id"] == good)["file_name"] = "../../etc/passwd"
    p.write_text(json.dumps(inst))
    w = tmp_path / "W"
    proc = run_cli("build", "--out", str(w), "--refcoco", str(root), "--images", corpus["images_dir"],
                   "--num-images", "none", timeout=120)
    line = _one_line_exit_2(proc)
    assert "../../etc/passwd" in line
    assert not w.exists()
