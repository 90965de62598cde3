"""Identity metrics of the reference-based track: does the edited object keep the reference's
identity? DreamBench's and FreeEdit's DINO / CLIP-I / CLIP-T, on object views.

=============  =============================================================================
metric         definition
=============  =============================================================================
``ref_dino``   ``cos(DINO(edited object view), DINO(reference object view))``, the ViT CLS token
               as MagicBrush's ``dino`` (``--dino-model``)
``ref_clip_i`` ``cos(CLIP(edited object view), CLIP(reference object view))``, projected image
               embeddings (``--clip-model``)
``ref_clip_t`` ``cos(CLIP(output), CLIP(edit phrase P_e))``: the whole output against the
               instruction's edit part ``prompt[edit_span]`` (raw text); a plain cosine in
               [-1, 1] like MagicBrush's ``clip_t`` and DreamBench's CLIP-T (not x100)
``obj_dino``   ``cos(DINO(output's view in M_e), DINO(after photo's view in M_e))``: the same
               object, anchored on where and how it really stands (the ground truth)
``obj_clip_i`` the same with CLIP image embeddings
=============  =============================================================================

Two anchors, because a copy of the reference is what a reference-anchored similarity rewards
most (DreamBench's known blind spot): ``ref_*`` compare with the exemplar as FreeEdit and
DreamBench do, so a pasted copy of the exemplar tops them -- above the real after photo, whose
object stands in its own pose and light; ``obj_*`` compare with the real object of the after
photo (the exemplar *is* that object, warped onto a repainted backdrop), in the same region on
both sides, so the oracle is exactly 1 on every sample, a pasted copy lands below it, and the
before image (the ``identity`` editor) at the bottom. Report both: ``ref_*`` says "looks like
the reference", ``obj_*`` "is the reference object, placed as it should be".

The *object views* (``object_view``), one rule for every side:

* **edited object**: the output cropped to the tight box of its region -- the editor's returned
  mask (``>= 0.5``) when it returns one and it is not empty, else M_e -- with every pixel of the
  box outside that region set to neutral grey ``GREY`` (128, 128, 128);
* **reference object**: the exemplar cropped to the tight box of ``exemplar_mask``, masked the
  same way;
* **ground-truth object** (``obj_*``): the after photo under M_e, and the output under M_e too
  (never the editor's mask: the same region on both sides, so no returned mask can choose what
  is compared);
* each masked crop is then padded to a square, centred, with the same grey, and only then given
  to the model's own image processor: CLIP's shortest-side resize + centre crop would cut the
  ends off a long box, and DINO's fixed 224x224 resize would stretch it; padded, both see the
  whole object at its own aspect ratio.

The grey is 128 (0.502 in [0, 1]): close to every processor's mean (CLIP's 0.48/0.46/0.41,
ImageNet's 0.49/0.46/0.41), so the masked-out area is near zero after normalisation and carries
no colour of its own. Values apply only to samples that have an exemplar (the reference-based
view; NaN elsewhere); on a ``rie`` export ``plan`` reports the whole family as not computed.

How to read them: 1.0 means the two views give the same embedding. On ``ref_*`` the oracle (the
real after photo) does *not* reach 1.0: the exemplar is the real object warped (scale, rotation,
optional mirror flip) onto a synthetic backdrop, and M_e usually holds some of the real
surrounding too; compare editors with each other there, never with 1.0. On ``obj_*`` the oracle
is 1.0 by construction and every other editor is measured against it.

This module holds the view rules and the batched computation given the backbones (``clip``:
``images``/``texts`` -> (n, d); ``dino``: ``images`` -> (n, d)); ``model_based.ModelMetrics``
loads the backbones and calls ``compute``. It imports nothing of ``model_based``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .base import MetricSpec

__all__ = ["SPECS", "NAMES", "CLIP_NAMES", "DINO_NAMES", "OBJECT_NAMES", "VIEW", "GREY", "RULES", "IdentityInputs",
           "object_view", "edited_region", "compute"]

VIEW = "reference-based"
"""the data view these metrics need (its samples carry an exemplar and its object mask)"""
GREY = 128
"""the neutral grey of the pixels outside an object's mask and of the square padding"""

