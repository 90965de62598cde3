"""Tests of refcoco_edit.select: the paper's two rules, the scores, the sampling plan, determinism,
and quarantine of bad input. Each test writes a small but real refer data root (instances.json,
refs(unc).p with pickle protocol 2, PNG images painted with the objects' own masks, so that the
colour-similarity path sees real pixels) and loads it through ``RefCOCO``."""
from __future__ import annotations

import json
import math
import pickle
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pytest
from PIL import Image

from refcoco_edit import rle
from refcoco_edit.refcoco import RefCOCO
from refcoco_edit.schema import rows_to_table
from refcoco_edit.select import SelectionConfig, Selector, format_report
from refcoco_edit.vocab import COCO_CATEGORIES, COLOURS, MATERIALS

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H = W = 100
CAT_ID = {name: cid for cid, name in COCO_CATEGORIES.items()}
RED, BLUE, GREEN, GREY = (200, 30, 35), (35, 80, 200), (40, 160, 60), (128, 128, 128)


def rect(x: float, y: float, w: float, h: float) -> List[List[float]]:
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def disc(cx: float, cy: float, r: float, n: int = 32) -> List[List[float]]:
    return [[v for k in range(n) for v in (cx + r * math.cos(2 * math.pi * k / n), cy + r * math.sin(2 * math.pi * k / n))]]


class Refer:
    """Builds a refer data root: ``image`` / ``ann`` / ``ref``, then ``load()`` writes and indexes it."""

    def __init__(self, root: Path):
        self.root = root
        self.images: List[Dict[str, Any]] = []
        self.anns: List[Dict[str, Any]] = []
        self.refs: List[Dict[str, Any]] = []
        self.paint: Dict[int, List[Any]] = defaultdict(list)
        self.no_file: set = set()

    def image(self, iid: int, write: bool = True) -> "Refer":
        self.images.append({"id": iid, "file_name": f"COCO_train2014_{iid:012d}.png", "width": W, "height": H})
        if not write:
            self.no_file.add(iid)
        return self

    def ann(self, aid: int, iid: int, cat: str, seg: Any, colour: Optional[Sequence[int]] = RED,
            crowd: int = 0) -> "Refer":
        self.anns.append({"id": aid, "image_id": iid, "category_id": CAT_ID[cat], "iscrowd": crowd,
                          "segmentation": seg, "bbox": [0, 0, 1, 1], "area": 1})
        if colour is not None:
            self.paint[iid].append((seg, colour))
        return self

    def ref(self, rid: int, aid: int, iid: int, cat: str, sents: Sequence[str] = ("the one on the left",),
            split: str = "train") -> "Refer":
        ss = [{"tokens": t.split(), "raw": t, "sent": t, "sent_id": rid * 10 + i} for i, t in enumerate(sents)]
        self.refs.append({"ref_id": rid, "ann_id": aid, "image_id": iid, "split": split,
                          "category_id": CAT_ID[cat], "sent_ids": [s["sent_id"] for s in ss], "sentences": ss,
                          "file_name": f"COCO_train2014_{iid:012d}_{aid}.jpg"})
        return self

    def load(self) -> RefCOCO:
        d = self.root / "refcoco"
        d.mkdir(parents=True, exist_ok=True)
        cats = [{"id": cid, "name": n, "supercategory": "x"} for cid, n in COCO_CATEGORIES.items()]
        (d / "instances.json").write_text(json.dumps(
            {"images": self.images, "annotations": self.anns, "categories": cats}))
        with open(d / "refs(unc).p", "wb") as f:
            pickle.dump(self.refs, f, protocol=2)
        imgs = self.root / "images"
        imgs.mkdir(exist_ok=True)
        for im in self.images:
            if im["id"] in self.no_file:
                continue
            a = np.zeros((H, W, 3), np.uint8)
            a[:] = GREY
            for seg, colour in self.paint[im["id"]]:
                try:
                    a[rle.decode(rle.segmentation_to_rle(seg, H, W))] = colour
                except rle.MaskError:
                    pass  # a malformed annotation has no pixels of its own
            Image.fromarray(a).save(imgs / im["file_name"])
        return RefCOCO(self.root, "refcoco", "unc", images_dir=imgs)


def select(refer: RefCOCO, seed: int = 0, available: Optional[Sequence[str]] = None, **cfg: Any):
    cfg.setdefault("num_images", None)
    return Selector(refer, SelectionConfig(**cfg), seed=seed, available_categories=available).run()


