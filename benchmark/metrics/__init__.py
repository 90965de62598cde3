"""Metrics, one file per family, each tested against an independent reference formula.

=================  ==========  ============================================================
family             file        metrics
=================  ==========  ============================================================
paper (Table 1)    background  ``l2_bg``; ``ap``, ``clip_sim_fg``, ``clip_sim_fg_pr`` (model_based,
                               need weights)
pie (PIE-Bench)    background  ``psnr_bg``, ``mse_bg``, ``ssim_bg``; ``lpips_bg``, ``clip_whole``,
                               ``clip_edited`` (model_based)
magicbrush         magicbrush  ``l1``, ``l2``; ``clip_i``, ``dino``, ``clip_t`` (model_based)
referring (ours)   referring   ``referring_accuracy``, ``distractor_preservation``,
                               ``change_target``, ``change_distractor_max``,
                               ``change_distractor_mean``, ``referring_margin``, ``mask_iou``
                   others      ``others_preservation``, ``change_others_max``,
                               ``change_others_mean`` (every other annotated object)
identity           identity    ``ref_dino``, ``ref_clip_i``, ``ref_clip_t``, ``obj_dino``,
(reference-based)              ``obj_clip_i`` (model_based; the reference-based view only: edited
                               object vs the exemplar's / vs the after photo's in M_e)
=================  ==========  ============================================================

``select_metrics("pie,l1")`` resolves names and family names; ``plan`` splits a selection into
what can be computed and what cannot (with the reason, e.g. "needs --clip-model", or the data
view a metric needs);
``compute_sample`` computes the weight-free ones for one sample from its decoded arrays;
``model_based.ModelMetrics`` computes the others, batched over a chunk of samples.
Per-sample values are aggregated by the harness (mean + bootstrap CI), so a metric here is a
pure function of one sample: the torchmetrics ``update``/``compute`` split becomes "per-sample
value" / "aggregate over the samples table", which keeps every sample's value for the CI.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from refcoco_edit.registry import Registry

from .base import MODEL_OPTIONS, MetricContext, MetricParams, MetricSpec, SampleArrays
from .identity import SPECS as _IDENTITY_SPECS
from .model_based import SPECS as _MODEL_SPECS

__all__ = ["METRICS", "FAMILIES", "MetricSpec", "MetricParams", "SampleArrays", "MetricContext",
           "select_metrics", "plan", "compute_sample", "MODEL_OPTIONS"]

_WEIGHT_FREE = (
    MetricSpec("l2_bg", "paper", "L2_bg x10^3", "mean squared difference in [0,1] between output and source outside M_e",
               False, display_scale=1e3),
    MetricSpec("psnr_bg", "pie", "PSNR_bg", "PSNR (dB) of output vs source over background pixels (MSE floored at 1e-10)",
               True),
    MetricSpec("mse_bg", "pie", "MSE_bg x10^4", "MSE in [0,1] of output vs source over background pixels (= L2_bg)",
               False, display_scale=1e4),
    MetricSpec("ssim_bg", "pie", "SSIM_bg x10^2", "SSIM map of (output with the source inside M_e) vs source on the full image, averaged over "
               "background pixels (an exact background scores 1)",
               True, display_scale=1e2),
    MetricSpec("l1", "magicbrush", "L1", "mean |output - reference| in [0,1] over the whole image", False),
    MetricSpec("l2", "magicbrush", "L2", "mean (output - reference)^2 in [0,1] over the whole image", False),
    MetricSpec("referring_accuracy", "referring", "Ref-Acc",
               "1 if the referred object changed more than every same-category distractor (+eps)", True),
    MetricSpec("distractor_preservation", "referring", "Distr-Pres",
               "fraction of same-category distractors left unchanged (mean change < tau)", True),
    MetricSpec("change_target", "referring", "Chg-target", "mean |output - source| in [0,1] inside the referred object's mask", None),
    MetricSpec("change_distractor_max", "referring", "Chg-distr-max", "largest mean change inside a same-category distractor", None),
    MetricSpec("change_distractor_mean", "referring", "Chg-distr-mean", "mean over distractors of their mean change", None),
    MetricSpec("referring_margin", "referring", "Ref-margin", "change_target - change_distractor_max", True),
    MetricSpec("mask_iou", "referring", "Mask-IoU",
               "IoU of the editor's predicted mask (>= 0.5) with the referred object's mask M; editors that "
               "return one (returns_mask, e.g. referdiffusion)", True),
    MetricSpec("others_preservation", "referring", "Others-Pres",
               "fraction of every other annotated object of the image (any category) left unchanged (mean change < tau)",
               True),
    MetricSpec("change_others_max", "referring", "Chg-others-max",
               "largest mean |output - source| in [0,1] inside another annotated object (the worst-treated one)", False),
    MetricSpec("change_others_mean", "referring", "Chg-others-mean", "mean over the other annotated objects of their mean change",
               False),
)

_ORDER = ("ap", "l2_bg", "clip_sim_fg", "clip_sim_fg_pr",
          "psnr_bg", "lpips_bg", "mse_bg", "ssim_bg", "clip_whole", "clip_edited",
          "l1", "l2", "clip_i", "dino", "clip_t",
          "referring_accuracy", "distractor_preservation", "change_target", "change_distractor_max",
          "change_distractor_mean", "referring_margin", "mask_iou",
          "others_preservation", "change_others_max", "change_others_mean",
          "ref_dino", "ref_clip_i", "ref_clip_t", "obj_dino", "obj_clip_i")
_BY_NAME = {s.name: s for s in _WEIGHT_FREE + _MODEL_SPECS + _IDENTITY_SPECS}
assert set(_BY_NAME) == set(_ORDER)
METRICS: "OrderedDict[str, MetricSpec]" = OrderedDict((n, _BY_NAME[n]) for n in _ORDER)
FAMILIES: Dict[str, Tuple[str, ...]] = {
    fam: tuple(n for n, s in METRICS.items() if s.family == fam)
    for fam in ("paper", "pie", "magicbrush", "referring", "identity")
}


# metric and family names for --metrics (case and dashes do not matter: "SSIM-bg" is ssim_bg)
REGISTRY: Registry[Any] = Registry("metric or family", {**METRICS, **FAMILIES},
                                   normalize=lambda name: name.lower().replace("-", "_"))


def select_metrics(selection: Optional[Iterable[str]] = None) -> List[str]:
    """Metric names for ``--metrics`` (names or family names; None/empty = all), in table order."""
    if selection is None:
        return list(METRICS)
    items = [s.strip() for s in selection if s and s.strip()]
    if not items or items == ["all"]:
        return list(METRICS)
    wanted = set()
    for item in items:
        if item.lower() == "all":
            wanted.update(METRICS)
        elif item in REGISTRY:
            found = REGISTRY.get(item)  # a MetricSpec, or a family's tuple of names
            wanted.update(found if isinstance(found, tuple) else (found.name,))
        else:
            raise REGISTRY.unknown(item)
    return [n for n in METRICS if n in wanted]


def plan(names: Sequence[str], models: Mapping[str, Optional[str]],
         view: Optional[str] = None) -> Tuple[List[str], Dict[str, str]]:
    """(computable names, {name: reason}) given the model options that were set and the data's
    view (``rie`` | ``reference-based``; None: not known, not checked)."""
    ok: List[str] = []
    skipped: Dict[str, str] = {}
    for n in names:
        spec = METRICS[n]
        missing = [MODEL_OPTIONS[k] for k in spec.needs if not models.get(k)]
        if spec.view and view is not None and view != spec.view:
            skipped[n] = f"needs a {spec.view} export (each sample's exemplar); this data is the {view} view"
        elif missing:
            skipped[n] = "needs " + " and ".join(missing)
        elif not spec.implemented:
            skipped[n] = "not implemented in this version (model-based metrics ship with the diffusion extra)"
        else:
            ok.append(n)
    return ok, skipped


def compute_sample(arrays: SampleArrays, names: Sequence[str], params: MetricParams = MetricParams()) -> Dict[str, float]:
    """The weight-free metrics ``names`` of one sample; NaN where a metric does not apply."""
    from . import background, magicbrush, others, referring

    ctx = MetricContext(arrays, params)
    out: Dict[str, float] = {}
    for module in (background, magicbrush, referring, others):
        wanted = [n for n in names if n in module.NAMES]
        if wanted:
            out.update(module.compute(ctx, wanted))
    return {n: float(out[n]) for n in names if n in out}
