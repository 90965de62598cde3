"""Automatic quality checks of ground-truth candidates; the scores are stored on each candidate
(``filter_scores``, a JSON object) and rank the candidates of a sample.

Checks (thresholds in ``FilterConfig``, i.e. in the build config):

* ``clip_target`` (replace, attribute): 100 · cos(CLIP(edited crop), CLIP("a photo of <target>")),
  the crop being the box of M_e grown by ``crop_margin``; passes from ``min_clip_target``.
* ``clip_directional`` (replace, attribute; InstructPix2Pix-style): cos(CLIP(edited crop) −
  CLIP(source crop), CLIP(target text) − CLIP(source text)): the image moved the way the text
  did; passes from ``min_clip_directional``.
* removal (remove): ``removed_prob`` = softmax over 100 · cos of the edited crop with
  "a photo of a <category>" and with "a photo of the background": the removed object's category
  must no longer match the region (passes up to ``max_removed_prob``); ``clip_category_before`` /
  ``clip_category_after`` are kept for reference.
* ``bg_change`` (every edit, no weights): mean squared difference in [0, 1] over the pixels
  outside the *allowed* region (the source box grown by ``bg_allowed_growth``): an edit mask that
  spilled into the background; passes up to ``max_bg_change``. ``edit_area_ratio`` = |M_e| / box
  area of the source, for the reviewer.

The ground-truth audit of the other objects (``audit_other_objects``, every backend, no weights)
is kept apart from those checks: a candidate that changes another annotated object of the image
(``others_damaged`` > 0) is never the reference while a clean candidate exists, whatever its
other scores (``refcoco_edit.stages.generate``).

Without CLIP weights the CLIP checks are skipped and every candidate records why under
``"skipped"``; the background check still runs. ``score`` is what ranks candidates: passing
candidates first, then the higher score (CLIP-based when available, else the smaller background
change), ties to the earlier candidate. Steps of ``CandidateFilter.score_many``:

1. crops: the box of M_e (grown) in the source and in each candidate;
2. one CLIP pass over all crops and one over all texts (when CLIP is loaded; the encoder batches them);
3. per candidate: the scores above, ``passed`` and the names of the ``failed`` checks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from refcoco_edit.models import ClipEncoder, ModelUnavailable, Runtime
from refcoco_edit.pipelines.masks import grow_box, mask_box

__all__ = ["FilterConfig", "CandidateFilter", "FilterItem", "rank_candidates", "DEFAULT_CLIP_MODEL", "load_clip",
           "AuditConfig", "other_object_changes", "audit_other_objects", "is_marked"]

DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"


@dataclass
class FilterConfig:
    """Thresholds and texts of the candidate filters."""

    clip_model: Optional[str] = DEFAULT_CLIP_MODEL
    min_clip_target: float = 20.0
    min_clip_directional: float = 0.0
    max_removed_prob: float = 0.5
    max_bg_change: float = 0.002
    bg_allowed_growth: float = 0.35
    crop_margin: float = 0.1
    text_template: str = "a photo of {text}"
    background_text: str = "a photo of the empty background"


@dataclass
class FilterItem:
    """One candidate to score, with what it was asked to be."""

    source: np.ndarray  # HxWx3 uint8
    edited: np.ndarray  # HxWx3 uint8
    source_mask: np.ndarray  # HxW bool
    edit_mask: np.ndarray  # HxW bool (M_e)
    edit_type: str
    target_text: str  # "giraffe", "red car"; "" for removals
    category: str
    extra: Dict[str, Any] = field(default_factory=dict)


def load_clip(spec: str, runtime: Optional[Runtime] = None) -> ClipEncoder:
    """The filters' CLIP: ``refcoco_edit.models.ClipEncoder`` giving unit vectors (the checks'
    dot products are cosines), float32 on the runtime's device, from a local path or a cached hub
    id; ``ModelError`` (``ModelUnavailable`` for a hub id that is not cached) otherwise."""
    runtime = runtime or Runtime()
    return ClipEncoder.load(spec, device=runtime.device, local_files_only=runtime.local_files_only, normalize=True)


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-12 else v


class CandidateFilter:
    """Scores candidates (see the module docstring). ``clip`` may be any object with
    ``images(crops) -> (n, d)`` and ``texts(texts) -> (n, d)`` returning unit vectors (tests
    inject tiny models); ``skip_reason`` says why CLIP checks are off when ``clip`` is None."""

    def __init__(self, config: Optional[FilterConfig] = None, clip: Any = None, skip_reason: Optional[str] = None) -> None:
        self.config = config or FilterConfig()
        self.clip = clip
        self.skip_reason = skip_reason if clip is None else None
        if clip is None and not self.skip_reason:
            self.skip_reason = "no CLIP model configured (--clip-model)"

    @classmethod
    def from_config(cls, config: FilterConfig, runtime: Optional[Runtime] = None) -> "CandidateFilter":
        """Load CLIP when it is available locally; a hub id that is not cached (or no model)
        switches the CLIP checks off with the reason. A local path that does not exist or is not
        a CLIP model raises ``ModelError`` (a configuration mistake, not a missing optional)."""
        if not config.clip_model or str(config.clip_model).lower() in ("none", "off", ""):
            return cls(config, None, "CLIP filters off (--clip-model none)")
        try:
            return cls(config, load_clip(config.clip_model, runtime))
        except ModelUnavailable as e:
            return cls(config, None, f"CLIP weights not available: {e}")

    # 1 ---------------------------------------------------------------------------------------------
    def crop_box(self, item: FilterItem) -> Any:
        m = np.asarray(item.edit_mask).astype(bool)
        if not m.any():
            m = np.asarray(item.source_mask).astype(bool)
        return grow_box(mask_box(m), self.config.crop_margin, item.source.shape, min_px=2)

    def bg_scores(self, item: FilterItem) -> Dict[str, float]:
        """The weight-free background check."""
        src = np.asarray(item.source_mask).astype(bool)
        box = mask_box(src)
        allowed = np.zeros(src.shape, bool)
        x0, y0, x1, y1 = grow_box(box, self.config.bg_allowed_growth, src.shape, min_px=8)
        allowed[y0:y1, x0:x1] = True
        outside = ~allowed
        d = (item.source.astype(np.float32) - item.edited.astype(np.float32)) / 255.0
        bg = float((d[outside] ** 2).mean()) if outside.any() else 0.0
        area = max(1, (box[2] - box[0]) * (box[3] - box[1]))
        return {"bg_change": round(bg, 6), "edit_area_ratio": round(float(np.count_nonzero(item.edit_mask)) / area, 4)}

    # 2-3 -------------------------------------------------------------------------------------------
    def score_many(self, items: Sequence[FilterItem]) -> List[Dict[str, Any]]:
        """Scores, ``passed``, ``failed`` and ``skipped`` of each item (JSON-ready)."""
        c = self.config
        out: List[Dict[str, Any]] = []
        for it in items:
            s: Dict[str, Any] = self.bg_scores(it)
            s["failed"] = [] if s["bg_change"] <= c.max_bg_change else ["bg_change"]
            out.append(s)
        if self.clip is None:
            for s in out:
                s["skipped"] = {"clip": self.skip_reason}
                s["score"] = round(-s["bg_change"], 6)
                s["passed"] = not s["failed"]
            return out
        # 2. batched CLIP: source and edited crops, and every text
        crops, texts = [], []
        for it in items:
            x0, y0, x1, y1 = self.crop_box(it)
            crops += [np.ascontiguousarray(it.source[y0:y1, x0:x1]), np.ascontiguousarray(it.edited[y0:y1, x0:x1])]
            cat = it.category or "object"
            src_text = c.text_template.format(text=f"a {cat}")
            if it.edit_type == "remove":
                texts += [src_text, c.background_text]
            else:
                texts += [src_text, c.text_template.format(text=it.target_text)]
        img = self.clip.images(crops)
        txt = self.clip.texts(texts)
        # 3. per candidate
        for k, (it, s) in enumerate(zip(items, out)):
            e_src, e_edit = img[2 * k], img[2 * k + 1]
            t_src, t_other = txt[2 * k], txt[2 * k + 1]
            if it.edit_type == "remove":
                before, after = 100.0 * float(e_src @ t_src), 100.0 * float(e_edit @ t_src)
                bg_sim = 100.0 * float(e_edit @ t_other)
                m = max(after, bg_sim)
                p_cat = math.exp(after - m) / (math.exp(after - m) + math.exp(bg_sim - m))
                s.update(clip_category_before=round(before, 4), clip_category_after=round(after, 4),
                         removed_prob=round(p_cat, 6), score=round(-p_cat, 6))
                if p_cat > c.max_removed_prob:
                    s["failed"].append("removed_prob")
            else:
                target = 100.0 * float(e_edit @ t_other)
                direc = float(_unit(e_edit - e_src) @ _unit(t_other - t_src))
                s.update(clip_target=round(target, 4), clip_directional=round(direc, 6),
                         score=round(target / 100.0 + direc, 6))
                if target < c.min_clip_target:
                    s["failed"].append("clip_target")
                if direc < c.min_clip_directional:
                    s["failed"].append("clip_directional")
            s["clip_model"] = getattr(self.clip, "name", "") or "clip"
            s["passed"] = not s["failed"]
        return out


def rank_candidates(scores: Sequence[Dict[str, Any]]) -> int:
    """Index of the best candidate: passing ones first, then the highest ``score``; ties (and
    candidates without scores) go to the earlier one."""
    best, key = 0, None
    for i, s in enumerate(scores):
        k = (bool(s.get("passed", False)), float(s.get("score", float("-inf"))))
        if key is None or k > key:
            best, key = i, k
    return best



# ----------------------------------------------------------------------------------------------
# the ground-truth audit of the other annotated objects
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AuditConfig:
    """Thresholds of ``audit_other_objects``."""

    pixel_threshold: int = 8
    """a pixel changed when its largest per-channel difference exceeds this (0-255): above PNG/8-bit
    rounding of a feathered seam, below any visible edit"""
    max_changed: float = 0.01
    """an object is damaged when more than this share of its pixels changed"""


def other_object_changes(source: np.ndarray, edited: np.ndarray, target_mask: np.ndarray,
                         other_masks: Sequence[np.ndarray], pixel_threshold: int = 8) -> List[float]:
    """Per other object: the share of its own pixels (its mask less the target's: the pixels
    neither annotation shares) whose largest per-channel change exceeds ``pixel_threshold``; NaN
    for an object with no pixel left. Shared pixels are counted apart (``shared_pixel_changes``)."""
    changed = _changed(source, edited, pixel_threshold)
    target = np.asarray(target_mask).astype(bool)
    out: List[float] = []
    for m in other_masks:
        own = np.asarray(m).astype(bool) & ~target
        n = int(np.count_nonzero(own))
        out.append(float(np.count_nonzero(changed & own)) / n if n else math.nan)
    return out


def _changed(source: np.ndarray, edited: np.ndarray, pixel_threshold: int) -> np.ndarray:
    if source.shape != edited.shape:
        raise ValueError(f"source {source.shape} and edited {edited.shape} differ in shape")
    diff = np.abs(source.astype(np.int16) - edited.astype(np.int16))
    return (diff.max(axis=2) if diff.ndim == 3 else diff) > int(pixel_threshold)


def shared_pixel_changes(source: np.ndarray, edited: np.ndarray, target_mask: np.ndarray,
                         other_masks: Sequence[np.ndarray], pixel_threshold: int = 8) -> Dict[str, Any]:
    """The pixels the target's annotation shares with other objects', counted apart:
    ``shared_px`` (all of them), ``shared_changed`` (those that changed), and per other object
    ``front_share`` (None where it shares none or is judged behind the target, ``base.in_front``;
    else the changed share of the pixels it shares: those are its, and the edit must keep them)."""
    from refcoco_edit.pipelines.base import in_front

    changed = _changed(source, edited, pixel_threshold)
    target = np.asarray(target_mask).astype(bool)
    shared = np.zeros(target.shape, bool)
    front: List[Optional[float]] = []
    for m in other_masks:
        m = np.asarray(m).astype(bool)
        both = m & target
        if both.any():
            shared |= both
        front.append(float((changed & both).sum()) / float(both.sum()) if both.any() and in_front(target, m) else None)
    return {"shared_px": int(shared.sum()), "shared_changed": int((changed & shared).sum()), "front_share": front}


def audit_other_objects(source: np.ndarray, edited: np.ndarray, target_mask: np.ndarray,
                        other_masks: Sequence[np.ndarray], config: AuditConfig = AuditConfig(),
                        edit_type: str = "", other_categories: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """The audit of one candidate (JSON-ready, merged into its ``filter_scores``): ``others_n``
    objects checked, ``others_changed_max`` the largest changed share of an object's pixels,
    ``others_damaged`` how many exceed ``config.max_changed`` -- an object's pixels being its own
    (``other_object_changes``) and, where the two annotations overlap and it is judged in front
    (``base.in_front``), the shared ones (``shared_pixel_changes``). A target that overlaps another
    annotation also gets its shared pixels counted apart (``others_shared_px``,
    ``others_shared_changed``) and ``review_first`` 1: the sample goes to the front of the review
    queue (``review push``), whatever the audit decided. With an ``edit_type`` that takes the
    target away (``base.CARRYING_EDITS``), the objects it carries (``base.carried``, which reads
    ``other_categories``: a worn tie) go with it: they are counted as ``others_carried``, not audited."""
    from refcoco_edit.pipelines.base import CARRYING_EDITS, _categories, carried

    if edit_type in CARRYING_EDITS:
        target = np.asarray(target_mask).astype(bool)
        cats = _categories(other_categories, len(other_masks))
        keep = [m for m, c in zip(other_masks, cats) if not carried(target, np.asarray(m).astype(bool), c)]
        n_carried = len(other_masks) - len(keep)
        out = audit_other_objects(source, edited, target_mask, keep, config)
        if n_carried:
            out["others_carried"] = n_carried
        return out
    own = other_object_changes(source, edited, target_mask, other_masks, config.pixel_threshold)
    sh = shared_pixel_changes(source, edited, target_mask, other_masks, config.pixel_threshold)
    shares = [max(v for v in (o, f) if v is not None and not math.isnan(v)) for o, f in zip(own, sh["front_share"])
              if not (math.isnan(o) and f is None)]
    out: Dict[str, Any] = {"others_n": len(shares), "others_changed_max": round(max(shares), 6) if shares else 0.0,
                           "others_damaged": sum(1 for v in shares if v > config.max_changed)}
    if sh["shared_px"]:
        out.update(others_shared_px=sh["shared_px"], others_shared_changed=sh["shared_changed"], review_first=1)
    return out


def review_first(scores: Dict[str, Any]) -> bool:
    """True for a candidate whose target overlaps another annotation (``audit_other_objects``)."""
    return int(scores.get("review_first", 0) or 0) > 0


def is_marked(scores: Dict[str, Any]) -> bool:
    """True for a candidate whose audit found a damaged other object (False when not audited)."""
    return int(scores.get("others_damaged", 0) or 0) > 0
