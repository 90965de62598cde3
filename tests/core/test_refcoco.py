"""Tests of refcoco_edit.refcoco: the refer-layout loader, its safety (pickles, paths), filters
and masks. The fixture writes a tiny but real refer data root (instances.json, refs pickles,
JPEG files) for every dataset / split_by."""
from __future__ import annotations

import json
import os
import pickle
import struct

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_api

from refcoco_edit import rle
from refcoco_edit.errors import InputError, SampleError, UnsafePickleError
from refcoco_edit.imageio import ImageError
from refcoco_edit.refcoco import DATASETS, RefCOCO, _DataOnlyUnpickler, load_refs

SQUARE = [2.0, 2.0, 8.0, 2.0, 8.0, 8.0, 2.0, 8.0]
PART_A = [1.0, 1.0, 9.0, 1.0, 9.0, 7.0, 1.0, 7.0]
PART_B = [5.0, 3.0, 15.0, 3.0, 15.0, 9.0, 5.0, 9.0]  # overlaps PART_A


def _compressed(h, w):
    m = np.zeros((h, w), np.uint8)
    m[3:9, 4:12] = 1
    r = mask_api.encode(np.asfortranarray(m))
    return {"size": [h, w], "counts": r["counts"].decode("ascii")}, m.astype(bool)


IMAGES = [
    {"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": 20, "height": 10},
    {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "width": 16, "height": 16},
    {"id": 3, "file_name": "sub/COCO_train2014_000000000003.jpg", "width": 12, "height": 8},
    {"id": 4, "file_name": "COCO_train2014_000000000004.jpg", "width": 12, "height": 8},  # file is not
]
CATS = [{"id": 1, "name": "person", "supercategory": "person"}, {"id": 2, "name": "dog", "supercategory": "animal"}]


def _anns():
    comp, _ = _compressed(16, 16)
    return [
        {"id": 101, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [SQUARE], "bbox": [2, 2, 6, 6], "area": 36},
        {"id": 102, "image_id": 1, "category_id": 2, "iscrowd": 0, "segmentation": [PART_A, PART_B], "bbox": [1, 1, 14, 8], "area": 1},
        {"id": 103, "image_id": 2, "category_id": 1, "iscrowd": 1, "segmentation": {"size": [16, 16], "counts": [10, 20, 226]}, "bbox": [0, 0, 2, 16], "area": 20},
        {"id": 104, "image_id": 2, "category_id": 2, "iscrowd": 0, "segmentation": comp, "bbox": [4, 3, 8, 6], "area": 48},
        {"id": 105, "image_id": 3, "category_id": 1, "iscrowd": 0, "segmentation": [[1.0, 1.0, 5.0, 5.0]], "bbox": [1, 1, 4, 4], "area": 16},
        {"id": 106, "image_id": 3, "category_id": 2, "iscrowd": 0, "segmentation": [SQUARE], "bbox": [2, 2, 6, 6], "area": 36},
    ]


def _ref(ref_id, ann_id, image_id, cat, split, texts):
    sents = [{"tokens": t.split(), "raw": t, "sent": t, "sent_id": ref_id * 10 + i} for i, t in enumerate(texts)]
    return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split, "category_id": cat,
            "sent_ids": [s["sent_id"] for s in sents], "sentences": sents,
            "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg"}


def _refs():
    return [
        _ref(1, 101, 1, 1, "train", ["man on left", "the left guy"]),
        _ref(2, 102, 1, 2, "testA", ["dog"]),
        _ref(3, 103, 2, 1, "testB", ["crowd"]),
        _ref(4, 104, 2, 2, "testAB", ["brown dog"]),
        _ref(5, 999, 3, 1, "val", ["ghost"]),          # missing annotation
        _ref(6, 105, 3, 1, "test", ["  ", "a person"]),  # one blank sentence
        _ref(7, 106, 3, 2, "train", ["small dog"]),
    ]


def _write(root, dataset, split_by, refs=None, images=None, anns=None, protocol=2):
    d = root / dataset
    d.mkdir(parents=True, exist_ok=True)
    inst = {"info": {}, "licenses": [], "images": images if images is not None else IMAGES,
            "annotations": anns if anns is not None else _anns(), "categories": CATS}
    (d / "instances.json").write_text(json.dumps(inst))
    with open(d / f"refs({split_by}).p", "wb") as f:
        pickle.dump(refs if refs is not None else _refs(), f, protocol=protocol)


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "refer"
    for i, (ds, sbs) in enumerate(DATASETS.items()):
        for j, sb in enumerate(sbs):
            _write(root, ds, sb, protocol=[0, 2, 4][(i + j) % 3])
    imgs = tmp_path / "images"
    for im in IMAGES[:3]:
        p = imgs / im["file_name"]
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (im["width"], im["height"]), (10, 200, 30)).save(p, "JPEG")
    return root, imgs


