"""What every metric shares: its declaration (``MetricSpec``), its parameters (``MetricParams``)
and the per-sample arrays with their shared intermediates (``MetricContext``).

Conventions (all metrics, all families):

* Images are ``HxWx3 uint8`` RGB at the **source's native resolution**; nothing is cropped or
  resized (an output of another size is a failure unless ``--resize-outputs``). Values are read
  in [0, 1] (``x / 255``).
* Masks are bool ``HxW`` at the same resolution: ``edit_mask`` = M_e (the edited area of the
  reference), ``target_mask`` = M (the referred object), ``distractor_masks`` = the masks of the
  same-category distractors, ``other_masks`` = every other annotated object (None: unknown).
* A metric that does not apply to a sample (no background pixels, no distractor) is NaN for
  that sample and is left out of the mean; results.json counts such samples per metric.
* Sums of squared/absolute differences are computed in exact integer arithmetic on the 8-bit
  values and divided once, so identical images give exactly 0 and two runs give the same bits.

The context computes each shared intermediate once per sample (the output-minus-source
difference feeds L2_bg, MSE, PSNR, SSIM and the referring metrics alike), the way one decode of
each image feeds every metric.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

__all__ = ["MetricSpec", "MetricParams", "SampleArrays", "MetricContext", "MODEL_OPTIONS", "source_inside"]

# options of `refcoco-edit score` that provide model weights, by the name used in ``needs``
MODEL_OPTIONS: Dict[str, str] = {
    "clip_model": "--clip-model",
    "aesthetic_weights": "--aesthetic-weights",
    "dino_model": "--dino-model",
    "lpips_weights": "--lpips-weights",
}


@dataclass(frozen=True)
class MetricSpec:
    """The declaration of one reported number."""

    name: str
    family: str
    """paper | pie | magicbrush | referring | identity"""
    title: str
    """column title in report.md"""
    description: str
    higher_is_better: Optional[bool]
    """None: diagnostic, neither (e.g. raw change amounts)"""
    display_scale: float = 1.0
    """report.md shows value * display_scale (PIE-Bench's MSE x 10^4, ...); results.json is raw"""
    needs: Tuple[str, ...] = ()
    """model options it needs (keys of MODEL_OPTIONS); missing -> "not computed", with the reason"""
    implemented: bool = True
    """False: declared (so reports list it) but its computation ships with the model-based part"""
    view: Optional[str] = None
    """the data view it needs (``reference-based``: samples with an exemplar); None: any view.
    On data of another view the metric is "not computed", with the reason"""

    def to_json(self) -> Dict[str, Any]:
        d = asdict(self)
        d["needs"] = [MODEL_OPTIONS.get(n, n) for n in self.needs]
        return d


@dataclass(frozen=True)
class MetricParams:
    """Parameters of the weight-free metrics (recorded in results.json)."""

    referring_eps: float = 0.01
    """referring accuracy: the target must change more than every same-category distractor by
    this margin (mean absolute change in [0, 1]; 0.01 = 2.55 grey levels on average), so that
    "nothing changed" (0 vs 0) and uniform low-level noise never count as correct referring"""
    preservation_tau: float = 0.05
    """distractor preservation: a distractor counts as preserved when its mean absolute change is
    below this (in [0, 1]; 0.05 = 12.75 grey levels, above re-encoding noise, below any visible
    edit of the object)"""
    psnr_mse_floor: float = 1e-10
    """PSNR uses max(MSE, floor): identical backgrounds give the cap 100 dB, not infinity"""
    ssim_sigma: float = 1.5
    ssim_win: int = 11
    ssim_k1: float = 0.01
    ssim_k2: float = 0.03

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class SampleArrays:
    """Decoded inputs of one sample, as the metrics read them."""

    source: np.ndarray
    output: np.ndarray
    edit_mask: np.ndarray
    reference: Optional[np.ndarray] = None
    target_mask: Optional[np.ndarray] = None
    distractor_masks: List[np.ndarray] = field(default_factory=list)
    other_masks: Optional[List[np.ndarray]] = None
    """every other annotated object of the image (the distractors included); None: unknown"""
    pred_mask: Optional[np.ndarray] = None
    """the editor's predicted mask M_hat of the referred object (``Editor.returns_mask``): HxW
    uint8 levels ``round(255 * p)``, as cached; ``>= 128`` (p >= 0.5) is the predicted region"""

    def check(self) -> None:
        hw = self.source.shape[:2]
        for name in ("output", "reference"):
            a = getattr(self, name)
            if a is not None and (a.dtype != np.uint8 or a.shape != self.source.shape):
                raise ValueError(f"{name} is {a.shape} {a.dtype}, the source is {self.source.shape} uint8")
        for name, m in [("edit_mask", self.edit_mask), ("target_mask", self.target_mask),
                        ("pred_mask", self.pred_mask)] + \
                [("distractor_mask", m) for m in self.distractor_masks] + \
                [("other_mask", m) for m in (self.other_masks or [])]:
            if m is not None and m.shape != hw:
                raise ValueError(f"{name} is {m.shape}, the image is {hw}")


class MetricContext:
    """One sample's arrays plus lazily computed intermediates shared by the metric families."""

    def __init__(self, arrays: SampleArrays, params: MetricParams = MetricParams()):
        self.a = arrays
        self.params = params
        self._cache: Dict[str, Any] = {}

    def _get(self, key: str, make: Callable[[], Any]) -> Any:
        v = self._cache.get(key)
        if v is None:
            v = make()
            self._cache[key] = v
        return v

    # -- output vs source ---------------------------------------------------------------------
    @property
    def diff_src(self) -> np.ndarray:
        """output - source, int16 HxWx3."""
        return self._get("diff_src", lambda: np.subtract(self.a.output, self.a.source, dtype=np.int16))

    @property
    def sq_src(self) -> np.ndarray:
        """Per-pixel sum over channels of (output - source)^2, int32 HxW (exact)."""
        return self._get("sq_src", lambda: _sum_channels_sq(self.diff_src))

    @property
    def abs_src(self) -> np.ndarray:
        """Per-pixel sum over channels of |output - source|, int32 HxW (exact)."""
        return self._get("abs_src", lambda: _sum_channels_abs(self.diff_src))

    # -- output vs reference ------------------------------------------------------------------
    @property
    def diff_ref(self) -> np.ndarray:
        return self._get("diff_ref", lambda: np.subtract(self.a.output, self.a.reference, dtype=np.int16))

    # -- masks ------------------------------------------------------------------------------------
    @property
    def background(self) -> np.ndarray:
        """Pixels outside M_e."""
        return self._get("background", lambda: ~self.a.edit_mask)

    @property
    def n_background(self) -> int:
        return self._get("n_background", lambda: int(np.count_nonzero(self.background)))

    @property
    def output_bg(self) -> np.ndarray:
        """The output with the source's pixels inside M_e (``source_inside``): what the windowed
        background metrics compare with the source, so only background pixels can differ."""
        return self._get("output_bg", lambda: source_inside(self.a.output, self.a.source, self.a.edit_mask))


def source_inside(output: np.ndarray, source: np.ndarray, edit_mask: np.ndarray) -> np.ndarray:
    """``output`` with ``source``'s pixels inside ``edit_mask`` (a copy; the input when the mask is
    empty). A windowed or convolutional background metric (SSIM, LPIPS) of (this, source) sees
    the same pixels on both sides inside M_e, so windows straddling M_e measure the background
    alone, and an output that equals the source outside M_e scores the best value exactly."""
    m = np.asarray(edit_mask, dtype=bool)
    if not m.any():
        return output
    out = np.array(output, copy=True)
    out[m] = source[m]
    return out


def _sum_channels_sq(d: np.ndarray) -> np.ndarray:
    d32 = d.astype(np.int32)
    np.multiply(d32, d32, out=d32)
    return d32[..., 0] + d32[..., 1] + d32[..., 2]  # faster than .sum(-1) on a trailing axis of 3


def _sum_channels_abs(d: np.ndarray) -> np.ndarray:
    a = np.abs(d).astype(np.int32)
    return a[..., 0] + a[..., 1] + a[..., 2]


def masked_sum(values: np.ndarray, mask: np.ndarray) -> int:
    """Exact integer sum of ``values`` over ``mask``."""
    return int(np.sum(values, where=mask, dtype=np.int64))