def by_ref(rows: List[Dict[str, Any]]) -> Dict[int, List[Dict[str, Any]]]:
    out: Dict[int, List[Dict[str, Any]]] = defaultdict(list)
    for r in rows:
        out[r["ref_id"]].append(r)
    return out


def accounting_holds(report: Dict[str, Any]) -> bool:
    """Every considered ref is either dropped by exactly one rule or passed both rules."""
    return report["refs_considered"] == sum(report["dropped"].values()) + report["refs_passed"]


# ----------------------------------------------------------------------------------------------
# the two rules
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def rules(tmp_path) -> RefCOCO:
    b = Refer(tmp_path)
    # 1: a big dog (> max_area_fraction) and a small dog
    b.image(1).ann(11, 1, "dog", rect(5, 5, 80, 80)).ann(12, 1, "dog", rect(88, 88, 10, 10), BLUE)
    b.ref(1, 11, 1, "dog").ref(2, 12, 1, "dog")
    # 2: a dog with only a tiny dog beside it (not sizeable; itself too small)
    b.image(2).ann(21, 2, "dog", rect(10, 10, 30, 30)).ann(22, 2, "dog", rect(60, 60, 4, 4))
    b.ref(3, 21, 2, "dog").ref(4, 22, 2, "dog")
    # 3: a crowd of people and two people
    crowd = {"size": [H, W], "counts": [0, 500, H * W - 500]}
    b.image(3).ann(31, 3, "person", crowd, crowd=1).ann(32, 3, "person", rect(20, 20, 20, 40))
    b.ann(33, 3, "person", rect(60, 20, 20, 40), BLUE)
    b.ref(5, 31, 3, "person").ref(6, 32, 3, "person").ref(7, 33, 3, "person")
    # 4: unlike objects of other categories (red disc vs blue bar)
    b.image(4).ann(41, 4, "apple", disc(25, 50, 12), RED).ann(42, 4, "car", rect(20, 80, 60, 10), BLUE)
    b.ref(8, 41, 4, "apple").ref(9, 42, 4, "car")
    # 5: two red discs of different categories: visually alike
    b.image(5).ann(51, 5, "apple", disc(25, 50, 12), RED).ann(52, 5, "orange", disc(75, 50, 12), RED)
    b.ref(10, 51, 5, "apple").ref(11, 52, 5, "orange")
    # 7: three cats + a dog that looks exactly like cat 71 + a cat under min_distractor_fraction
    b.image(7).ann(71, 7, "cat", rect(5, 5, 20, 20), RED).ann(72, 7, "cat", disc(60, 20, 10), BLUE)
    b.ann(73, 7, "cat", rect(10, 60, 30, 15), GREEN).ann(74, 7, "dog", rect(60, 60, 20, 20), RED)
    b.ann(75, 7, "cat", rect(90, 90, 3, 3), GREEN)
    b.ref(12, 71, 7, "cat")
    return b.load()


def test_rules_drop_and_keep(rules):
    res = select(rules, samples_per_image=10)
    rep = res.report
    assert rep["dropped"] == {"missing_annotation": 0, "bad_annotation": 0, "no_sentence": 0, "crowd": 1,
                              "too_small": 1, "sole_subject": 2, "no_similar": 2}
    assert rep["kept_by_rule2"] == {"same_category": 4, "visual": 2}
    assert rep["refs_considered"] == 12 and rep["refs_passed"] == 6 and accounting_holds(rep)
    assert rep["images_considered"] == 6 and rep["images_kept"] == 4
    assert sorted({r["image_id"] for r in res.rows}) == [1, 3, 5, 7]
    rows = by_ref(res.rows)
    # kept: the small dog beside the big one, the two people, the two red discs, cat 71
    assert set(rows) == {2, 6, 7, 10, 11, 12}
    assert res.quarantine == []



