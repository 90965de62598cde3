"""Exemplars of replace edits are cut from whole objects (refcoco_edit.stages.exemplars)."""
from __future__ import annotations

import numpy as np

from refcoco_edit.refcoco import RefCOCO
from refcoco_edit.stages.exemplars import ExemplarBank, _overlapped


def test_exemplars_are_whole_objects_when_there_are_some(demo_dir):
    refer = RefCOCO(demo_dir, dataset="refcoco", images_dir=demo_dir / "images")
    bank = ExemplarBank(refer, min_fraction=0.002)
    overlapped = _overlapped(refer)
    assert overlapped and len(overlapped) < len(refer.anns)  # the demo has both kinds
    # the boxes test: an annotation is overlapped iff its box meets another one of its image
    for ann_id, ann in [(a, x) for a, x in refer.anns.items() if not x.get("iscrowd", 0)][:60]:
        x, y, w, h = ann["bbox"]
        meets = any(o != ann_id and not refer.anns[o].get("iscrowd", 0)
                    and refer.anns[o]["image_id"] == ann["image_id"]
                    and x < refer.anns[o]["bbox"][0] + refer.anns[o]["bbox"][2] and refer.anns[o]["bbox"][0] < x + w
                    and y < refer.anns[o]["bbox"][1] + refer.anns[o]["bbox"][3] and refer.anns[o]["bbox"][1] < y + h
                    for o in refer.anns)
        assert (ann_id in overlapped) == meets
    checked = 0
    for cat in bank.categories():
        whole = [a for a in bank.by_cat[cat] if a not in overlapped]
        for seed in range(3):
            rgba, ann_id = bank.cut(cat, exclude_image=-1, rng=np.random.default_rng(seed))
            assert rgba.shape[2] == 4 and (rgba[..., 3] > 0).any()
            if whole:
                assert ann_id in whole, (cat, ann_id)
                checked += 1
            else:  # only half-hidden instances: one of them rather than none
                assert ann_id in bank.by_cat[cat]
    assert checked > 0
