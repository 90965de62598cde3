"""Paint-by-Example replacement ("pbe-replace"): an exemplar of the target category painted into a
region around the referred object, on diffusers' ``PaintByExamplePipeline``.

The exemplar is an instance of the target category cut from another image (the build cuts it from
the data, or takes it from ``--exemplar-dir``), masked onto a neutral background and padded to a
square, as Paint-by-Example was trained on object crops. The edit region is the source object's
box grown by ``region_growth`` on each side, not its silhouette: the new object may have another
shape than the old one (the paper's Fig. 3). Steps of ``generate_batch`` (see
``refcoco_edit.pipelines.diffusion.DiffusionGTPipeline``):

1. ``check_inputs``: base checks, plus a usable RGBA exemplar (non-empty alpha, at least 4x4 px);
2. ``prepare``: region = grown box; a square context window around it (``context`` times its
   longer side) is cut and resized to ``resolution``; the exemplar is put on the neutral
   background;
3. ``run_model``: one ``PaintByExamplePipeline`` call per batch (lists of images, masks, exemplars
   and one seeded generator per request), DDIM, classifier-free guidance ``guidance_scale``;
4. ``finish``: the generated crop is resized back into the window; the new object is segmented
   with SAM (box prompt = the region) when a segmenter is given, else taken as the pixels of the
   region that changed; M_e = dilate(source mask ∪ new object); paste back through the feathered
   M_e (exact outside it) and check. The exemplar used is kept on the output.

The model is loaded through ``refcoco_edit.models.load_diffusers`` (the deprecated-module alias that
makes hub and locally saved checkpoints load the same way lives there).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from refcoco_edit.pipelines.base import EditRequest, ModelNeed, PipelineError, PipelineOutput
from refcoco_edit.pipelines.masks import box_mask, grow_box, mask_box, replacement_edit_mask
from refcoco_edit.models import Runtime
from refcoco_edit.pipelines.diffusion import DiffusionGTPipeline, Job

__all__ = ["PaintByExampleReplace", "exemplar_on_background", "DEFAULT_PBE_MODEL"]

DEFAULT_PBE_MODEL = "Fantasy-Studio/Paint-by-Example"


def exemplar_on_background(exemplar: np.ndarray, background: int = 255, pad: float = 0.05) -> Any:
    """An RGBA cut-out composited onto a flat ``background`` grey level, cropped to its alpha and
    padded to a square (``pad`` of the side as margin): a PIL RGB image."""
    from PIL import Image

    ex = np.asarray(exemplar)
    if ex.ndim != 3 or ex.shape[2] not in (3, 4) or ex.dtype != np.uint8:
        raise PipelineError("pipeline_error", f"exemplar must be hxwx4 uint8 RGBA, got {ex.shape} {ex.dtype}")
    if ex.shape[2] == 3:
        ex = np.dstack([ex, np.full(ex.shape[:2], 255, np.uint8)])
    alpha = ex[..., 3] > 0
    if not alpha.any():
        raise PipelineError("no_exemplar", "the exemplar's alpha channel is empty")
    x0, y0, x1, y1 = mask_box(alpha)
    ex = ex[y0:y1, x0:x1]
    a = ex[..., 3:4].astype(np.float32) / 255.0
    rgb = ex[..., :3].astype(np.float32) * a + float(background) * (1.0 - a)
    h, w = rgb.shape[:2]
    side = int(round(max(h, w) * (1.0 + 2.0 * pad)))
    canvas = np.full((side, side, 3), float(background), np.float32)
    oy, ox = (side - h) // 2, (side - w) // 2
    canvas[oy:oy + h, ox:ox + w] = rgb
    return Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8))


class PaintByExampleReplace(DiffusionGTPipeline):
    """Replace the referred object by the exemplar's object with Paint-by-Example."""

    name = "pbe-replace"
    edit_types = ("replace",)
    needs_exemplar = True
    models = (ModelNeed("model", "pbe_model", "pbe"),)
    build_settings = {**DiffusionGTPipeline.build_settings, "region_growth": "region_growth"}
    uses = ("runtime", "sam")

    def __init__(
        self,
        model: str = DEFAULT_PBE_MODEL,
        runtime: Optional[Runtime] = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        resolution: int = 512,
        context: float = 1.5,
        region_growth: float = 0.15,
        exemplar_background: int = 255,
        dilate_frac: float = 0.03,
        min_dilate_px: int = 5,
        feather_px: int = 4,
        sam: Any = None,
    ) -> None:
        super().__init__(model, runtime, num_inference_steps, guidance_scale, resolution, context, feather_px, sam)
        if region_growth < 0:
            raise ValueError(f"region_growth must be >= 0, got {region_growth}")
        self.region_growth = float(region_growth)
        self.exemplar_background = int(exemplar_background)
        self.dilate_frac = float(dilate_frac)
        self.min_dilate_px = int(min_dilate_px)

    def check_inputs(self, request: EditRequest) -> None:
        """Base checks, plus: the exemplar is an RGBA uint8 cut-out with a non-empty alpha."""
        super().check_inputs(request)
        ex = request.exemplar
        if ex.ndim != 3 or ex.shape[2] not in (3, 4) or ex.dtype != np.uint8:
            raise PipelineError("pipeline_error", f"exemplar must be hxwx4 uint8 RGBA, got {ex.shape} {ex.dtype}")
        if ex.shape[2] == 4 and not (ex[..., 3] > 0).any():
            raise PipelineError("no_exemplar", "the exemplar's alpha channel is empty")
        if min(ex.shape[:2]) < 4:
            raise PipelineError("no_exemplar", f"the exemplar is too small ({ex.shape[1]}x{ex.shape[0]} px)")

    def prepare(self, request: EditRequest) -> Job:
        """Step 2: region (grown box), context window at the working resolution, exemplar."""
        image = np.ascontiguousarray(request.image)
        region_box = grow_box(mask_box(request.mask), self.region_growth, image.shape, min_px=2)
        region = box_mask(region_box, image.shape)
        win, img, m = self.crop(image, region, region_box)
        example = exemplar_on_background(request.exemplar, self.exemplar_background)
        return Job(request, win, region, img, m, {"region_box": region_box, "example": example})

    def run_model(self, jobs: List[Job]) -> List[np.ndarray]:
        """Step 3: one batched Paint-by-Example call; float crops in [0, 1]."""
        import torch

        pipe = self.pipe
        with torch.inference_mode():
            out = pipe(
                example_image=[j.extra["example"] for j in jobs],
                image=[j.image for j in jobs],
                mask_image=[j.mask for j in jobs],
                height=self.resolution, width=self.resolution,
                num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale,
                generator=self.generators(jobs), output_type="np",
            )
        return [np.asarray(im, dtype=np.float32) for im in out.images]

    def finish(self, job: Job, generated: np.ndarray) -> PipelineOutput:
        """Step 4: new object (SAM or diff), M_e, paste back, check; keep the exemplar."""
        r = job.request
        mask = np.asarray(r.mask).astype(bool)
        x0, y0, x1, y1 = mask_box(mask)
        dp = int(max(self.min_dilate_px, round(self.dilate_frac * max(x1 - x0, y1 - y0))))
        new_obj = self.sam.segment(generated, job.extra["region_box"]) if self.sam is not None else None
        m_e, method = replacement_edit_mask(mask, job.region, new_object=new_obj, dilate_px=dp,
                                            changed=self.changed_in_window(job, generated))
        params: Dict[str, Any] = {
            "region_growth": self.region_growth, "region_box": list(job.extra["region_box"]),
            "window": list(job.window), "dilate_px": dp, "mask_method": method,
            "exemplar_background": self.exemplar_background,
        }
        ex = np.asarray(r.exemplar)
        if ex.shape[2] == 3:
            ex = np.dstack([ex, np.full(ex.shape[:2], 255, np.uint8)])
        return self.paste(r, generated, m_e, params, exemplar=ex)