def test_rule2_same_category_distractors_are_exactly_the_same_category_others(rules):
    res = select(rules, samples_per_image=10)
    rows = by_ref(res.rows)
    expected = {2: [11], 6: [33], 7: [32], 12: [72, 73]}  # crowd 31 and tiny cat 75 are no distractors
    for rid, ann_ids in expected.items():
        for row in rows[rid]:
            assert row["distractor_ann_ids"] == ann_ids
            assert row["distractor_categories"] == [row["category"]] * len(ann_ids)
            assert len(row["distractor_masks"]) == len(ann_ids)
            for aid, m in zip(ann_ids, row["distractor_masks"]):
                assert set(m) == {"size", "counts"} and m["size"] == [H, W]
                np.testing.assert_array_equal(rle.decode(m), rules.ann_mask(aid))
            assert row["selection"]["max_similarity"] == 1.0
    # dog 74 looks exactly like cat 71, but a same-category look-alike exists: only cats are listed
    assert 74 not in rows[12][0]["distractor_ann_ids"]


def test_rule2_visual_similarity_keeps_look_alikes_of_other_categories(rules):
    res = select(rules, samples_per_image=10, similarity_threshold=0.7)
    rows = by_ref(res.rows)
    for rid, other, other_cat in ((10, 52, "orange"), (11, 51, "apple")):
        for row in rows[rid]:
            assert row["distractor_ann_ids"] == [other] and row["distractor_categories"] == [other_cat]
            np.testing.assert_array_equal(rle.decode(row["distractor_masks"][0]), rules.ann_mask(other))
            sel = row["selection"]
            assert sel["n_same_category"] == 0
            assert 0.7 <= sel["max_similarity"] <= 1.0
            assert sel["max_similarity"] > 0.95  # same shape, size and colour
    assert res.report["kept_by_rule2"]["visual"] == 2
    # a threshold above any similarity drops them as no_similar
    strict = select(rules, samples_per_image=10, similarity_threshold=1.01)
    assert strict.report["kept_by_rule2"]["visual"] == 0
    assert strict.report["dropped"]["no_similar"] == 4
    assert not {10, 11} & set(by_ref(strict.rows))


def test_rule2_colour_comes_from_the_pixels(tmp_path):
    """Same shape, different colour: alike by shape only; the image's pixels tell them apart."""
    b = Refer(tmp_path)
    b.image(1).ann(1, 1, "apple", disc(25, 50, 12), RED).ann(2, 1, "orange", disc(75, 50, 12), BLUE)
    b.ref(1, 1, 1, "apple").ref(2, 2, 1, "orange")
    b.image(2, write=False).ann(3, 2, "apple", disc(25, 50, 12), RED).ann(4, 2, "orange", disc(75, 50, 12), BLUE)
    b.ref(3, 3, 2, "apple").ref(4, 4, 2, "orange")
    refer = b.load()

    with_pixels = select(refer, samples_per_image=10)
    # image 1: colours differ -> no_similar; image 2 has no file -> shape alone -> kept
    assert with_pixels.report["dropped"]["no_similar"] == 2
    assert set(by_ref(with_pixels.rows)) == {3, 4}
    assert with_pixels.report["kept_by_rule2"]["visual"] == 2

    shape_only = select(refer, samples_per_image=10, use_pixels=False)
    assert shape_only.report["dropped"]["no_similar"] == 0
    assert set(by_ref(shape_only.rows)) == {1, 2, 3, 4}
    for row in shape_only.rows:
        assert row["selection"]["max_similarity"] > 0.95


def test_scores_on_each_row(rules):
    res = select(rules, samples_per_image=10)
    n_same = {2: 1, 6: 1, 7: 1, 10: 0, 11: 0, 12: 2}
    n_sizeable = {2: 1, 6: 1, 7: 1, 10: 1, 11: 1, 12: 3}  # crowd never counts; tiny cat 75 is not sizeable
    for row in res.rows:
        sel = row["selection"]
        assert set(sel) == {"area_fraction", "n_sizeable_others", "n_same_category", "max_similarity", "score"}
        mask = rules.ann_mask(row["ann_id"])
        np.testing.assert_array_equal(rle.decode(row["source_mask"]), mask)
        assert sel["area_fraction"] == pytest.approx(mask.sum() / (H * W))
        assert sel["area_fraction"] == pytest.approx(rle.area(row["source_mask"]) / (H * W))
        assert row["bbox"] == rle.to_bbox(row["source_mask"])
        assert sel["n_same_category"] == n_same[row["ref_id"]]
        assert sel["n_sizeable_others"] == n_sizeable[row["ref_id"]]
        f = sel["area_fraction"]
        size_pref = math.exp(-((math.log(f) - math.log(0.05)) ** 2) / 2)
        expect = size_pref + 0.25 * min(len(row["distractor_ann_ids"]), 4) + 0.5 * sel["max_similarity"]
        assert sel["score"] == pytest.approx(expect, abs=1e-6)
        assert row["category"] == rules.cats[rules.anns[row["ann_id"]]["category_id"]]
        assert row["image_id"] == rules.refs[row["ref_id"]]["image_id"]
        assert row["source_image"] == {"bytes": None, "path": rules.images[row["image_id"]]["file_name"]}
    # the ones whose area is known by construction
    rows = by_ref(res.rows)
    assert rows[2][0]["selection"]["area_fraction"] == pytest.approx(0.01)
    assert rows[6][0]["selection"]["area_fraction"] == pytest.approx(0.08)
    assert rows[12][0]["selection"]["area_fraction"] == pytest.approx(0.04)


