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

