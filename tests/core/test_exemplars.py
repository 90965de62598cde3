"""Exemplars of replace edits (refcoco_edit.stages.exemplars): whole objects first, any instance of
the data but the referred object, cut by the instance's visible pixels."""
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
            rgba, ann_id = bank.cut(cat, None, rng=np.random.default_rng(seed))
            assert rgba.shape[2] == 4 and (rgba[..., 3] > 0).any()
            if whole:
                assert ann_id in whole, (cat, ann_id)
                checked += 1
            else:  # only half-hidden instances: one of them rather than none
                assert ann_id in bank.by_cat[cat]
    assert checked > 0


def test_visible_cut_subtracts_what_is_in_front_and_completes_it():
    """An exact outline (the occluder left a gap) is completed inside the convex hull of what is
    visible; a coarse one (drawn over the occluder) inside the outline; either way no pixel of
    the occluder's colour is kept, and what lies outside stays out."""
    import cv2

    from refcoco_edit.pipelines.classical import occludes
    from refcoco_edit.stages.exemplars import visible_cut

    rng = np.random.default_rng(0)
    img = np.zeros((90, 120, 3), np.uint8)
    img[...] = (60, 120, 60)
    body = np.zeros((90, 120), bool)
    body[20:70, 10:110] = True
    img[body] = (230, 190, 40) + rng.integers(-6, 7, (int(body.sum()), 3))
    person = np.zeros((90, 120), np.uint8)
    cv2.rectangle(person, (50, 30), (62, 85), 1, -1)  # stands in front, below the body's bottom too
    person = person.astype(bool)
    img[person] = (225, 30, 200)
    for outline in (body & ~person, body | (person & body)):  # exact, then coarse
        assert occludes(person, outline) and not occludes(outline, person)
        rgba, fraction = visible_cut(img, outline, [person], np.random.default_rng(1))
        alpha = rgba[..., 3] > 0
        assert rgba.shape[:2] == (50, 100)  # the body's box: the legs below it are no part of it
        assert alpha.all()  # completed, no person-shaped hole
        assert (np.abs(rgba[..., :3].astype(int) - (225, 30, 200)).max(axis=-1) > 60).all()
        assert 0.8 < fraction < 0.9
    rgba, fraction = visible_cut(img, body & ~person, [], np.random.default_rng(1))
    assert fraction == 1.0 and not (rgba[..., 3] > 0)[10:, 41:52].any()  # nothing in front: the gap stays