def test_rule1_thresholds_follow_the_config(rules):
    # raising max_area_fraction lets the big dog through (its small twin is its distractor)
    res = select(rules, samples_per_image=10, max_area_fraction=0.7)
    assert 1 in by_ref(res.rows) and by_ref(res.rows)[1][0]["distractor_ann_ids"] == [12]
    assert res.report["dropped"]["sole_subject"] == 1
    # lowering min_area_fraction and sizeable_fraction: the 16-pixel dog becomes usable, and sizeable
    res = select(rules, samples_per_image=10, min_area_fraction=0.001, sizeable_fraction=0.001)
    assert {3, 4} <= set(by_ref(res.rows))
    assert res.report["dropped"]["too_small"] == 0 and res.report["dropped"]["sole_subject"] == 1


def test_format_report_mentions_each_rule_with_counts(rules):
    res = select(rules, samples_per_image=10)
    text = format_report(res.report)
    assert isinstance(text, str)
    for n, label in ((2, "rule 1: sole prominent subject"), (2, "rule 2: no similar object"),
                     (1, "too small"), (1, "crowd"), (0, "missing annotation"), (0, "malformed mask"),
                     (0, "no usable sentence")):
        assert re.search(rf"dropped\s+{n}\s+{re.escape(label)}", text), (label, text)
    assert re.search(r"kept\s+4\s+rule 2 by a same-category object", text)
    assert re.search(r"kept\s+2\s+rule 2 by a visually similar object", text)
    rep = res.report
    assert f"{rep['images_kept']} images kept of {rep['images_considered']} visited" in text
    assert f"{rep['refs_considered']} objects considered, {rep['refs_passed']} passed both rules" in text
    assert f"used in {rep['samples']} samples" in text
    for t, n in rep["edit_types"].items():
        assert f"{t} {n}" in text


# ----------------------------------------------------------------------------------------------
# sampling plan and determinism
# ----------------------------------------------------------------------------------------------

CATS_CYCLE = ("dog", "cat", "apple", "car", "person")
N_MANY = 12


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> RefCOCO:
    """Images 1-10: three same-category objects, all referred (odd ids train, even val);
    images 11-12: two dogs of which only one is referred (exactly one eligible object)."""
    b = Refer(tmp_path_factory.mktemp("many"))
    boxes = (rect(5, 5, 20, 20), rect(40, 40, 20, 20), rect(70, 10, 20, 25))
    colours = (RED, BLUE, GREEN)
    for iid in range(1, 11):
        cat = CATS_CYCLE[iid % len(CATS_CYCLE)]
        b.image(iid)
        for j, (seg, col) in enumerate(zip(boxes, colours)):
            aid = iid * 10 + j
            b.ann(aid, iid, cat, seg, col).ref(aid, aid, iid, cat, split="train" if iid % 2 else "val",
                                             sents=(f"the {cat} number {j}", f"{cat} {j} in the picture"))
    for iid in (11, 12):
        b.image(iid).ann(iid * 10, iid, "dog", rect(5, 5, 30, 30)).ann(iid * 10 + 1, iid, "dog", rect(50, 50, 30, 30))
        b.ref(iid * 10, iid * 10, iid, "dog", sents=("the dog on the left",))
    return b.load()


def _image_order(rows: List[Dict[str, Any]]) -> List[int]:
    return list(dict.fromkeys(r["image_id"] for r in rows))


def test_same_seed_same_rows(many):
    a = select(many, seed=7, num_images=5)
    b = select(many, seed=7, num_images=5)
    assert rows_to_table(a.rows).to_pylist() == rows_to_table(b.rows).to_pylist()
    assert a.rows == b.rows and a.report == b.report and a.quarantine == b.quarantine
    assert len(a.rows) == 10


