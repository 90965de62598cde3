"""Blended Latent Diffusion (Avrahami et al., 2023): text-driven local edits on Stable Diffusion's
components, for ``replace`` ("bld-replace") and ``attribute`` ("bld-attribute") edits.

diffusers has no pipeline for it, so the loop is written here, on the components of a
text-to-image SD model (``--sd-model``: 4-channel UNet) or, as the alternative backbone, of an SD
inpainting model (``--bld-backbone inpaint``: its 9-channel UNet also sees the mask and the masked
image). Steps of one batched call (``run_model``; the frame is
``refcoco_edit.pipelines.diffusion.DiffusionGTPipeline``):

1. ``check_inputs``: base checks, plus a non-empty edit target;
2. ``prepare``: the edit region — for ``replace`` the source box grown by ``region_growth`` (the
   new object may have another shape), for ``attribute`` the source mask dilated by
   ``attribute_dilate_px`` (same object, new look); a square context window around it at
   ``resolution``; the text — the edit target for replace ("a giraffe"), target + category for
   attribute ("red car") — in ``prompt_template``; the negative prompt names the source category
   for replace (``negative_source``), so the old object is not painted back;
3. encode the text (classifier-free guidance) and the source crop: z_src = E(x) (the mean of the
   VAE posterior, so the background latents are deterministic);
4. the latent mask m = the region downsampled to the latent grid (a latent cell is inside when
   any of its pixels is);
5. z_T ~ N(0, I), one seeded CPU generator per request (a sample's noise does not depend on its
   batch); with ``strength`` < 1 the loop starts from z_src noised to the first timestep;
6. DDIM loop: ε = ε_u + w (ε_c − ε_u); z ← DDIM step; then *blend*: z ← m ⊙ z + (1 − m) ⊙
   noise(z_src, t_next), the source latents noised to the level of the next step (z_src itself
   after the last step);
7. decode; optionally the paper's background-preservation refinement: a copy of the VAE decoder
   is fine-tuned for ``refine_steps`` steps so that it reproduces the source outside the region
   and the first decode inside it;
8. ``finish``: back into the window; M_e = dilate(source mask ∪ new object), the new object from
   SAM (box prompt, replace) or the pixels of the region that changed; paste back through the
   feathered M_e (exact outside it) and check.

``edit_regions`` runs steps 3-7 on regions and texts the caller gives (the benchmark's
``blended-latent`` editor: the region is M_e, the text the edit phrase) and returns the full-size
generated images; the caller pastes back.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from refcoco_edit.pipelines.base import EditRequest, ModelNeed, PipelineError, PipelineOutput
from refcoco_edit.pipelines.masks import box_mask, dilate, edit_mask, grow_box, mask_box, replacement_edit_mask
from refcoco_edit.models import Runtime
from refcoco_edit.pipelines.diffusion import DiffusionGTPipeline, Job

__all__ = ["BlendedLatentEdit", "BlendedLatentReplace", "BlendedLatentAttribute", "DEFAULT_SD_MODEL", "edit_text"]

DEFAULT_SD_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
BACKBONES = ("sd", "inpaint")


def edit_text(request: EditRequest) -> str:
    """What the edited region should show: the target for replace, target + category for
    attribute ("wooden" + "chair" -> "wooden chair")."""
    target = request.edit_target.strip()
    if request.edit_type == "attribute" and request.category:
        return f"{target} {request.category}".strip()
    return target


class BlendedLatentEdit(DiffusionGTPipeline):
    """Blended Latent Diffusion: DDIM + CFG with the source latents blended outside the mask."""

    name = "bld"
    edit_types = ("replace", "attribute")
    needs_exemplar = False
    models = (ModelNeed("model", "sd_model", "sd"),)  # --bld-backbone inpaint: see model_needs
    build_settings = {**DiffusionGTPipeline.build_settings, "backbone": "bld_backbone",
                      "region_growth": "region_growth", "refine_steps": "bld_refine_steps"}

    @classmethod
    def model_needs(cls, settings: Mapping[str, Any]) -> List[ModelNeed]:
        """The text-to-image SD model, or the inpainting model with ``bld_backbone: inpaint``."""
        if settings.get("bld_backbone") == "inpaint":
            return [ModelNeed("model", "inpaint_model", "sd-inpaint")]
        return list(cls.models)

    def model_need(self) -> ModelNeed:
        """The model of this instance's backbone (``model_needs`` for its ``bld_backbone``)."""
        return self.model_needs({"bld_backbone": self.backbone})[0]

    def __init__(
        self,
        model: str = DEFAULT_SD_MODEL,
        runtime: Optional[Runtime] = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        resolution: int = 512,
        context: float = 1.5,
        backbone: str = "sd",
        region_growth: float = 0.15,
        attribute_dilate_px: int = 3,
        strength: float = 1.0,
        prompt_template: str = "a photo of {text}",
        negative_prompt: str = "",
        negative_source: bool = True,
        refine_steps: int = 0,
        refine_lr: float = 1e-4,
        dilate_frac: float = 0.03,
        min_dilate_px: int = 5,
        feather_px: int = 4,
        sam: Any = None,
    ) -> None:
        super().__init__(model, runtime, num_inference_steps, guidance_scale, resolution, context, feather_px, sam)
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
        if not 0.0 < float(strength) <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        if "{text}" not in prompt_template:
            raise ValueError(f"prompt_template must contain {{text}}, got {prompt_template!r}")
        self.backbone = backbone
        self.region_growth = float(region_growth)
        self.attribute_dilate_px = int(attribute_dilate_px)
        self.strength = float(strength)
        self.prompt_template = prompt_template
        self.negative_prompt = negative_prompt
        self.negative_source = bool(negative_source)
        self.refine_steps = int(refine_steps)
        self.refine_lr = float(refine_lr)
        self.dilate_frac = float(dilate_frac)
        self.min_dilate_px = int(min_dilate_px)
        self._scheduler: Any = None

    def base_params(self) -> Dict[str, Any]:
        return {**super().base_params(), "backbone": self.backbone, "strength": self.strength,
                "prompt_template": self.prompt_template, "refine_steps": self.refine_steps}

    # 1 ---------------------------------------------------------------------------------------------
    def check_inputs(self, request: EditRequest) -> None:
        """Base checks, plus: there is an edit target to write into the text prompt."""
        super().check_inputs(request)
        if not request.edit_target or not request.edit_target.strip():
            raise PipelineError("pipeline_error", f"{self.name}: the {request.edit_type} edit has no target")

    # 2 ---------------------------------------------------------------------------------------------
    def prepare(self, request: EditRequest) -> Job:
        """Region, window, prompt and negative prompt of one request."""
        image = np.ascontiguousarray(request.image)
        mask = np.asarray(request.mask).astype(bool)
        if request.edit_type == "replace":
            region_box = grow_box(mask_box(mask), self.region_growth, image.shape, min_px=2)
            region = box_mask(region_box, image.shape)
        else:
            region = dilate(mask, self.attribute_dilate_px)
            region_box = mask_box(region)
        win, img, m = self.crop(image, region, region_box)
        prompt = self.prompt_template.format(text=edit_text(request))
        negatives = [self.negative_prompt] if self.negative_prompt else []
        if request.edit_type == "replace" and self.negative_source and request.category:
            negatives.append(request.category)
        return Job(request, win, region, img, m,
                   {"region_box": region_box, "prompt": prompt, "negative_prompt": ", ".join(negatives)})

    # 3-7 -------------------------------------------------------------------------------------------
    @property
    def scheduler(self) -> Any:
        """A DDIM scheduler with the model's noise schedule (eta = 0: deterministic steps)."""
        if self._scheduler is None:
            from diffusers import DDIMScheduler

            self._scheduler = DDIMScheduler.from_config(self.pipe.scheduler.config)
        return self._scheduler

    def run_model(self, jobs: List[Job]) -> List[np.ndarray]:
        """Steps 3-7 for a batch of jobs; float crops in [0, 1]."""
        import torch
        import torch.nn.functional as F
        from diffusers.utils.torch_utils import randn_tensor

        pipe, sched = self.pipe, self.scheduler
        device, dtype = pipe.device, pipe.unet.dtype
        gens = self.generators(jobs)
        n = len(jobs)
        cfg = self.guidance_scale > 1.0
        with torch.inference_mode():
            # 3. text and source latents
            cond, uncond = pipe.encode_prompt([j.extra["prompt"] for j in jobs], device, 1, cfg,
                                              negative_prompt=[j.extra["negative_prompt"] for j in jobs])
            embeds = torch.cat([uncond, cond]) if cfg else cond
            x = torch.stack([torch.from_numpy(np.asarray(j.image, np.float32) / 127.5 - 1.0).permute(2, 0, 1)
                             for j in jobs]).to(device=device, dtype=pipe.vae.dtype)
            sf = pipe.vae.config.scaling_factor
            z_src = pipe.vae.encode(x).latent_dist.mean * sf
            z_src = z_src.to(dtype)
            # 4. latent mask: a cell is inside when any of its pixels is
            m_px = torch.stack([torch.from_numpy(np.asarray(j.mask, np.float32) / 255.0)[None] for j in jobs]).to(device)
            m_lat = (F.adaptive_max_pool2d(m_px, z_src.shape[-2:]) > 0.5).to(dtype)
            extra_in = None
            if self.backbone == "inpaint":  # 9-channel UNet: [latents, mask, masked-image latents]
                masked = x * (m_px < 0.5).to(x.dtype)
                mi_lat = (pipe.vae.encode(masked).latent_dist.mean * sf).to(dtype)
                extra_in = torch.cat([m_lat, mi_lat], dim=1)
                if cfg:
                    extra_in = torch.cat([extra_in, extra_in])
            # 5. initial noise
            sched.set_timesteps(self.num_inference_steps, device=device)
            timesteps = sched.timesteps
            start = int(round(len(timesteps) * (1.0 - self.strength)))
            timesteps = timesteps[start:]
            noise = randn_tensor(tuple(z_src.shape), generator=gens, device=device, dtype=dtype)
            if self.strength < 1.0:
                lat = sched.add_noise(z_src, noise, timesteps[:1].repeat(n))
            else:
                lat = noise * sched.init_noise_sigma
            # 6. DDIM + CFG, blending the noised source latents outside the mask after each step
            for i, t in enumerate(timesteps):
                inp = torch.cat([lat, lat]) if cfg else lat
                inp = sched.scale_model_input(inp, t)
                if extra_in is not None:
                    inp = torch.cat([inp, extra_in], dim=1)
                eps = pipe.unet(inp, t, encoder_hidden_states=embeds).sample
                if cfg:
                    eps_u, eps_c = eps.chunk(2)
                    eps = eps_u + self.guidance_scale * (eps_c - eps_u)
                lat = sched.step(eps, t, lat).prev_sample
                if i + 1 < len(timesteps):
                    bg_noise = randn_tensor(tuple(z_src.shape), generator=gens, device=device, dtype=dtype)
                    bg = sched.add_noise(z_src, bg_noise, timesteps[i + 1:i + 2].repeat(n))
                else:
                    bg = z_src
                lat = m_lat * lat + (1.0 - m_lat) * bg
            # 7. decode
            dec = pipe.vae.decode((lat / sf).to(pipe.vae.dtype)).sample
        if self.refine_steps > 0:
            dec = torch.cat([self._refine(lat[k:k + 1] / sf, x[k:k + 1], m_px[k:k + 1], dec[k:k + 1])
                             for k in range(n)])
        out = ((dec.float().clamp(-1, 1) + 1.0) / 2.0).permute(0, 2, 3, 1).cpu().numpy()
        return [o for o in out]

    def edit_regions(self, images: Sequence[np.ndarray], regions: Sequence[np.ndarray], prompts: Sequence[str],
                     negative_prompts: Sequence[str], seeds: Sequence[int]) -> List[np.ndarray]:
        """Steps 3-7 on caller-given edit regions, in one model call: for each image, the window
        around its region (HxW bool, non-empty) is generated with its text prompt (used as is: no
        ``prompt_template``) and put back into the source. Returns the full-size generated images
        (uint8; no M_e and no paste-back: the caller pastes through its own mask)."""
        jobs: List[Job] = []
        items = zip(images, regions, prompts, negative_prompts, seeds)
        for k, (im, region, prompt, negative, seed) in enumerate(items):
            image = np.ascontiguousarray(im)
            m = np.asarray(region, dtype=bool)
            box = mask_box(m)
            win, img, mk = self.crop(image, m, box)
            req = EditRequest(sample_id=str(k), edit_type="replace", image=image, mask=m, bbox=list(box), prompt=prompt,
                              edit_phrase=prompt, edit_target=prompt, seed=int(seed))
            jobs.append(Job(req, win, m, img, mk, {"prompt": prompt, "negative_prompt": negative}))
        if not jobs:
            return []
        crops = self.run_model(jobs)
        return [self.uncrop(j.request.image, j.window, c) for j, c in zip(jobs, crops)]

    def _refine(self, z: Any, x: Any, m: Any, first: Any) -> Any:
        """Background-preservation refinement (Avrahami et al. 2023, Sec. 4.1): fine-tune a copy of
        the decoder so that D(z) matches the source outside the region and the first decode
        inside it; returns the refined decode."""
        import copy

        import torch

        pipe = self.pipe
        dec = copy.deepcopy(pipe.vae).float().train()
        for p in dec.encoder.parameters():
            p.requires_grad_(False)
        params = [p for n_, p in dec.named_parameters() if n_.startswith(("decoder.", "post_quant_conv."))]
        opt = torch.optim.Adam(params, lr=self.refine_lr)
        # tensors made under inference_mode cannot enter autograd: clone them outside it
        z, x, m, first = (t.detach().clone().float() for t in (z, x, m, first))
        with torch.enable_grad():
            for _ in range(self.refine_steps):
                opt.zero_grad(set_to_none=True)
                y = dec.decode(z).sample
                loss = (((y - x) ** 2) * (1 - m)).mean() + (((y - first) ** 2) * m).mean()
                loss.backward()
                opt.step()
        with torch.inference_mode():
            y = dec.decode(z).sample
        return y.to(first.dtype)

    # 8 ---------------------------------------------------------------------------------------------
    def finish(self, job: Job, generated: np.ndarray) -> PipelineOutput:
        """M_e (SAM / diff for replace, the changed part of the dilated mask for attribute), paste."""
        r = job.request
        mask = np.asarray(r.mask).astype(bool)
        x0, y0, x1, y1 = mask_box(mask)
        params: Dict[str, Any] = {"region_box": list(job.extra["region_box"]), "window": list(job.window),
                                  "prompt": job.extra["prompt"], "negative_prompt": job.extra["negative_prompt"]}
        if r.edit_type == "replace":
            dp = int(max(self.min_dilate_px, round(self.dilate_frac * max(x1 - x0, y1 - y0))))
            new_obj = self.sam.segment(generated, job.extra["region_box"]) if self.sam is not None else None
            m_e, method = replacement_edit_mask(mask, job.region, new_object=new_obj, dilate_px=dp,
                                            changed=self.changed_in_window(job, generated))
            params.update(region_growth=self.region_growth, dilate_px=dp, mask_method=method)
        else:
            changed = self.changed_in_window(job, generated) & job.region
            m_e = edit_mask(mask, changed, 2)
            params.update(attribute_dilate_px=self.attribute_dilate_px, dilate_px=2, mask_method="diff")
        return self.paste(r, generated, m_e, params)


class BlendedLatentReplace(BlendedLatentEdit):
    """Blended Latent Diffusion for ``replace`` edits (text = the target)."""

    name = "bld-replace"
    edit_types = ("replace",)
    uses = ("runtime", "sam")  # SAM segments the new object


class BlendedLatentAttribute(BlendedLatentEdit):
    """Blended Latent Diffusion for ``attribute`` edits (text = attribute + category)."""

    name = "bld-attribute"
    edit_types = ("attribute",)