@pytest.fixture
def rc(data):
    root, imgs = data
    return RefCOCO(root, "refcoco", "unc", images_dir=imgs)


# -- loading ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset,split_by", [(d, s) for d, ss in DATASETS.items() for s in ss])
def test_load_each_combo(data, dataset, split_by):
    root, imgs = data
    r = RefCOCO(root, dataset, split_by, images_dir=imgs)
    assert (r.dataset, r.split_by) == (dataset, split_by)
    assert len(r.refs) == 7 and len(r.anns) == 6 and len(r.images) == 4 and len(r.sents) == 9
    assert r.cats == {1: "person", 2: "dog"}
    assert r.splits == ["test", "testA", "testAB", "testB", "train", "val"]
    assert r.sents[10]["ref_id"] == 1 and r.sent_to_ref[11] == 1
    assert r.image_to_refs[1] == [1, 2] and r.image_to_anns[2] == [103, 104]
    assert r.ref_to_ann[4] == 104 and r.ann_to_ref[104] == 4 and r.cat_to_refs[2] == [2, 4, 7]


def test_defaults(data):
    root, imgs = data
    assert RefCOCO(root, "refcoco", images_dir=imgs).split_by == "unc"
    assert RefCOCO(root, "refcoco+", images_dir=imgs).split_by == "unc"
    assert RefCOCO(root, "refcocog", images_dir=imgs).split_by == "umd"


def test_bad_combos(data):
    root, imgs = data
    with pytest.raises(InputError, match="valid: unc"):
        RefCOCO(root, "refcoco+", "google", images_dir=imgs)
    with pytest.raises(InputError, match="umd"):
        RefCOCO(root, "refcocog", "unc", images_dir=imgs)
    with pytest.raises(InputError, match="known: refcoco"):
        RefCOCO(root, "refclef", images_dir=imgs)


def test_missing_files(data, tmp_path):
    root, imgs = data
    os.remove(root / "refcoco" / "refs(google).p")
    with pytest.raises(InputError) as e:
        RefCOCO(root, "refcoco", "google", images_dir=imgs)
    assert "refs(unc).p" in str(e.value) and "instances.json" in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="does not exist"):
        RefCOCO(empty, "refcoco", images_dir=imgs)
    with pytest.raises(InputError, match="not a directory"):
        RefCOCO(root, "refcoco", images_dir=tmp_path / "no-such-images")


def test_dataset_folder_as_root(data):
    root, imgs = data
    r = RefCOCO(root / "refcocog", "refcocog", images_dir=imgs)
    assert len(r.refs) == 7


def test_uses_c_unpickler():
    import _pickle

    assert issubclass(_DataOnlyUnpickler, _pickle.Unpickler)


# -- filters ----------------------------------------------------------------------------------

def test_filters_intersect(rc):
    assert rc.ref_ids() == [1, 2, 3, 4, 5, 6, 7]
    # refer built a list of lists here
    assert rc.ref_ids(image_ids=[1, 2]) == [1, 2, 3, 4]
    assert rc.ref_ids(image_ids=1) == [1, 2]
    assert rc.ref_ids(split="train") == [1, 7]
    assert rc.ref_ids(split="train", image_ids=[1]) == [1]
    assert rc.ref_ids(split="train", image_ids=[1, 3], cat_ids=[2]) == [7]
    assert rc.ref_ids(split="train", image_ids=[1], cat_ids=[2]) == []
    assert rc.ref_ids(image_ids=[1, 2], cat_ids=[2]) == [2, 4]
    assert rc.ref_ids(ref_ids=[1, 2, 3, 12345], cat_ids=1) == [1, 3]
    assert rc.ref_ids(ref_ids=[1, 2, 3], split="testA", image_ids=[2]) == []
    assert rc.ref_ids(image_ids=[]) == []


def test_split_semantics(rc):
    assert rc.ref_ids(split="testA") == [2]  # not testAB (refer matched 'A' in the name)
    assert rc.ref_ids(split="testB") == [3]
    assert rc.ref_ids(split="testAB") == [4]
    assert rc.ref_ids(split="test") == [2, 3, 4, 6]  # every test* split
    with pytest.raises(ValueError) as e:
        rc.ref_ids(split="testC")
    assert "testA" in str(e.value) and "train" in str(e.value)