def test_different_seed_different_images(many):
    a = select(many, seed=0, num_images=5)
    b = select(many, seed=1, num_images=5)
    assert _image_order(a.rows) != _image_order(b.rows)
    assert [r["sample_id"] for r in a.rows] != [r["sample_id"] for r in b.rows]


@pytest.mark.parametrize("n", [1, 5, N_MANY])
def test_num_images_target(many, n):
    res = select(many, seed=3, num_images=n, samples_per_image=2)
    rep = res.report
    assert rep["images_kept"] == n == len(_image_order(res.rows))
    assert rep["images_considered"] == n  # every image is eligible: the walk stops at the target
    assert rep["samples"] == len(res.rows) == 2 * n


def test_more_images_wanted_than_exist(many):
    res = select(many, seed=3, num_images=50)
    assert res.report["images_kept"] == N_MANY and res.report["images_considered"] == N_MANY


def test_two_samples_per_image(many):
    res = select(many, seed=0, num_images=None, samples_per_image=2)
    per_image: Dict[int, List[Dict[str, Any]]] = defaultdict(list)
    for r in res.rows:
        per_image[r["image_id"]].append(r)
    assert sorted(per_image) == list(range(1, N_MANY + 1))
    for iid, rows in per_image.items():
        assert len(rows) == 2
        if iid <= 10:  # several eligible objects: two different objects
            assert rows[0]["ref_id"] != rows[1]["ref_id"]
        else:  # exactly one eligible object: two different edits of it
            assert rows[0]["ref_id"] == rows[1]["ref_id"] == iid * 10
            assert rows[0]["edit_type"] != rows[1]["edit_type"]
    assert len({r["sample_id"] for r in res.rows}) == len(res.rows)
    # refs passed but not used: 3 per image 1-10, 2 used each
    assert res.report["refs_passed"] == 32 and res.report["refs_kept"] == 22
    assert res.report["refs_unused_quota"] == 10 and accounting_holds(res.report)


def test_three_samples_per_image_uses_each_object_then_each_edit(many):
    res = select(many, seed=0, num_images=None, samples_per_image=3)
    per_image: Dict[int, List[Dict[str, Any]]] = defaultdict(list)
    for r in res.rows:
        per_image[r["image_id"]].append(r)
    for iid, rows in per_image.items():
        assert len(rows) == 3
        if iid <= 10:
            assert len({r["ref_id"] for r in rows}) == 3
        else:
            assert sorted(r["edit_type"] for r in rows) == ["attribute", "remove", "replace"]
    assert len({r["sample_id"] for r in res.rows}) == len(res.rows)


def test_edit_types_and_targets(many):
    res = select(many, seed=5, num_images=None, samples_per_image=3)
    assert set(res.report["edit_types"]) == {"replace", "remove", "attribute"}
    assert sum(res.report["edit_types"].values()) == len(res.rows)
    assert all(n > 0 for n in res.report["edit_types"].values())
    names = set(COCO_CATEGORIES.values())
    for r in res.rows:
        assert r["edit_type"] in ("replace", "remove", "attribute")
        if r["edit_type"] == "replace":
            assert r["edit_target"] in names and r["edit_target"] != r["category"]
        elif r["edit_type"] == "remove":
            assert r["edit_target"] == ""
        else:
            assert r["edit_target"] in set(COLOURS) | set(MATERIALS)
        assert r["review"]["status"] == "pending" and r["candidates"] == []
        sent = many.sents[r["sent_id"]]
        assert sent["ref_id"] == r["ref_id"] and r["referring_expression"] == sent["raw"]

    only = select(many, seed=5, num_images=None, samples_per_image=2, edit_types=("remove", "attribute"))
    assert {r["edit_type"] for r in only.rows} == {"remove", "attribute"}
    assert only.report["edit_types"] == dict(Counter(r["edit_type"] for r in only.rows))


def test_no_available_category_quarantines_replace_only(many):
    res = select(many, seed=2, num_images=None, samples_per_image=3, available=[])
    assert res.rows and all(r["edit_type"] in ("remove", "attribute") for r in res.rows)
    assert {r["edit_type"] for r in res.rows} == {"remove", "attribute"}
    q = [e for e in res.quarantine if e["reason"] == "no_exemplar"]
    assert q and len(q) == len(res.quarantine)
    for e in q:
        assert e["stage"] == "select" and re.fullmatch(r"ref:\d+:replace", e["key"]) and e["error"]
    assert res.report["images_kept"] == N_MANY
    # one replace attempt per image (3 samples = each of the 3 edit types once per image)
    assert len(q) == N_MANY and len(res.rows) == 2 * N_MANY


