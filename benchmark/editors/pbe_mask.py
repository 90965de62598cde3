"""``pbe-mask``: Paint-by-Example with the sample's exemplar and the ground-truth mask M_e.

The mask-based upper bound of the reference-based track (what FreeEdit compares its mask-free
model against): it is told *where* (``gt_mask``: M_e) and *what* (``reference_object``: the
exemplar and its object mask). Per sample:

1. the exemplar's object (its mask as alpha) is put on a flat ``exemplar_background`` grey,
   cropped to the object and padded to a square (``pipelines.paint_by_example.exemplar_on_background``,
   as the build's Paint-by-Example does: PbE was trained on object crops);
2. the region R is M_e grown by ``dilate_px`` (``region=mask``, default) or the tight box of M_e
   (``region=box``, PbE's training masks were boxes);
3. the square context window around R (``context`` x its box) is resized to ``resolution`` and
   inpainted by diffusers' ``PaintByExamplePipeline`` (DDIM; loaded by the build's
   ``PaintByExampleReplace.load``, which also installs the deprecated-module alias that makes hub
   and locally saved checkpoints load the same way), one seeded CPU generator per sample;
4. the result is resized back into the window and pasted through R (feathered inside R by
   ``feather_px``): outside R the output is the before image, bit for bit.

Weights: ``--editor-arg model=PATH_OR_HUB_ID`` (default ``Fantasy-Studio/Paint-by-Example``).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

import numpy as np

from .base import EditFailure
from .diffusion import DiffusionEditor, load_paint_by_example, seeded_generators

__all__ = ["PbEMaskEditor", "reference_rgba", "REGION_RULES"]

REGION_RULES = {"mask": "M_e grown by dilate_px", "box": "the tight box of M_e"}


def reference_rgba(reference_object: Dict[str, Any]) -> Optional[np.ndarray]:
    """The ``reference_object`` protocol input as an RGBA cut-out (alpha = its object mask), or
    None when its mask is empty or does not match the image."""
    img = np.asarray(reference_object.get("image"))
    mask = np.asarray(reference_object.get("mask"), bool)
    if img.ndim != 3 or img.shape[2] != 3 or mask.shape != img.shape[:2] or not mask.any():
        return None
    return np.dstack([img.astype(np.uint8), mask.astype(np.uint8) * 255])


class PbEMaskEditor(DiffusionEditor):
    """Paint-by-Example into M_e with the sample's exemplar (the mask-based upper bound)."""

    name = "pbe-mask"
    protocol = frozenset({"reference_object", "gt_mask"})
    default_model = "Fantasy-Studio/Paint-by-Example"

    def __init__(self, model: Optional[str] = None, steps: int = 50, guidance_scale: float = 5.0,
                 resolution: int = 512, context: float = 1.5, region: str = "mask", dilate_px: int = 0,
                 feather_px: int = 0, exemplar_background: int = 255, device: str = "auto", dtype: str = "auto",
                 local_files_only: bool = True, batch_size: Optional[int] = None) -> None:
        if region not in REGION_RULES:
            raise ValueError(f"region must be one of {', '.join(REGION_RULES)}, got {region!r}")
        if int(dilate_px) < 0 or int(feather_px) < 0:
            raise ValueError("dilate_px and feather_px must be >= 0")
        if not 0 <= int(exemplar_background) <= 255:
            raise ValueError(f"exemplar_background must be a grey level in [0, 255], got {exemplar_background}")
        if not float(context) >= 1.0:
            raise ValueError(f"context must be >= 1, got {context}")
        super().__init__(model=model, steps=int(steps), guidance_scale=float(guidance_scale),
                         resolution=int(resolution), context=float(context), region=region, dilate_px=int(dilate_px),
                         feather_px=int(feather_px), exemplar_background=int(exemplar_background), device=str(device),
                         dtype=str(dtype), local_files_only=bool(local_files_only), batch_size=batch_size)

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        c = self.config
        d["region_rule"] = f"{REGION_RULES[c['region']]}; pasted back through it (exact outside)"
        d["exemplar_rule"] = (f"the exemplar's object (alpha = its mask) on grey {c['exemplar_background']}, cropped to "
                              "the object, padded to a square")
        return d

    def load(self) -> None:
        self._pipe = load_paint_by_example(self)

    def _region(self, gt_mask: np.ndarray) -> np.ndarray:
        from refcoco_edit.pipelines.masks import box_mask, dilate, mask_box

        m = np.asarray(gt_mask, bool)
        if self.config["region"] == "box":
            return box_mask(mask_box(m), m.shape)
        return dilate(m, self.config["dilate_px"]) if self.config["dilate_px"] else m

    def edit(self, images: List[np.ndarray], prompts: List[str], seeds: List[int],
             extras: List[Dict[str, Any]]) -> List[Union[np.ndarray, EditFailure]]:
        import torch

        from refcoco_edit.pipelines.masks import mask_box, paste_back
        from refcoco_edit.pipelines.paint_by_example import exemplar_on_background
        from refcoco_edit.pipelines.windows import crop_to_window, uncrop

        c, r = self.config, self.config["resolution"]
        out: List[Any] = [None] * len(images)
        run = []  # (i, source, region, example)
        for i, (img, e) in enumerate(zip(images, extras)):
            rgba = reference_rgba(e["reference_object"])
            if rgba is None:
                out[i] = EditFailure("editor_error", "the exemplar's object mask is empty or not of the exemplar's size")
                continue
            if not np.asarray(e["gt_mask"], bool).any():
                out[i] = EditFailure("editor_error", "M_e is empty: no region to paint")
                continue
            src = np.ascontiguousarray(img)
            region = self._region(e["gt_mask"])
            run.append((i, src, region, exemplar_on_background(rgba, c["exemplar_background"])))
        if not run:
            return out
        crops = [crop_to_window(src, region, mask_box(region), c["context"], r) for _, src, region, _ in run]
        with torch.inference_mode():
            res = self._pipe(example_image=[ex for *_, ex in run], image=[w[1] for w in crops],
                             mask_image=[w[2] for w in crops], height=r, width=r, num_inference_steps=c["steps"],
                             guidance_scale=c["guidance_scale"], generator=seeded_generators([seeds[i] for i, *_ in run]),
                             output_type="np")
        for (i, src, region, _), w, g in zip(run, crops, res.images):
            full = uncrop(src, w[0], np.asarray(g, np.float32))
            out[i] = paste_back(src, full, region, feather_px=c["feather_px"])
        return out
