"""Stable Diffusion inpainting removal ("sd-inpaint-remove"): the referred object is erased and
its place filled with background, on diffusers' ``StableDiffusionInpaintPipeline`` (a 9-channel
inpainting UNet, ``--inpaint-model``).

The model is steered with a *background* prompt and a *negative* prompt that names the removed
object ("cow, a cow, ..."), so it does not paint the object (or another of its kind) back.
Steps of ``generate_batch`` (frame: ``refcoco_edit.pipelines.diffusion.DiffusionGTPipeline``):

1. ``check_inputs``: base checks (edit type, image, non-empty mask);
2. ``prepare``: hole = dilate(source mask, max(min_dilate_px, dilate_frac x object size)), so
   the object's fringe and soft shadow go too; a square context window around it at
   ``resolution``; the prompts;
3. ``run_model``: one inpainting call per batch (lists of prompts, negative prompts, crops, masks
   and one seeded generator per request), ``strength`` 1, DDIM when ``scheduler="ddim"``;
4. ``finish``: the generated crop back into the window; M_e = the hole (what changed lies inside
   it by construction); paste back through the feathered M_e (exact outside) and check.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from refcoco_edit.pipelines.base import EditRequest, ModelNeed, PipelineOutput
from refcoco_edit.pipelines.masks import dilate, mask_box
from refcoco_edit.models import Runtime
from refcoco_edit.pipelines.diffusion import DiffusionGTPipeline, Job

__all__ = ["InpaintRemove", "DEFAULT_INPAINT_MODEL", "negative_for"]

DEFAULT_INPAINT_MODEL = "stable-diffusion-v1-5/stable-diffusion-inpainting"


def negative_for(category: str, template: str) -> str:
    """The negative prompt naming the removed object (``{category}`` filled in)."""
    cat = (category or "object").strip()
    return template.format(category=cat)


class InpaintRemove(DiffusionGTPipeline):
    """Remove the referred object with SD inpainting (background prompt, object as negative)."""

    name = "sd-inpaint-remove"
    edit_types = ("remove",)
    needs_exemplar = False
    models = (ModelNeed("model", "inpaint_model", "sd-inpaint"),)

    def __init__(
        self,
        model: str = DEFAULT_INPAINT_MODEL,
        runtime: Optional[Runtime] = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        resolution: int = 512,
        context: float = 1.5,
        background_prompt: str = "empty background, natural continuation of the surroundings, high quality photo",
        negative_template: str = "{category}, a {category}, object, person, text, watermark, blurry",
        dilate_frac: float = 0.05,
        min_dilate_px: int = 6,
        scheduler: str = "ddim",
        feather_px: int = 4,
    ) -> None:
        super().__init__(model, runtime, num_inference_steps, guidance_scale, resolution, context, feather_px, None)
        if "{category}" not in negative_template:
            raise ValueError(f"negative_template must contain {{category}}, got {negative_template!r}")
        if scheduler not in ("ddim", "model"):
            raise ValueError(f"scheduler must be 'ddim' or 'model', got {scheduler!r}")
        self.background_prompt = background_prompt
        self.negative_template = negative_template
        self.dilate_frac = float(dilate_frac)
        self.min_dilate_px = int(min_dilate_px)
        self.scheduler_name = scheduler
        self._ddim_set = False

    def base_params(self) -> Dict[str, Any]:
        return {**super().base_params(), "background_prompt": self.background_prompt, "scheduler": self.scheduler_name}

    @property
    def pipe(self) -> Any:  # the loaded pipeline, with a DDIM scheduler when asked for
        pipe = DiffusionGTPipeline.pipe.fget(self)  # type: ignore[attr-defined]
        if self.scheduler_name == "ddim" and not self._ddim_set:
            from diffusers import DDIMScheduler

            if not isinstance(pipe.scheduler, DDIMScheduler):
                pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
            self._ddim_set = True
        return pipe

    def prepare(self, request: EditRequest) -> Job:
        """Step 2: the hole (dilated mask), the window and the prompts."""
        image = np.ascontiguousarray(request.image)
        mask = np.asarray(request.mask).astype(bool)
        x0, y0, x1, y1 = mask_box(mask)
        dp = int(max(self.min_dilate_px, round(self.dilate_frac * max(x1 - x0, y1 - y0))))
        hole = dilate(mask, dp)
        win, img, m = self.crop(image, hole, mask_box(hole))
        return Job(request, win, hole, img, m, {"dilate_px": dp,
                                                "negative_prompt": negative_for(request.category, self.negative_template)})

    def run_model(self, jobs: List[Job]) -> List[np.ndarray]:
        """Step 3: one batched inpainting call; float crops in [0, 1]."""
        import torch

        pipe = self.pipe
        with torch.inference_mode():
            out = pipe(
                prompt=[self.background_prompt] * len(jobs),
                negative_prompt=[j.extra["negative_prompt"] for j in jobs],
                image=[j.image for j in jobs], mask_image=[j.mask for j in jobs],
                height=self.resolution, width=self.resolution, strength=1.0,
                num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale,
                generator=self.generators(jobs), output_type="np",
            )
        return [np.asarray(im, dtype=np.float32) for im in out.images]

    def finish(self, job: Job, generated: np.ndarray) -> PipelineOutput:
        """Step 4: M_e = the hole; paste back and check."""
        params = {"dilate_px": job.extra["dilate_px"], "window": list(job.window),
                  "negative_prompt": job.extra["negative_prompt"], "mask_method": "hole"}
        return self.paste(job.request, generated, job.region, params)