def test_available_categories_restrict_replace_targets(many):
    res = select(many, seed=2, num_images=None, samples_per_image=3, available=["cat", "dog"])
    replace = [r for r in res.rows if r["edit_type"] == "replace"]
    assert replace
    for r in replace:
        assert r["edit_target"] in ("cat", "dog") and r["edit_target"] != r["category"]


def test_splits_filter(many):
    val = select(many, seed=0, num_images=None, splits=["val"])
    assert val.rows and {r["split"] for r in val.rows} == {"val"}
    assert {r["image_id"] for r in val.rows} == {2, 4, 6, 8, 10}
    assert all(many.refs[r["ref_id"]]["split"] == "val" for r in val.rows)
    assert val.report["refs_considered"] == 15
    both = select(many, seed=0, num_images=None, splits=["train", "val"])
    assert {r["split"] for r in both.rows} == {"train", "val"}
    assert both.report["images_kept"] == N_MANY


# ----------------------------------------------------------------------------------------------
# bad input: quarantined with a reason, never raised
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def bad(tmp_path) -> RefCOCO:
    b = Refer(tmp_path)
    b.image(1)
    b.ann(101, 1, "dog", rect(5, 5, 20, 20)).ann(102, 1, "dog", rect(40, 5, 20, 20), BLUE)
    b.ann(103, 1, "dog", [[10.0, 80.0, 20.0, 90.0]], None)            # 4 numbers: 2 points
    b.ann(104, 1, "dog", [[70.0, 70.0, 80.0, 70.0, 80.0]], None)      # odd number of coordinates
    b.ann(105, 1, "dog", {"size": [H, W], "counts": "abc"}, None)     # compressed RLE, wrong pixel count
    b.ann(106, 1, "dog", {"size": [H, W], "counts": [10, 20]}, None)  # uncompressed RLE, wrong pixel count
    b.ref(201, 101, 1, "dog", sents=("", "the left dog"))             # one empty sentence
    b.ref(202, 102, 1, "dog", sents=("", "   ", " . "))              # no usable sentence
    b.ref(203, 999, 1, "dog")                                         # missing annotation
    b.ref(204, 103, 1, "dog")                                         # bad polygon
    b.ref(205, 105, 1, "dog")                                         # bad RLE
    b.ref(206, 101, 2, "dog")                                         # image 2 is not in instances.json
    # image 3: a ref with no sentences at all
    b.image(3).ann(301, 3, "dog", rect(5, 5, 20, 20)).ann(302, 3, "dog", rect(40, 40, 20, 20))
    b.ref(301, 301, 3, "dog", sents=())
    return b.load()


def test_bad_input_is_quarantined_never_raised(bad):
    res = select(bad, samples_per_image=2)
    q = {e["key"]: e["reason"] for e in res.quarantine}
    assert len(q) == len(res.quarantine)  # one entry per key
    assert all(e["stage"] == "select" and e["error"] for e in res.quarantine)
    assert q == {
        "sent:2010": "empty_sentence",
        "sent:2020": "empty_sentence", "sent:2021": "empty_sentence", "sent:2022": "empty_sentence",
        "ref:203": "missing_annotation",
        "ref:206": "missing_image",
        "ref:301": "empty_sentence",
        "ann:103": "bad_polygon", "ann:104": "bad_polygon",
        "ann:105": "bad_rle", "ann:106": "bad_rle",
    }
    rep = res.report
    assert rep["dropped"]["missing_annotation"] == 1
    assert rep["dropped"]["bad_annotation"] == 2
    assert rep["dropped"]["no_sentence"] == 2  # ref 202 (all blank) and ref 301 (none)
    assert rep["kept_by_rule2"] == {"same_category": 1, "visual": 0}
    assert rep["refs_passed"] == 1 and rep["refs_kept"] == 1 and rep["refs_unused_quota"] == 0
    assert accounting_holds(rep)

    # the ref with one empty sentence is used with the good one; bad distractors are left out
    assert [r["ref_id"] for r in res.rows] == [201, 201]
    for r in res.rows:
        assert r["sent_id"] == 2011 and r["referring_expression"] == "the left dog"
        assert r["distractor_ann_ids"] == [102] and r["distractor_categories"] == ["dog"]
        np.testing.assert_array_equal(rle.decode(r["distractor_masks"][0]), bad.ann_mask(102))
        assert r["selection"]["n_same_category"] == 1 and r["selection"]["n_sizeable_others"] == 1
    assert rep["images_kept"] == 1


