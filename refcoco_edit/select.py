"""Source-object selection: which referred objects become RIE samples, and how they are edited.

The paper keeps an object when two rules hold (Sec. 3):

1. **Not the sole prominent subject.** Editing the one big subject of a photo needs no referring.
   We drop objects covering more than ``max_area_fraction`` of the image, and objects with no
   other *sizeable* object beside them (another non-crowd object covering at least
   ``sizeable_fraction`` of the image or ``sizeable_relative`` of the object's own area).
   Objects under ``min_area_fraction`` are dropped as too small to edit visibly.
2. **A similar object exists in the scene**, so the sentence must really refer: another object of
   the same category, or one that is visually alike — shape (Hu-moment distance of the masks,
   aspect and size ratio) and, when pixels are available, colour (HSV histogram correlation).

Every kept sample carries its scores (``selection``), its look-alike distractors (ids,
categories, masks) and every other annotated object of the image (``other_*``: each non-crowd
instance with a usable mask but the referred one, distractors included), which the generate stage
protects from the edit and audits and the benchmark's ``others`` metrics score. Selection is a pure function of (data, settings, seed): images are visited
in a seeded order until ``num_images`` images have yielded samples, each image giving
``samples_per_image`` samples where possible (different referred objects first, then other edit
types on the same objects). Problems found on the way (a ref pointing to a missing annotation,
an empty sentence, a malformed mask) are quarantined with a reason; they never stop selection.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import difficulty
from . import rle as rle_mod
from .errors import SampleError
from .schema import SCHEMA_VERSION, empty_review, sample_id
from .seeds import rng_for

DROP_RULES = ("missing_annotation", "bad_annotation", "no_sentence", "crowd", "too_small", "sole_subject", "no_similar")


@dataclass
class SelectionConfig:
    """Thresholds of the two rules and the sampling plan."""

    num_images: Optional[int] = 400
    samples_per_image: int = 2
    splits: Optional[Sequence[str]] = None
    edit_types: Sequence[str] = ("replace", "remove", "attribute")
    min_area_fraction: float = 0.005
    max_area_fraction: float = 0.6
    sizeable_fraction: float = 0.01
    sizeable_relative: float = 0.2
    min_distractor_fraction: float = 0.001
    similarity_threshold: float = 0.7
    use_pixels: bool = True
    imaginative_targets: bool = False
    target_aspect_tolerance: float = 2.0  # replace targets: typical box aspect within this factor of the source box's
    target_size_ratio: float = 3.0        # replace targets: typical physical size within this factor of the source's


@dataclass
class SelectionResult:
    rows: List[Dict[str, Any]]
    quarantine: List[Dict[str, Any]]
    report: Dict[str, Any]


@dataclass
class _Obj:
    ann_id: int
    category: str
    rle: Dict[str, Any]
    area: float
    bbox: List[float]
    mask: Optional[np.ndarray] = None


@dataclass
class _Verdict:
    ref_id: int
    ok: bool
    rule: str = ""
    scores: Dict[str, Any] = field(default_factory=dict)
    distractors: List[Tuple[int, str]] = field(default_factory=list)
    kept_by: str = ""  # "same_category" | "visual" (counted once the ref also has a usable sentence)


def _shape_similarity(a: _Obj, b: _Obj) -> float:
    """1 for identical shapes/size, toward 0 for unlike ones."""
    import cv2

    ma = a.mask if a.mask is not None else rle_mod.decode(a.rle)
    mb = b.mask if b.mask is not None else rle_mod.decode(b.rle)
    a.mask, b.mask = ma, mb
    d = cv2.matchShapes(ma.astype(np.uint8), mb.astype(np.uint8), cv2.CONTOURS_MATCH_I1, 0.0)
    hu = float(np.exp(-3.0 * d))
    ar_a = a.bbox[2] / max(a.bbox[3], 1e-6)
    ar_b = b.bbox[2] / max(b.bbox[3], 1e-6)
    aspect = min(ar_a, ar_b) / max(ar_a, ar_b, 1e-6)
    size = min(a.area, b.area) / max(a.area, b.area, 1e-6)
    return float(0.5 * hu + 0.25 * aspect + 0.25 * size)


def _colour_hist(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import cv2

    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    h = cv2.calcHist([hsv], [0, 1], mask.astype(np.uint8), [18, 4], [0, 180, 0, 256])
    return cv2.normalize(h, h).flatten()


def _colour_similarity(ha: np.ndarray, hb: np.ndarray) -> float:
    import cv2

    return float(max(0.0, cv2.compareHist(ha.astype(np.float32), hb.astype(np.float32), cv2.HISTCMP_CORREL)))


def _sample_row(refer: Any, image_id: int, v: _Verdict, sent: Dict[str, Any], objs: Dict[int, _Obj],
                etype: str, target: str) -> Dict[str, Any]:
    """The select-stage record of one sample (the data model's columns; later stages fill the rest)."""
    ref = refer.refs[v.ref_id]
    me = objs[int(ref["ann_id"])]
    others = sorted(a for a in objs if a != me.ann_id)  # every other non-crowd object with a usable mask
    row = {
        "sample_id": sample_id(refer.dataset, v.ref_id, sent["sent_id"], etype, target),
        "dataset": refer.dataset,
        "split": ref.get("split"),
        "image_id": int(image_id),
        "ref_id": int(v.ref_id),
        "ann_id": int(ref["ann_id"]),
        "sent_id": int(sent["sent_id"]),
        "category": me.category,
        "source_image": {"bytes": None, "path": str(refer.images[image_id]["file_name"])},
        "source_mask": me.rle,
        "bbox": me.bbox,
        "distractor_ann_ids": [a for a, _ in v.distractors],
        "distractor_categories": [c for _, c in v.distractors],
        "distractor_masks": [objs[a].rle for a, _ in v.distractors],
        "other_ann_ids": [a for a in others],
        "other_categories": [objs[a].category for a in others],
        "other_masks": [objs[a].rle for a in others],
        "selection": {k: v.scores[k] for k in ("area_fraction", "n_sizeable_others", "n_same_category",
                                               "max_similarity", "score")},
        "referring_expression": sent["text"],
        "edit_type": etype,
        "edit_target": target,
        "candidates": [],
        "review": empty_review(),
        "schema_version": SCHEMA_VERSION,
    }
    touches, split = _occlusion(me, objs)
    row["difficulty"] = difficulty.attributes(row, occlusion="split" if split else "touching" if touches else "none")
    return row


def _obj_mask(o: _Obj) -> np.ndarray:
    """The object's boolean mask, decoded once and kept on the object."""
    if o.mask is None:
        o.mask = rle_mod.decode(o.rle)
    return o.mask


def _occlusion(me: _Obj, objs: Dict[int, _Obj]) -> Tuple[bool, bool]:
    """(touches, split): whether the object's mask meets another object's mask (1-px contact or
    overlap: one occludes the other, as far as 2-D masks can tell), and whether it is in several
    parts (an occluder cut it in two). Masks are decoded only for objects whose boxes meet."""
    x, y, w, h = me.bbox
    near = [o for o in objs.values() if o.ann_id != me.ann_id and
            o.bbox[0] <= x + w + 1 and x <= o.bbox[0] + o.bbox[2] + 1 and
            o.bbox[1] <= y + h + 1 and y <= o.bbox[1] + o.bbox[3] + 1]
    return difficulty.touches_and_split(_obj_mask(me), me.bbox, (_obj_mask(o) for o in near))


def _pixels_once(refer: Any, image_id: int) -> Callable[[], Optional[np.ndarray]]:
    """A loader of the image's RGB pixels for the colour test, decoding at most once and only if
    asked; None when the image cannot be used in the annotation frame as is (not upright, or
    unreadable: the generate stage quarantines the image itself)."""
    cache: Dict[str, Any] = {}

    def pixels() -> Optional[np.ndarray]:
        if "img" not in cache:
            try:
                li = refer.load_image(image_id)
                cache["img"] = li.array if li.annotation_frame == "upright" and li.orientation == 1 else None
            except SampleError:
                cache["img"] = None  # the generate stage quarantines the image itself
        return cache["img"]

    return pixels


class Selector:
    """Applies the rules to a RefCOCO index (``refcoco_edit.refcoco.RefCOCO``)."""

    def __init__(self, refer: Any, cfg: SelectionConfig, seed: int = 0,
                 available_categories: Optional[Sequence[str]] = None,
                 category_aspects: Optional[Dict[str, float]] = None):
        self.refer = refer
        self.cfg = cfg
        self.seed = int(seed)
        self.available_categories = list(available_categories) if available_categories is not None else None
        self.category_aspects = dict(category_aspects or {})  # measured typical box aspects (w / h)
        self.quarantine: List[Dict[str, Any]] = []
        self.dropped: Dict[str, int] = {r: 0 for r in DROP_RULES}
        self.kept_by: Dict[str, int] = {"same_category": 0, "visual": 0}
        self.occlusion: Dict[str, int] = {"touching": 0, "touching_passed": 0, "split": 0, "split_passed": 0}
        self._bad_keys: set = set()
        self._target_failed: set = set()  # passed both rules, but an edit target could not be chosen

    # -- bookkeeping -------------------------------------------------------------------------
    def _quarantine(self, key: str, reason: str, error: str) -> None:
        if key in self._bad_keys:
            return
        self._bad_keys.add(key)
        self.quarantine.append({"stage": "select", "key": key, "reason": reason, "error": error})

    # -- per image ---------------------------------------------------------------------------
    def _objects(self, image_id: int) -> Dict[int, _Obj]:
        """Decodable non-crowd objects of an image (annotation frame); bad ones are quarantined."""
        refer = self.refer
        img = refer.images[image_id]
        objs: Dict[int, _Obj] = {}
        for ann_id in refer.image_to_anns.get(image_id, []):
            ann = refer.anns[ann_id]
            if ann.get("iscrowd", 0):
                continue
            try:
                r = refer.ann_rle(ann_id)
            except rle_mod.MaskError as e:
                self._quarantine(f"ann:{ann_id}", e.reason, str(e))
                continue
            area = float(rle_mod.area(r))
            if area <= 0:
                self._quarantine(f"ann:{ann_id}", "empty_mask", f"annotation {ann_id} has an empty mask")
                continue
            objs[ann_id] = _Obj(ann_id, refer.cats.get(ann["category_id"], str(ann["category_id"])), r, area,
                                rle_mod.to_bbox(r))
        del img
        return objs

    def _judge(self, ref: Dict[str, Any], objs: Dict[int, _Obj], hw: Tuple[int, int],
               pixels: Callable[[], Optional[np.ndarray]]) -> _Verdict:
        cfg = self.cfg
        ref_id = int(ref["ref_id"])
        ann_id = int(ref["ann_id"])
        v = _Verdict(ref_id, False)
        if ann_id not in self.refer.anns:
            v.rule = "missing_annotation"
            self._quarantine(f"ref:{ref_id}", "missing_annotation",
                             f"ref {ref_id} points to annotation {ann_id}, which does not exist")
            return v
        if self.refer.anns[ann_id].get("iscrowd", 0):
            v.rule = "crowd"
            return v
        if ann_id not in objs:
            v.rule = "bad_annotation"
            return v
        me = objs[ann_id]
        img_area = float(hw[0] * hw[1])
        frac = me.area / img_area
        others = [o for o in objs.values() if o.ann_id != ann_id]
        sizeable = [o for o in others if o.area >= min(cfg.sizeable_fraction * img_area, cfg.sizeable_relative * me.area)]
        same = [o for o in others if o.category == me.category and o.area >= cfg.min_distractor_fraction * img_area]
        v.scores = {"area_fraction": frac, "n_sizeable_others": len(sizeable), "n_same_category": len(same),
                    "max_similarity": 1.0 if same else 0.0, "score": 0.0}
        if frac < cfg.min_area_fraction:
            v.rule = "too_small"
            return v
        if frac > cfg.max_area_fraction or not sizeable:
            v.rule = "sole_subject"
            return v
        distractors = [(o.ann_id, o.category) for o in same]
        if same:
            v.kept_by = "same_category"
        else:
            best, similar = 0.0, []
            image = pixels() if cfg.use_pixels else None
            hist_me = _colour_hist(image, _obj_mask(me)) if image is not None else None
            for o in others:
                if o.area < cfg.min_distractor_fraction * img_area:
                    continue
                s = _shape_similarity(me, o)
                if hist_me is not None:
                    s = 0.5 * s + 0.5 * _colour_similarity(hist_me, _colour_hist(image, _obj_mask(o)))
                best = max(best, s)
                if s >= cfg.similarity_threshold:
                    similar.append((o.ann_id, o.category))
            v.scores["max_similarity"] = best
            if not similar:
                v.rule = "no_similar"
                return v
            distractors = similar
            v.kept_by = "visual"
        v.ok = True
        v.distractors = sorted(distractors)
        # prefer mid-sized objects with several look-alikes
        size_pref = float(np.exp(-((np.log(frac) - np.log(0.05)) ** 2) / 2.0))
        v.scores["score"] = round(size_pref + 0.25 * min(len(distractors), 4) + 0.5 * v.scores["max_similarity"], 6)
        return v

    def _count_occlusion(self, ref: Dict[str, Any], objs: Dict[int, _Obj], v: _Verdict) -> None:
        """Count a considered object that touches another one or is split in parts (and whether it
        passed both rules): the occlusion cases of the report."""
        me = objs.get(int(ref["ann_id"]))
        if me is None:
            return
        touches, split = _occlusion(me, objs)
        for key, hit in (("touching", touches), ("split", split)):
            if hit:
                self.occlusion[key] += 1
                self.occlusion[key + "_passed"] += int(v.ok)

    def _sentences(self, ref: Dict[str, Any]) -> List[Dict[str, Any]]:
        from .prompts import normalize_expression

        good = []
        if not ref.get("sentences"):  # no per-sentence entry can report it (see run)
            self._quarantine(f"ref:{ref['ref_id']}", "empty_sentence", f"ref {ref['ref_id']} has no sentences")
        for s in ref.get("sentences", []):
            text = normalize_expression(str(s.get("raw") or s.get("sent") or ""))
            if not text:
                self._quarantine(f"sent:{s.get('sent_id')}", "empty_sentence",
                                 f"sentence {s.get('sent_id')} of ref {ref['ref_id']} is empty")
                continue
            good.append({"sent_id": int(s["sent_id"]), "text": text})
        return good

    # -- the whole selection -----------------------------------------------------------------
    def run(self) -> SelectionResult:
        from .prompts import choose_edit_target

        refer, cfg = self.refer, self.cfg
        for key, reason, message in refer.ref_problems():
            if reason == "empty_sentence":
                continue  # reported per sentence when the ref is visited
            self._quarantine(key, reason, message)
        ref_ids = refer.ref_ids(split=None) if not cfg.splits else sorted(
            {r for s in cfg.splits for r in refer.ref_ids(split=s)})
        # refs pointing to an image instances.json lacks were quarantined above (missing_image)
        images = sorted({int(refer.refs[r]["image_id"]) for r in ref_ids} & set(refer.images))
        ref_set = set(ref_ids)
        order = rng_for(self.seed, "image-order").permutation(len(images))
        rows: List[Dict[str, Any]] = []
        n_images_kept = 0
        images_considered = 0
        refs_considered = 0
        for idx in order:
            if cfg.num_images is not None and n_images_kept >= cfg.num_images:
                break
            image_id = images[int(idx)]
            images_considered += 1
            info = refer.images[image_id]
            hw = (int(info["height"]), int(info["width"]))
            objs = self._objects(image_id)
            pixels = _pixels_once(refer, image_id)
            eligible = []
            for ref_id in refer.image_to_refs.get(image_id, []):
                if ref_id not in ref_set:
                    continue
                refs_considered += 1
                ref = refer.refs[ref_id]
                v = self._judge(ref, objs, hw, pixels)
                self._count_occlusion(ref, objs, v)
                if not v.ok:
                    self.dropped[v.rule] += 1
                    continue
                sents = self._sentences(ref)
                if not sents:
                    self.dropped["no_sentence"] += 1
                    continue
                self.kept_by[v.kept_by] += 1
                eligible.append((v, sents))
            if not eligible:
                continue
            image_rows = self._plan_image(image_id, eligible, objs, choose_edit_target)
            if image_rows:
                rows.extend(image_rows)
                n_images_kept += 1
        passed = sum(self.kept_by.values())
        used_ids = {r["ref_id"] for r in rows}
        used = len(used_ids)
        report = {
            "images_considered": images_considered,
            "images_kept": n_images_kept,
            "refs_considered": refs_considered,
            "refs_passed": passed,
            "refs_kept": used,
            "refs_unused_quota": passed - used - len(self._target_failed - used_ids),
            "dropped": dict(self.dropped),
            "kept_by_rule2": dict(self.kept_by),
            "occlusion": dict(self.occlusion),
            "samples": len(rows),
            "edit_types": {t: sum(1 for r in rows if r["edit_type"] == t) for t in cfg.edit_types},
            "difficulty": difficulty.counts(rows),
            "quarantined": len(self.quarantine),
        }
        return SelectionResult(rows, self.quarantine, report)

    def _plan_image(self, image_id: int, eligible: List[Tuple[_Verdict, List[Dict[str, Any]]]],
                    objs: Dict[int, _Obj], choose_edit_target: Callable[..., str]) -> List[Dict[str, Any]]:
        cfg, refer = self.cfg, self.refer
        rng = rng_for(self.seed, "image", image_id)
        tiebreak = rng.random(len(eligible))
        order = sorted(range(len(eligible)), key=lambda k: (-eligible[k][0].scores["score"], tiebreak[k]))
        types = [cfg.edit_types[int(k)] for k in rng.permutation(len(cfg.edit_types))]
        want = max(1, cfg.samples_per_image)
        # distinct objects first; then further edit types on the same objects
        plan: List[Tuple[int, int]] = []  # (eligible index, round)
        for rnd in range(len(types)):
            for k in order:
                if len(plan) >= want:
                    break
                plan.append((k, rnd))
            if len(plan) >= want:
                break
        rows = []
        used_types: Dict[int, set] = {}
        for n, (k, rnd) in enumerate(plan):
            v, sents = eligible[k]
            ref = refer.refs[v.ref_id]
            # an edit type this object has not had yet
            seen = used_types.setdefault(k, set())
            rot = types[n % len(types):] + types[: n % len(types)]
            etype = next((t for t in rot if t not in seen), rot[0])
            seen.add(etype)
            srng = rng_for(self.seed, "sample", v.ref_id, etype)
            sent = sents[(rnd + int(srng.integers(len(sents)))) % len(sents)]
            me = objs[int(ref["ann_id"])]
            try:
                target = choose_edit_target(etype, me.category, sent["text"], srng,
                                            available_categories=self.available_categories if etype == "replace" else None,
                                            imaginative=cfg.imaginative_targets, source_box=me.bbox[2:4],
                                            aspect_tolerance=cfg.target_aspect_tolerance,
                                            size_ratio=cfg.target_size_ratio, aspects=self.category_aspects)
            except SampleError as e:
                self._quarantine(f"ref:{v.ref_id}:{etype}", e.reason, str(e))
                self._target_failed.add(v.ref_id)
                continue
            rows.append(_sample_row(refer, image_id, v, sent, objs, etype, target))
        return rows


def format_report(report: Dict[str, Any]) -> str:
    """The selection report as a small text table: kept / dropped per rule."""
    lines = [
        f"selection: {report['images_kept']} images kept of {report['images_considered']} visited; "
        f"{report['refs_considered']} objects considered, {report['refs_passed']} passed both rules, "
        f"{report['refs_kept']} used in {report['samples']} samples "
        f"({report['refs_unused_quota']} left unused by --samples-per-image)",
    ]
    labels = {
        "too_small": "too small (area < min_area_fraction)",
        "sole_subject": "rule 1: sole prominent subject",
        "no_similar": "rule 2: no similar object",
        "crowd": "crowd annotation",
        "bad_annotation": "malformed mask (quarantined)",
        "missing_annotation": "missing annotation (quarantined)",
        "no_sentence": "no usable sentence (quarantined)",
    }
    for k, label in labels.items():
        lines.append(f"  dropped  {report['dropped'].get(k, 0):6d}  {label}")
    kb = report.get("kept_by_rule2", {})
    lines.append(f"  kept     {kb.get('same_category', 0):6d}  rule 2 by a same-category object")
    lines.append(f"  kept     {kb.get('visual', 0):6d}  rule 2 by a visually similar object")
    occ = report.get("occlusion")
    if occ:
        lines.append(f"  occluded {occ['touching']:6d}  touching another object's mask "
                     f"({occ['touching_passed']} passed both rules)")
        lines.append(f"  occluded {occ['split']:6d}  split in parts by an occluder "
                     f"({occ['split_passed']} passed both rules)")
    et = ", ".join(f"{k} {v}" for k, v in report.get("edit_types", {}).items())
    lines.append(f"  edits: {et}")
    diff = report.get("difficulty") or {}
    if diff:
        lines.append("  difficulty (refcoco_edit.difficulty):")
        for k in [k for k in difficulty.BUCKETS if k in diff] + sorted(set(diff) - set(difficulty.BUCKETS)):
            items = sorted(diff[k].items(), key=lambda kv: difficulty.label_key(kv[0]))
            lines.append(f"    {k[len('attr_'):]:<20} " + ", ".join(f"{label} {n}" for label, n in items))
    return "\n".join(lines)
