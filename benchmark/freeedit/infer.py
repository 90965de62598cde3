"""FreeEdit as a benchmark editor: ``--model freeedit --editor-arg model=DIR`` (or ``freeedit:DIR``).

``DIR`` is a folder written by :meth:`FreeEdit.save_pretrained` (the trainer's ``final/``): the
InstructPix2Pix layout plus ``detail_extractor/``, ``image_encoder/``, ``freeedit_modules.pt`` and
``freeedit_config.json``. A missing folder, or one that is not a FreeEdit folder, is an
``InputError`` (exit 2) raised by ``load()``.

Protocol: ``reference_object`` (the reference-based track's exemplar image and its object mask).
FreeEdit is mask-free: it never sees M_e or the source mask; the exemplar's mask only cuts the
object out of the exemplar photo (``reference.reference_image``: on a flat ``exemplar_background``,
cropped, squared, resized to ``reference_resolution``).

Options (``--editor-arg key=value``): ``steps`` (50), ``guidance_scale`` (multi-modal instruction,
7.5), ``image_guidance_scale`` (1.5), ``resolution`` (512: the longer side of the working size, each
side rounded to a multiple of the model's size unit, as the InstructPix2Pix and ReferDiffusion
editors do), ``reference_resolution`` (0 = the model's own, from its config), ``exemplar_background``
(255), ``device`` (auto | cpu | cuda[:N]), ``dtype`` (auto = fp16 on CUDA, fp32 elsewhere | fp32 |
fp16 | bf16), ``batch_size`` (4). The output is resized (PIL Lanczos) back to the exact source size.

Seeds: one CPU ``torch.Generator`` per sample (its initial noise does not depend on the batch).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

import numpy as np

from refcoco_edit.benchmark.editors.base import Editor, EditFailure
from refcoco_edit.benchmark.editors.diffusion import (SIZE_RULE, check_guidance_options, load_model_folder, resize_lanczos,
                                                       seeded_generators, size_groups, size_unit, to_source_size)
from refcoco_edit.errors import InputError

from .reference import reference_image, to_pixels

__all__ = ["FreeEditEditor"]

_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "detail_extractor", "image_encoder")


class FreeEditEditor(Editor):
    """FreeEdit (multi-modal instruction + detail extractor + DRRA) on the whole image, mask-free."""

    name = "freeedit"
    protocol = frozenset({"reference_object"})
    batch_size = 4
    version = "1"
    spec_option = "model"  # ``freeedit:DIR`` -> model=DIR (see the registry)

    def __init__(self, model: Optional[str] = None, steps: int = 50, guidance_scale: float = 7.5,
                 image_guidance_scale: float = 1.5, resolution: int = 512, reference_resolution: int = 0,
                 exemplar_background: int = 255, device: str = "auto", dtype: str = "auto",
                 batch_size: Optional[int] = None) -> None:
        if not model or not str(model).strip():
            raise ValueError("needs a FreeEdit folder: --editor-arg model=DIR (a folder written by "
                             "FreeEdit.save_pretrained / the trainer's final/)")
        check_guidance_options(steps, guidance_scale, image_guidance_scale, resolution, dtype, batch_size)
        if int(reference_resolution) < 0 or int(reference_resolution) % 8:
            raise ValueError(f"reference_resolution must be 0 (the model's) or a multiple of 8, got {reference_resolution}")
        if not 0 <= int(exemplar_background) <= 255:
            raise ValueError(f"exemplar_background must be a grey level in [0, 255], got {exemplar_background}")
        if batch_size is not None:
            self.batch_size = int(batch_size)
        super().__init__(model=str(model), steps=int(steps), guidance_scale=float(guidance_scale),
                         image_guidance_scale=float(image_guidance_scale), resolution=int(resolution),
                         reference_resolution=int(reference_resolution), exemplar_background=int(exemplar_background),
                         device=str(device), dtype=str(dtype).lower(), batch_size=batch_size)
        self._model: Any = None
        self._device: Any = None
        self._dtype: Any = None
        self._unit = 64
        self._ref_size = int(reference_resolution)

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        d["size_rule"] = SIZE_RULE
        d["reference_rule"] = ("the exemplar's object cut out by its mask onto a flat exemplar_background, cropped to the "
                               "object, padded to a square (5% margin), resized (bicubic) to reference_resolution")
        return d

    def load(self) -> None:
        from .model import FREEEDIT_CONFIG, FREEEDIT_WEIGHTS, FreeEdit

        c = self.config
        model, self._device, self._dtype, _, what = load_model_folder(
            self, "model", "FreeEdit folder", _PARTS + (FREEEDIT_CONFIG, FREEEDIT_WEIGHTS),
            lambda p: FreeEdit.from_pretrained(p, local_files_only=True))
        self._model = model
        self._unit = size_unit(model)
        self._ref_size = int(c["reference_resolution"]) or int(model.config.reference_resolution)
        if self._ref_size % model.vae_scale_factor:
            raise InputError(f"{what}: reference_resolution {self._ref_size} is not a multiple of the VAE factor "
                             f"{model.vae_scale_factor}")

    def edit(self, images: List[np.ndarray], prompts: List[str], seeds: List[int],
             extras: List[Dict[str, Any]]) -> List[Union[np.ndarray, EditFailure]]:
        import torch

        c = self.config
        out: List[Any] = [None] * len(images)
        refs: Dict[int, np.ndarray] = {}
        for i, e in enumerate(extras):
            obj = (e or {}).get("reference_object")
            if not obj or obj.get("image") is None:
                out[i] = EditFailure("editor_error", "no reference_object (the exemplar): score a reference-based export")
                continue
            try:
                refs[i] = reference_image(obj["image"], obj.get("mask"), self._ref_size, c["exemplar_background"])
            except ValueError as err:
                out[i] = EditFailure("editor_error", str(err))
        for hw, idx in size_groups(images, c["resolution"], self._unit, refs).items():
            src = [np.asarray(resize_lanczos(images[i], hw)) for i in idx]
            pixels = to_pixels(src).to(device=self._device, dtype=self._dtype)
            ref = to_pixels([refs[i] for i in idx]).to(device=self._device, dtype=self._dtype)
            with torch.inference_mode():
                res = self._model.edit(pixels, ref, [prompts[i] for i in idx], num_inference_steps=c["steps"],
                                       guidance_scale=c["guidance_scale"], image_guidance_scale=c["image_guidance_scale"],
                                       generator=seeded_generators([seeds[i] for i in idx]))
            imgs = res["images"].float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
            for j, i in enumerate(idx):
                out[i] = to_source_size(np.clip(np.rint(imgs[j] * 255.0), 0, 255).astype(np.uint8), images[i])
        return out