def test_test_split_unknown_without_test_splits(data):
    root, imgs = data
    refs = [r for r in _refs() if not r["split"].startswith("test")]
    _write(root, "refcocog", "google", refs=refs)
    r = RefCOCO(root, "refcocog", "google", images_dir=imgs)
    with pytest.raises(ValueError, match="known: train, val"):
        r.ref_ids(split="test")


def test_ann_ids_and_image_ids(rc):
    assert rc.ann_ids() == [101, 102, 103, 104, 105, 106]
    assert rc.ann_ids(image_ids=[2]) == [103, 104]
    assert rc.ann_ids(image_ids=[2], include_crowd=False) == [104]
    assert rc.ann_ids(image_ids=[1, 2], cat_ids=[2]) == [102, 104]
    assert rc.ann_ids(ref_ids=[1, 5], image_ids=[1, 3]) == [101]  # ref 5's ann does not exist
    assert rc.image_ids() == [1, 2, 3, 4]
    assert rc.image_ids(split="train") == [1, 3]
    assert rc.image_ids(ref_ids=[3, 4], split="test") == [2]


# -- masks ------------------------------------------------------------------------------------

def _poly_mask(poly, h, w):
    return mask_api.decode(mask_api.frPyObjects([poly], h, w)[0]).astype(bool)


def test_multipart_union(rc):
    m = rc.ann_mask(102)
    assert m.dtype == bool and m.shape == (10, 20)
    a, b = _poly_mask(PART_A, 10, 20), _poly_mask(PART_B, 10, 20)
    assert (a & b).any()  # the parts overlap
    assert np.array_equal(m, a | b)
    assert m.sum() == (a | b).sum() < a.sum() + b.sum()
    assert np.asarray(m, np.uint8).max() == 1
    r = rc.ann_rle(102)
    assert r["size"] == [10, 20] and isinstance(r["counts"], str) and rle.area(r) == (a | b).sum()


def test_crowd_uncompressed_rle(rc):
    m = rc.ann_mask(103)
    assert m.shape == (16, 16) and m.sum() == 20
    assert m.T.ravel()[10:30].all()  # COCO RLE runs are column-major


def test_compressed_rle(rc):
    _, expected = _compressed(16, 16)
    assert np.array_equal(rc.ann_mask(104), expected)


@pytest.mark.parametrize("seg", [
    [[1.0, 1.0, 5.0, 5.0]],                      # 4 numbers: pycocotools reads a bbox
    [SQUARE, [1.0, 1.0, 5.0, 5.0]],              # a part with 2 points
    [[1.0, 1.0, 5.0, 5.0, 3.0, 3.0, 7.0]],       # odd length
    [[1.0, 1.0, 5.0, float("nan"), 3.0, 3.0]],   # non-finite
    [[0.0, 0.0, 1e9, 0.0, 1e9, 1e9]],            # pycocotools segfaults on this
    [[0.0, 0.0, 5.0, "7", 3.0, 3.0]],            # not a number
    [],                                          # empty
    [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],              # flat, not a list of polygons
    None,
])
def test_bad_polygon(data, seg):
    root, imgs = data
    anns = _anns()
    anns[0]["segmentation"] = seg
    _write(root, "refcoco", "unc", anns=anns)
    r = RefCOCO(root, "refcoco", "unc", images_dir=imgs)  # indexing never decodes masks
    with pytest.raises(rle.MaskError) as e:
        r.ann_rle(101)
    assert e.value.reason == "bad_polygon"


def test_gc_restored(data):
    import gc

    root, imgs = data
    assert gc.isenabled()
    RefCOCO(root, "refcoco", "unc", images_dir=imgs)
    assert gc.isenabled()
    with pytest.raises(InputError):
        RefCOCO(root, "refcoco", "unc", images_dir=imgs / "nope")
    refs = _refs()
    del refs[0]["ann_id"]
    _write(root, "refcoco", "unc", refs=refs)
    with pytest.raises(InputError):
        RefCOCO(root, "refcoco", "unc", images_dir=imgs)
    assert gc.isenabled()
    gc.disable()
    try:
        _write(root, "refcoco", "unc")
        RefCOCO(root, "refcoco", "unc", images_dir=imgs)
        assert not gc.isenabled()  # a caller's choice is kept
    finally:
        gc.enable()


def test_bad_polygon_in_fixture(rc):
    with pytest.raises(rle.MaskError) as e:
        rc.ann_mask(105)
    assert e.value.reason == "bad_polygon"


