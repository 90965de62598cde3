"""InstructDiffusion (Geng et al., CVPR 2024), one of the four methods of the paper's Table 1.

Weights (``--editor-arg model=...``): the released single original-format checkpoint
``v1-5-pruned-emaonly-adaption-task.ckpt`` (github.com/cientgu/InstructDiffusion,
``scripts/download_pretrained_instructdiffusion.sh``; default: that file under ``checkpoints/`` of
the working folder, upstream's default path) — converted offline by
``refcoco_edit.models.ldm`` (``original_config=`` upstream's ``configs/instruct_diffusion.yaml``,
optional: the architecture is otherwise read from the tensor shapes; ``tokenizer=`` the CLIP
tokenizer the file does not hold, default the cached ``openai/clip-vit-large-patch14``) — or a
diffusers InstructPix2Pix-layout folder / hub id holding the same weights.

What it runs is upstream's ``edit_cli.py``:

* the instruction: P + the paper's suffix "and do not change any pixel else" (as for
  InstructPix2Pix / MagicBrush; ``suffix=""`` turns it off);
* defaults of ``edit_cli.py``: 100 steps, text guidance 5.0 (``--cfg-text``), image guidance 1.25
  (``--cfg-image``), resolution 512;
* its guidance (not InstructPix2Pix's): three UNet passes per step — (text, image), (no text,
  image), (text, no image) — combined as 0.5 (e_img + e_txt) + s_T (e_cond - e_img) +
  s_I (e_cond - e_txt); "no image" is zero image latents, "no text" the empty prompt;
* its sampler: Euler ancestral over 100 sigmas linearly spaced in timestep (k-diffusion's
  ``sample_euler_ancestral`` with ``CompVisDenoiser``: diffusers' ``EulerAncestralDiscreteScheduler``
  with ``timestep_spacing="linspace"`` and SD's scaled-linear betas; sigmas are interpolated
  linearly where k-diffusion interpolates log-sigma);
* its size rule: the image is scaled so that its longer side is ``resolution`` with the shorter
  side rounded *up* to the model's unit (64 for SD), both sides floored to the unit,
  ``ImageOps.fit`` (centre crop + Lanczos) to that size; the result is ``ImageOps.fit`` back to
  the source size.

Seeds: one CPU generator per sample (initial noise and every ancestral step), so a sample does not
depend on its batch.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from refcoco_edit.errors import InputError
from refcoco_edit.models import ModelError

from .diffusion import PAPER_SUFFIX, DiffusionEditor, instruction, model_error, seeded_generators, size_unit, to_uint8

__all__ = ["InstructDiffusionEditor", "instructdiffusion_size", "DEFAULT_CHECKPOINT", "UPSTREAM"]

DEFAULT_CHECKPOINT = "checkpoints/v1-5-pruned-emaonly-adaption-task.ckpt"
UPSTREAM = {"repository": "https://github.com/cientgu/InstructDiffusion", "script": "edit_cli.py",
            "steps": 100, "cfg_text": 5.0, "cfg_image": 1.25, "resolution": 512, "sampler": "k-diffusion euler ancestral"}


def instructdiffusion_size(h: int, w: int, resolution: int, unit: int) -> Tuple[int, int]:
    """(h', w') of upstream's ``edit_cli.py`` for an h x w image (``unit`` = 64 for SD)."""
    factor = float(resolution) / max(w, h)
    factor = math.ceil(min(w, h) * factor / unit) * unit / min(w, h)
    return max(unit, int((h * factor) // unit) * unit), max(unit, int((w * factor) // unit) * unit)


class InstructDiffusionEditor(DiffusionEditor):
    """InstructDiffusion on the whole image, with upstream's guidance, sampler and size rule."""

    name = "instructdiffusion"
    protocol = frozenset()
    default_model = DEFAULT_CHECKPOINT

    def __init__(self, model: Optional[str] = None, original_config: str = "",
                 tokenizer: str = "openai/clip-vit-large-patch14", suffix: Optional[str] = PAPER_SUFFIX, steps: int = 100,
                 guidance_scale: float = 5.0, image_guidance_scale: float = 1.25, resolution: int = 512,
                 device: str = "auto", dtype: str = "auto", local_files_only: bool = True,
                 batch_size: Optional[int] = None) -> None:
        if not math.isfinite(float(image_guidance_scale)):
            raise ValueError(f"image_guidance_scale must be finite, got {image_guidance_scale}")
        super().__init__(model=model, original_config=str(original_config or ""), tokenizer=str(tokenizer),
                         suffix=suffix or "", steps=int(steps), guidance_scale=float(guidance_scale),
                         image_guidance_scale=float(image_guidance_scale), resolution=int(resolution), device=str(device),
                         dtype=str(dtype), local_files_only=bool(local_files_only), batch_size=batch_size)
        self._unit = 64
        self._source = ""

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        d["upstream"] = dict(UPSTREAM)
        d["guidance_rule"] = "0.5 (e_img + e_txt) + text_scale (e_cond - e_img) + image_scale (e_cond - e_txt) (edit_cli.py)"
        d["instruction_rule"] = ("prompt with trailing whitespace and .!; removed + ' ' + suffix" if self.config["suffix"]
                                 else "the prompt as is (no suffix)")
        d["size_rule"] = ("edit_cli.py: longer side = resolution, shorter side rounded up to the unit, both floored to "
                          "the unit (VAE factor x 2^(UNet levels - 1)); ImageOps.fit (centre crop, Lanczos) there and back")
        return d

    # -- loading ---------------------------------------------------------------------------------------
    def load(self) -> None:
        from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

        from refcoco_edit.models import dtype_kwargs, optimize
        from refcoco_edit.models.ldm import (convert_checkpoint, is_single_file, load_tokenizer, read_checkpoint,
                                             read_original_config)

        c, rt = self.config, self.runtime()
        what = f"editor {self.name!r} model {c['model']}"
        try:
            dtype = rt.torch_dtype()
            if is_single_file(c["model"]):
                orig = read_original_config(c["original_config"]) if c["original_config"] else None
                parts = convert_checkpoint(read_checkpoint(c["model"]), orig,
                                           load_tokenizer(c["tokenizer"], rt.local_files_only))
                p = parts["config"]["model"]["params"]
                sched = EulerAncestralDiscreteScheduler(
                    num_train_timesteps=int(p.get("timesteps", 1000)), beta_start=float(p.get("linear_start", 0.00085)),
                    beta_end=float(p.get("linear_end", 0.012)), beta_schedule="scaled_linear", timestep_spacing="linspace")
                pipe = StableDiffusionInstructPix2PixPipeline(
                    vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"], unet=parts["unet"],
                    scheduler=sched, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
                pipe.to(dtype=dtype)
                self._source = "single-file (original LDM layout, converted with diffusers' conversion utilities)"
            else:
                pipe = self._load_folder(what, rt, dtype_kwargs(dtype))
                pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config,
                                                                             timestep_spacing="linspace")
                self._source = "diffusers folder"
        except ModelError as e:
            raise model_error(self.name, e) from None
        if int(pipe.unet.config.in_channels) != 8:
            raise InputError(f"{what}: its UNet takes {pipe.unet.config.in_channels} input channels, not 8: not an "
                             "InstructDiffusion / InstructPix2Pix-layout model")
        self._pipe = optimize(pipe, rt)
        self._unit = size_unit(pipe)

    def _load_folder(self, what: str, rt: Any, dkw: Dict[str, Any]) -> Any:
        from diffusers import StableDiffusionInstructPix2PixPipeline

        from refcoco_edit.models import resolve_source

        spec = self.config["model"]
        if Path(spec).expanduser().is_file():
            raise ModelError(f"{what}: a file, but not a checkpoint (.ckpt, .safetensors, .pt, .pth, .bin)")
        if spec == DEFAULT_CHECKPOINT:
            raise ModelError(f"{what}: not found; download the released checkpoint (scripts/"
                             "download_pretrained_instructdiffusion.sh of github.com/cientgu/InstructDiffusion) and "
                             "give --editor-arg model=PATH")
        src = resolve_source(spec, what, rt.local_files_only, "model_index.json")
        try:
            return StableDiffusionInstructPix2PixPipeline.from_pretrained(
                src.load_arg, local_files_only=rt.local_files_only, safety_checker=None, requires_safety_checker=False,
                **dkw)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, ImportError, AttributeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ModelError(f"{what}: cannot be loaded as a diffusers InstructPix2Pix-layout pipeline: "
                             f"{type(e).__name__}: {first}") from None

    # -- editing ---------------------------------------------------------------------------------------
    def _sample(self, images: List[Any], prompts: List[str], seeds: List[int]) -> np.ndarray:
        """Upstream's CFGDenoiser + Euler ancestral for one batch of same-size PIL images."""
        import torch
        from diffusers.utils.torch_utils import randn_tensor

        pipe, c = self._pipe, self.config
        dev, dt = pipe.device, pipe.unet.dtype
        n = len(images)
        gens = seeded_generators(seeds)
        with torch.inference_mode():
            tok = pipe.tokenizer(list(prompts) + [""], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt")
            emb = pipe.text_encoder(tok.input_ids.to(dev))[0].to(dt)
            cond, null = emb[:n], emb[n:].expand(n, -1, -1)
            x = torch.stack([torch.from_numpy(np.asarray(im, np.float32) / 127.5 - 1.0).permute(2, 0, 1) for im in images])
            img_lat = pipe.vae.encode(x.to(dev, pipe.vae.dtype)).latent_dist.mode().to(dt)  # unscaled, as upstream
            sched = pipe.scheduler
            sched.set_timesteps(c["steps"], device=dev)
            lat = randn_tensor(tuple(img_lat.shape), generator=gens, device=dev, dtype=dt) * sched.init_noise_sigma
            text3 = torch.cat([cond, null, cond])
            img3 = torch.cat([img_lat, img_lat, torch.zeros_like(img_lat)])
            for t in sched.timesteps:
                inp = sched.scale_model_input(torch.cat([lat] * 3), t)
                e = pipe.unet(torch.cat([inp, img3], dim=1), t, encoder_hidden_states=text3).sample
                e_cond, e_img, e_txt = e.chunk(3)
                e = 0.5 * (e_img + e_txt) + c["guidance_scale"] * (e_cond - e_img) + c["image_guidance_scale"] * (e_cond - e_txt)
                lat = sched.step(e, t, lat, generator=gens).prev_sample
            dec = pipe.vae.decode((lat / pipe.vae.config.scaling_factor).to(pipe.vae.dtype)).sample
        return ((dec.float().clamp(-1, 1) + 1.0) / 2.0).permute(0, 2, 3, 1).cpu().numpy()

    def edit(self, images: List[np.ndarray], prompts: List[str], seeds: List[int],
             extras: List[Dict[str, Any]]) -> List[Any]:
        from PIL import Image, ImageOps

        c = self.config
        out: List[Any] = [None] * len(images)
        groups: Dict[Tuple[int, int], List[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(instructdiffusion_size(im.shape[0], im.shape[1], c["resolution"], self._unit), []).append(i)
        for (hh, ww), idx in groups.items():
            pil = [ImageOps.fit(Image.fromarray(np.ascontiguousarray(images[i])), (ww, hh), method=Image.LANCZOS)
                   for i in idx]
            res = self._sample(pil, [instruction(prompts[i], c["suffix"]) for i in idx], [seeds[i] for i in idx])
            for i, g in zip(idx, res):
                h, w = images[i].shape[:2]
                out[i] = np.asarray(ImageOps.fit(Image.fromarray(to_uint8(g)), (w, h), method=Image.LANCZOS))
        return out
