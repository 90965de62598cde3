"""ReferDiffusion as a benchmark editor: ``--model referdiffusion:CHECKPOINT``.

``CHECKPOINT`` is a folder written by :meth:`ReferDiffusion.save_pretrained` (the trainer's
``final/``): the InstructPix2Pix layout (``unet``, ``vae``, ``text_encoder``, ``tokenizer``,
``scheduler``) plus ``referdiffusion_rem.pt`` / ``referdiffusion_config.json``. It can also be given
as ``--editor-arg checkpoint=PATH``. A missing folder, or one that is not a ReferDiffusion
checkpoint, is an ``InputError`` (exit 2) raised by ``load()``.

Protocol: only the image and the full prompt P (plus the seed). The model finds the edit and the
referring parts itself (the REM), so it declares no extra inputs.

Options (``--editor-arg key=value``): ``steps`` (50), ``guidance_scale`` (text, 7.5),
``image_guidance_scale`` (1.5), ``resolution`` (512: the longer side of the working size, each side
rounded to a multiple of the model's size unit, as the InstructPix2Pix editor does), ``device``
(auto | cpu | cuda[:N]), ``dtype`` (auto = fp16 on CUDA, fp32 elsewhere | fp32 | fp16 | bf16),
``batch_size`` (4). The output is resized (PIL Lanczos) back to the exact source size.

Each output is an ``EditOutput(image, mask)`` (``returns_mask = True``): ``mask`` is the REM's
predicted mask M_hat of the referred object, resized (bilinear) to the source, a float HxW array in
[0, 1]. The harness caches it next to the output (``outputs/{sample_id}.mask.png``) and reports
``mask_iou`` = IoU(M_hat >= 0.5, M) against the source mask M.

Seeds: one CPU ``torch.Generator`` per sample (its initial noise does not depend on the batch).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

import numpy as np

from refcoco_edit.benchmark.editors.base import Editor, EditFailure, EditOutput
from refcoco_edit.benchmark.metrics.referring import mask_iou
from refcoco_edit.benchmark.editors.diffusion import (SIZE_RULE, check_guidance_options, load_model_folder, resize_lanczos,
                                                       seeded_generators, size_groups, size_unit, to_source_size)
from refcoco_edit.errors import InputError

__all__ = ["ReferDiffusionEditor", "mask_iou"]


class ReferDiffusionEditor(Editor):
    """ReferDiffusion (InstructPix2Pix UNet + Region-Embedder Module) on the whole image."""

    name = "referdiffusion"
    protocol = frozenset()
    batch_size = 4
    returns_mask = True
    version = "2"  # 2: outputs carry the predicted mask
    spec_option = "checkpoint"  # ``referdiffusion:PATH`` -> checkpoint=PATH (see the registry)

    def __init__(self, checkpoint: Optional[str] = None, steps: int = 50, guidance_scale: float = 7.5,
                 image_guidance_scale: float = 1.5, resolution: int = 512, device: str = "auto",
                 dtype: str = "auto", batch_size: Optional[int] = None) -> None:
        if not checkpoint or not str(checkpoint).strip():
            raise ValueError("needs a checkpoint folder: --model referdiffusion:PATH "
                             "(a folder written by ReferDiffusion.save_pretrained / the trainer's final/)")
        check_guidance_options(steps, guidance_scale, image_guidance_scale, resolution, dtype, batch_size)
        if batch_size is not None:
            self.batch_size = int(batch_size)
        super().__init__(checkpoint=str(checkpoint), steps=int(steps), guidance_scale=float(guidance_scale),
                         image_guidance_scale=float(image_guidance_scale), resolution=int(resolution),
                         device=str(device), dtype=str(dtype).lower(), batch_size=batch_size)
        self._model: Any = None
        self._device: Any = None
        self._dtype: Any = None
        self._unit = 64

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        d["size_rule"] = SIZE_RULE
        return d

    def load(self) -> None:
        from .model import REM_CONFIG, REM_WEIGHTS, ReferDiffusion

        model, self._device, self._dtype, path, what = load_model_folder(
            self, "checkpoint", "ReferDiffusion checkpoint", ("unet", "vae", "text_encoder", "tokenizer", "scheduler",
                                                              REM_CONFIG),
            lambda p: ReferDiffusion.from_pretrained(p, local_files_only=True))
        if model.rem is not None and not (path / REM_WEIGHTS).is_file():
            raise InputError(f"{what}: missing {REM_WEIGHTS} (the trained Region-Embedder Module)")
        self._model = model
        self._unit = size_unit(model)

    def edit(self, images: List[np.ndarray], prompts: List[str], seeds: List[int],
             extras: List[Dict[str, Any]]) -> List[Union[EditOutput, EditFailure]]:
        import torch
        from PIL import Image

        c = self.config
        m = self._model
        out: List[Any] = [None] * len(images)
        for hw, idx in size_groups(images, c["resolution"], self._unit).items():
            src = np.stack([np.asarray(resize_lanczos(images[i], hw)) for i in idx])
            pixels = torch.from_numpy(src).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
            pixels = pixels.to(device=self._device, dtype=self._dtype)
            # one CPU generator per sample (diffusers' randn_tensor draws row i from generator i): a
            # sample's noise does not depend on its batch or the device
            gens = seeded_generators([seeds[i] for i in idx])
            with torch.inference_mode():
                res = m.edit(pixels, [prompts[i] for i in idx], num_inference_steps=c["steps"],
                             guidance_scale=c["guidance_scale"], image_guidance_scale=c["image_guidance_scale"],
                             generator=gens)
            imgs = res["images"].float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
            masks = res["mask"].float()[:, 0].cpu().numpy()
            for j, i in enumerate(idx):
                h, w = images[i].shape[:2]
                img = to_source_size(np.clip(np.rint(imgs[j] * 255.0), 0, 255).astype(np.uint8), images[i])
                mk = np.asarray(Image.fromarray(masks[j].astype(np.float32)).resize((w, h), Image.BILINEAR))
                out[i] = EditOutput(img, np.clip(mk, 0.0, 1.0))
        return out