@pytest.mark.parametrize("seg", [
    {"size": [16, 16], "counts": [10, 20, 200]},          # sum != h*w
    {"size": [16, 16], "counts": [10, 20, 10000]},        # would overflow the decoder
    {"size": [16, 16], "counts": [10, -20, 266]},         # negative run
    {"size": [16, 16], "counts": "0\x7f1"},                # bad character
    {"size": [16, 16], "counts": "PPPPPPPPPPPPPP0"},        # counts sum != h*w (compressed)
    {"size": [8, 8], "counts": [64]},                      # wrong size for the image
    {"size": [16], "counts": [256]},
    {"counts": [256]},
    {"size": [16, 16], "counts": 5},
])
def test_bad_rle(data, seg):
    root, imgs = data
    anns = _anns()
    anns[2]["segmentation"] = seg
    _write(root, "refcoco", "unc", anns=anns)
    r = RefCOCO(root, "refcoco", "unc", images_dir=imgs)
    with pytest.raises(rle.MaskError) as e:
        r.ann_mask(103)
    assert e.value.reason == "bad_rle"


# -- problems ---------------------------------------------------------------------------------

def test_ref_problems(rc):
    probs = rc.ref_problems()
    keys = {(k, reason) for k, reason, _ in probs}
    assert ("ref:5", "missing_annotation") in keys
    assert ("sent:60", "empty_sentence") in keys
    assert ("sent:61", "empty_sentence") not in keys
    assert len(probs) == 2
    with pytest.raises(SampleError) as e:
        rc.ann_rle(rc.ref_to_ann[5])
    assert e.value.reason == "missing_annotation"


def test_ref_without_sentences(data):
    root, imgs = data
    refs = _refs()
    refs[0]["sentences"] = []
    _write(root, "refcoco", "unc", refs=refs)
    r = RefCOCO(root, "refcoco", "unc", images_dir=imgs)
    assert ("ref:1", "empty_sentence") in {(k, reason) for k, reason, _ in r.ref_problems()}


def test_missing_ref_key(data):
    root, imgs = data
    refs = _refs()
    del refs[3]["split"]
    _write(root, "refcoco", "unc", refs=refs)
    with pytest.raises(InputError, match="ref 4 has no 'split'"):
        RefCOCO(root, "refcoco", "unc", images_dir=imgs)


def test_missing_sent_id(data):
    root, imgs = data
    refs = _refs()
    del refs[1]["sentences"][0]["sent_id"]
    _write(root, "refcoco", "unc", refs=refs)
    with pytest.raises(InputError, match="sent_id"):
        RefCOCO(root, "refcoco", "unc", images_dir=imgs)


def test_image_without_size(data):
    root, imgs = data
    images = [dict(im) for im in IMAGES]
    del images[1]["width"]
    _write(root, "refcoco", "unc", images=images)
    with pytest.raises(InputError, match="image 2 has no 'width'"):
        RefCOCO(root, "refcoco", "unc", images_dir=imgs)
    images[1]["width"] = 0
    _write(root, "refcoco", "unc", images=images)
    with pytest.raises(InputError, match="invalid size"):
        RefCOCO(root, "refcoco", "unc", images_dir=imgs)


def test_duplicate_ids(data):
    root, imgs = data
    refs = _refs()
    refs.append(dict(refs[0]))
    _write(root, "refcoco", "unc", refs=refs)
    with pytest.raises(InputError, match="duplicate ref ids"):
        RefCOCO(root, "refcoco", "unc", images_dir=imgs)


# -- pickles ----------------------------------------------------------------------------------

class _MarkerWrite:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))  # unpickling would create the marker file


class _Shell:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("payload", [_MarkerWrite, _Shell])
@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_malicious_pickle(data, tmp_path, payload, protocol):
    root, imgs = data
    marker = tmp_path / f"pwned-{payload.__name__}-{protocol}"
    refs = _refs()
    refs[2]["sentences"][0]["raw"] = payload(str(marker))
    _write(root, "refcoco", "unc", refs=refs, protocol=protocol)
    with pytest.raises(UnsafePickleError) as e:
        RefCOCO(root, "refcoco", "unc", images_dir=imgs)
    assert not marker.exists()
    msg = str(e.value)
    assert "refs(unc).p" in msg and "non-data object" in msg
    assert ("system" in msg) if payload is _Shell else ("open" in msg)


def test_unsafe_is_an_input_error():
    assert issubclass(UnsafePickleError, InputError)


def test_plain_class_refused(tmp_path):
    p = tmp_path / "refs(unc).p"
    p.write_bytes(pickle.dumps([{"a": {1, 2}}], protocol=2))  # a set needs a global
    with pytest.raises(UnsafePickleError, match=r"non-data object '__builtin__\.set'"):
        load_refs(p)