SPECS = (
    MetricSpec("ref_dino", "identity", "Ref-DINO",
               "cos(DINO CLS(edited object view), DINO CLS(reference object view)); views: tight box of the "
               "region (editor's mask >= 0.5, else M_e) / of the exemplar mask, grey outside, padded square",
               True, needs=("dino_model",), view=VIEW),
    MetricSpec("ref_clip_i", "identity", "Ref-CLIP-I",
               "cos(CLIP(edited object view), CLIP(reference object view)); same views as Ref-DINO",
               True, needs=("clip_model",), view=VIEW),
    MetricSpec("ref_clip_t", "identity", "Ref-CLIP-T",
               "cos(CLIP(output), CLIP(edit phrase P_e)) on reference-based samples (as MagicBrush's CLIP-T, not x100)",
               True, needs=("clip_model",), view=VIEW),
    MetricSpec("obj_dino", "identity", "Obj-DINO",
               "cos(DINO CLS(output view in M_e), DINO CLS(after photo view in M_e)): the edited object against the "
               "real object where it belongs; same view rule, M_e on both sides; the oracle is exactly 1",
               True, needs=("dino_model",), view=VIEW),
    MetricSpec("obj_clip_i", "identity", "Obj-CLIP-I",
               "cos(CLIP(output view in M_e), CLIP(after photo view in M_e)); same views as Obj-DINO",
               True, needs=("clip_model",), view=VIEW),
)
NAMES = tuple(s.name for s in SPECS)
CLIP_NAMES = ("ref_clip_i", "ref_clip_t", "obj_clip_i")
DINO_NAMES = ("ref_dino", "obj_dino")
OBJECT_NAMES = ("obj_dino", "obj_clip_i")
"""the ground-truth-anchored pair (after photo in M_e); ``ref_dino`` / ``ref_clip_i`` are exemplar-anchored"""

RULES: Dict[str, str] = {
    "identity_edited_view": "output cropped to the tight box (x1, y1 exclusive, no margin) of the edited region = "
                            "the editor's returned mask >= 0.5 when it returns a non-empty one, else M_e; pixels of "
                            f"the box outside the region set to ({GREY}, {GREY}, {GREY}); padded to a square, "
                            "centred, with the same grey; then the model's image processor",
    "identity_reference_view": "exemplar cropped to the tight box of exemplar_mask, pixels outside the mask set to "
                               f"({GREY}, {GREY}, {GREY}), padded to a square, centred, with the same grey; then the "
                               "model's image processor",
    "identity_object_view": "obj_dino / obj_clip_i: the output and the after photo (reference_image) each under M_e "
                            "(never the editor's mask: one region for both sides), then the same box / grey / square "
                            "rule; the oracle is exactly 1",
    "identity_embeddings": "ref_dino, obj_dino: last_hidden_state[:, 0] (final-norm CLS) as dino; ref_clip_i, "
                           "obj_clip_i: projected image embeddings as clip_i; cosines in float64",
    "ref_clip_t": "cos(CLIP(whole output), CLIP(prompt[edit_span])) in [-1, 1] (MagicBrush / DreamBench CLIP-T "
                  "scale, not x100); empty edit phrase -> NaN",
    "identity_applies": "samples with an exemplar (reference-based view) only; NaN elsewhere; a rie export reports "
                        "the family as not computed",
}


@dataclass
class IdentityInputs:
    """What the identity metrics read of one sample (arrays at their own native sizes)."""

    output: np.ndarray
    edit_mask: np.ndarray
    exemplar: Optional[np.ndarray] = None
    exemplar_mask: Optional[np.ndarray] = None
    pred_mask: Optional[np.ndarray] = None
    """the editor's returned mask: bool, float in [0, 1], or uint8 levels round(255 * p) as cached"""
    edit_phrase: str = ""
    after: Optional[np.ndarray] = None
    """the after photo (the export's ``reference_image``, the output's size): the ``obj_*`` anchor"""


def _box(mask: np.ndarray) -> Optional[Tuple[int, int, int, int]]:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def object_view(image: np.ndarray, mask: np.ndarray, grey: int = GREY) -> Optional[np.ndarray]:
    """The object view of ``image`` under ``mask``: the tight box, grey outside the mask, padded to a
    centred square with the same grey (HxWx3 uint8); None when the mask is empty."""
    m = np.asarray(mask, dtype=bool)
    if m.shape != image.shape[:2]:
        raise ValueError(f"the mask is {m.shape}, the image {image.shape[:2]}")
    box = _box(m)
    if box is None:
        return None
    y0, y1, x0, x1 = box
    h, w = y1 - y0, x1 - x0
    side = max(h, w)
    out = np.full((side, side, 3), grey, dtype=np.uint8)
    oy, ox = (side - h) // 2, (side - w) // 2
    crop = image[y0:y1, x0:x1]
    out[oy:oy + h, ox:ox + w] = np.where(m[y0:y1, x0:x1, None], crop, np.uint8(grey))
    return out