def test_unreadable_image_file_falls_back_to_shape(tmp_path):
    """A corrupt image file does not stop selection (the generate stage quarantines the image)."""
    b = Refer(tmp_path)
    b.image(1).ann(1, 1, "apple", disc(25, 50, 12), RED).ann(2, 1, "orange", disc(75, 50, 12), BLUE)
    b.ref(1, 1, 1, "apple").ref(2, 2, 1, "orange")
    refer = b.load()
    (tmp_path / "images" / "COCO_train2014_000000000001.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    res = select(refer, samples_per_image=2)
    assert {r["ref_id"] for r in res.rows} == {1, 2} and res.report["kept_by_rule2"]["visual"] == 2


# ----------------------------------------------------------------------------------------------
# the bundled demo
# ----------------------------------------------------------------------------------------------

def test_demo_selection(tmp_path):
    from refcoco_edit.demo import write_demo

    write_demo(tmp_path, num_images=12)
    refer = RefCOCO(tmp_path, "refcoco", images_dir=tmp_path / "images")
    res = Selector(refer, SelectionConfig(num_images=12, samples_per_image=2), seed=0).run()
    rep = res.report
    assert rep["images_kept"] == 12 and rep["samples"] == len(res.rows) == 2 * rep["images_kept"]
    assert all(r["referring_expression"].strip() for r in res.rows)
    assert len({r["sample_id"] for r in res.rows}) == len(res.rows)
    assert accounting_holds(rep)
    rows_to_table(res.rows)  # schema-conformant
    for r in res.rows:
        np.testing.assert_array_equal(rle.decode(r["source_mask"]), refer.ann_mask(r["ann_id"]))
        assert r["distractor_ann_ids"] and r["ann_id"] not in r["distractor_ann_ids"]


def test_default_demo_selection_exercises_both_rules_and_occlusions(demo_dir):
    """The default build's selection on the bundled demo drops objects by rule 1 (the close-ups'
    sole subjects, three of them over max_area_fraction) and rule 2 (single objects nothing
    resembles), keeps some by visual likeness, and counts the objects that touch or are split by
    an occluder. Pinned: the demo is seeded, so these numbers move only with the generator."""
    from refcoco_edit.stages.config import BuildConfig
    from refcoco_edit.stages.select import selection_config

    cfg = BuildConfig.of(out="unused", refcoco=str(demo_dir), images=str(demo_dir / "images"), progress=False)
    refer = RefCOCO(demo_dir, "refcoco", "unc", images_dir=demo_dir / "images")
    rep = Selector(refer, selection_config(cfg), seed=cfg.seed).run().report
    assert rep["images_considered"] == rep["images_kept"] == 48
    assert rep["refs_considered"] == 215 and rep["refs_passed"] == 145
    assert rep["dropped"] == {"missing_annotation": 0, "bad_annotation": 0, "no_sentence": 0, "crowd": 0,
                              "too_small": 0, "sole_subject": 6, "no_similar": 64}
    assert rep["kept_by_rule2"] == {"same_category": 139, "visual": 6}
    assert rep["occlusion"] == {"touching": 28, "touching_passed": 20, "split": 7, "split_passed": 6}
    text = format_report(rep)
    assert re.search(r"dropped\s+6\s+rule 1: sole prominent subject", text)
    assert re.search(r"dropped\s+64\s+rule 2: no similar object", text)
    assert re.search(r"occluded\s+7\s+split in parts by an occluder \(6 passed both rules\)", text)
    # which ones rule 1 dropped: exactly the close-ups' subjects
    hugeish = 0
    for image_id, anns in refer.image_to_anns.items():
        if (image_id - 1000) % 8 != 3:
            continue
        big = max(anns, key=lambda a: refer.anns[a]["area"])
        hugeish += refer.anns[big]["area"] > 0.6 * refer.images[image_id]["height"] * refer.images[image_id]["width"]
    assert hugeish == 3