def test_persistent_id_refused(tmp_path):
    import io

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return "ext" if obj == "secret" else None

    buf = io.BytesIO()
    P(buf, protocol=2).dump([{"x": "secret"}])
    p = tmp_path / "refs(unc).p"
    p.write_bytes(buf.getvalue())
    with pytest.raises(UnsafePickleError, match="persistent"):
        load_refs(p)


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_plain_pickles_load(tmp_path, protocol):
    refs = [{"ref_id": 1, "raw": "café ünïcode", "t": (1, 2.5, None, True), "b": b"\x00\xff" if protocol >= 3 else None}]
    p = tmp_path / "refs.p"
    p.write_bytes(pickle.dumps(refs, protocol=protocol))
    assert load_refs(p) == refs


def _py2_pickle(items):
    """A pickle as Python 2 writes a list of dicts of byte strings (SHORT_BINSTRING, protocol 2)."""
    out = bytearray(b"\x80\x02]")  # PROTO 2, EMPTY_LIST
    for d in items:
        out += b"}("  # EMPTY_DICT, MARK
        for k, v in d.items():
            for x in (k, v):
                if isinstance(x, bytes):
                    out += b"U" + bytes([len(x)]) + x  # SHORT_BINSTRING
                else:
                    out += b"J" + struct.pack("<i", x)  # BININT
        out += b"ua"  # SETITEMS, APPEND
    out += b"."
    return bytes(out)


def test_py2_byte_strings_utf8(tmp_path):
    p = tmp_path / "refs.p"
    p.write_bytes(_py2_pickle([{b"raw": "café".encode("utf-8"), b"ref_id": 3}]))
    assert load_refs(p) == [{"raw": "café", "ref_id": 3}]


def test_py2_byte_strings_latin1_fallback(tmp_path):
    p = tmp_path / "refs.p"
    p.write_bytes(_py2_pickle([{b"raw": "café".encode("latin1"), b"ref_id": 3}]))  # not valid UTF-8
    assert load_refs(p) == [{"raw": "café", "ref_id": 3}]


def test_pickle_shape(tmp_path):
    p = tmp_path / "refs.p"
    p.write_bytes(pickle.dumps({"not": "a list"}))
    with pytest.raises(InputError, match="expected a list"):
        load_refs(p)
    p.write_bytes(pickle.dumps([{"a": 1}, "x"]))
    with pytest.raises(InputError, match="item 1"):
        load_refs(p)
    p.write_bytes(b"\x80\x02]q\x00(")  # truncated
    with pytest.raises(InputError, match="not a readable pickle"):
        load_refs(p)


# -- paths ------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", ["../../etc/passwd", "/etc/passwd", "sub/../../x.jpg", "a\\..\\b.jpg",
                                "x.jpg\x00.png", "C:/x.jpg", "..", "", "sub/.."])
def test_path_traversal(data, fn):
    root, imgs = data
    images = [dict(im) for im in IMAGES]
    images[2]["file_name"] = fn
    _write(root, "refcoco", "unc", images=images)
    with pytest.raises(InputError) as e:
        RefCOCO(root, "refcoco", "unc", images_dir=imgs)
    assert "escapes the images folder" in str(e.value) and "image 3" in str(e.value)


def test_dots_in_name_are_fine(data):
    root, imgs = data
    images = [dict(im) for im in IMAGES]
    images[2]["file_name"] = "sub/x..y.jpg"
    _write(root, "refcoco", "unc", images=images)
    r = RefCOCO(root, "refcoco", "unc", images_dir=imgs)
    assert r.image_path(3) == imgs / "sub" / "x..y.jpg"


# -- images -----------------------------------------------------------------------------------

def test_load_image(rc):
    li = rc.load_image(3)
    assert li.array.shape == (8, 12, 3) and li.annotation_frame == "upright"
    assert rc.image_path(3).is_relative_to(rc.images_dir)
    with pytest.raises(ImageError) as e:
        rc.load_image(4)
    assert e.value.reason == "missing_image"
    with pytest.raises(SampleError) as e:
        rc.load_image(12345)
    assert e.value.reason == "missing_image"


def test_load_image_size_mismatch(data):
    root, imgs = data
    images = [dict(im) for im in IMAGES]
    images[0]["width"] = 21
    _write(root, "refcoco", "unc", images=images)
    r = RefCOCO(root, "refcoco", "unc", images_dir=imgs)
    with pytest.raises(ImageError) as e:
        r.load_image(1)
    assert e.value.reason == "size_mismatch"