def edited_region(edit_mask: np.ndarray, pred_mask: Optional[np.ndarray] = None) -> np.ndarray:
    """Where the edited object is looked for: the editor's mask (``>= 0.5``; uint8 levels ``>= 128``)
    when it returns a non-empty one, else M_e."""
    if pred_mask is not None:
        p = np.asarray(pred_mask)
        region = p if p.dtype == bool else (p >= 128) if p.dtype == np.uint8 else (p >= 0.5)
        if region.any():
            return region
    return np.asarray(edit_mask, dtype=bool)


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _pair_cos(emb: np.ndarray, pairs: Sequence[Tuple[int, int, int]], n: int) -> List[float]:
    out = [math.nan] * n
    if pairs:
        e = _normalize(emb)
        for i, a, b in pairs:
            out[i] = float(np.dot(e[a], e[b]))
    return out


def compute(samples: Sequence[IdentityInputs], names: Sequence[str], clip: Any = None,
            dino: Any = None) -> List[Dict[str, float]]:
    """The identity metrics ``names`` of each sample (NaN where there is no exemplar, no object in
    a view, or no edit phrase): one batched call per backbone for the whole chunk."""
    wanted = set(names)
    n = len(samples)
    res: List[Dict[str, float]] = [{} for _ in samples]
    views: List[np.ndarray] = []
    pairs: List[Tuple[int, int, int]] = []  # (sample, edited view index, reference view index)
    if wanted & {"ref_dino", "ref_clip_i"}:
        for i, s in enumerate(samples):
            if s.exemplar is None or s.exemplar_mask is None:
                continue
            ed = object_view(s.output, edited_region(s.edit_mask, s.pred_mask))
            rf = object_view(s.exemplar, s.exemplar_mask)
            if ed is not None and rf is not None:
                pairs.append((i, len(views), len(views) + 1))
                views += [ed, rf]
    obj_pairs: List[Tuple[int, int, int]] = []  # (sample, output view index, after view index)
    if wanted & set(OBJECT_NAMES):
        for i, s in enumerate(samples):
            if s.exemplar is None or s.after is None:
                continue
            region = np.asarray(s.edit_mask, dtype=bool)
            ed, gt = object_view(s.output, region), object_view(s.after, region)
            if ed is not None and gt is not None:
                obj_pairs.append((i, len(views), len(views) + 1))
                views += [ed, gt]
    if wanted & set(DINO_NAMES):
        emb = np.asarray(dino.images(views), dtype=np.float64) if views else np.zeros((0, 1))
        for name, which in (("ref_dino", pairs), ("obj_dino", obj_pairs)):
            if name in wanted:
                for i, v in enumerate(_pair_cos(emb, which, n)):
                    res[i][name] = v
    text_rows = [i for i, s in enumerate(samples) if s.exemplar is not None and s.edit_phrase.strip()] \
        if "ref_clip_t" in wanted else []
    if wanted & set(CLIP_NAMES):
        n_obj = len(views)
        whole = [samples[i].output for i in text_rows]
        emb = np.asarray(clip.images(views + whole), dtype=np.float64) if views or whole else np.zeros((0, 1))
        for name, which in (("ref_clip_i", pairs), ("obj_clip_i", obj_pairs)):
            if name in wanted:
                for i, v in enumerate(_pair_cos(emb, which, n)):
                    res[i][name] = v
        if "ref_clip_t" in wanted:
            phrases = sorted({samples[i].edit_phrase.strip() for i in text_rows})
            temb = _normalize(np.asarray(clip.texts(phrases), dtype=np.float64)) if phrases else np.zeros((0, 1))
            at = {t: k for k, t in enumerate(phrases)}
            img = _normalize(emb[n_obj:]) if text_rows else emb
            for i in range(n):
                res[i]["ref_clip_t"] = math.nan
            for k, i in enumerate(text_rows):
                res[i]["ref_clip_t"] = float(np.dot(img[k], temb[at[samples[i].edit_phrase.strip()]]))
    return [{m: float(r.get(m, math.nan)) for m in names} for r in res]
