"""The diffusion second repaint of twice-repainting (``sd-inpaint-surround``): SD inpainting of
everything *outside* the object's mask, for the exemplars of the reference-based view.

``SDSurroundRepainter.repaint(after, mask, category, seed)``:

1. a square window around the object (``context`` x its box's longer side, clipped to the image)
   resized to ``resolution``;
2. the inpainting mask is the window minus the object (the object alone is kept; the model sees
   no pixel of its surroundings, the masked image being zero there), the prompt puts the object
   somewhere else ("a photo of a {category}, ..."), ``strength`` 1 from a seeded generator;
3. the object's own pixels (resized the same way) are pasted back exactly through its mask, so
   its identity is the after image's and everything else is new.

The model loads lazily through the user path (``refcoco_edit.models.load_diffusers``, kind
``sd-inpaint``: a 9-channel inpainting UNet), from a local folder or hub id; ``Runtime`` gives
device, dtype and ``local_files_only``. torch and diffusers are imported when it runs.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from refcoco_edit.models import Runtime, load_diffusers
from refcoco_edit.repaint import Repaint, Repainter, mask_box

__all__ = ["SDSurroundRepainter"]


class SDSurroundRepainter(Repainter):
    """Second repaint with SD inpainting outside the object mask (see the module docstring)."""

    name = "sd-inpaint-surround"

    def __init__(self, model: str, runtime: Optional[Runtime] = None, num_inference_steps: int = 30,
                 guidance_scale: float = 7.5, resolution: int = 512, context: float = 2.0,
                 prompt: str = "a photo of a {category} in a different place, new surroundings, high quality",
                 negative_prompt: str = "collage, duplicate, text, watermark, blurry") -> None:
        if int(resolution) < 16 or int(resolution) % 8:
            raise ValueError(f"resolution must be a multiple of 8 and >= 16, got {resolution}")
        if int(num_inference_steps) < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if float(context) < 1.0:
            raise ValueError(f"context must be >= 1, got {context}")
        self.model = str(model)
        self.runtime = runtime or Runtime()
        self.num_inference_steps = int(num_inference_steps)
        self.guidance_scale = float(guidance_scale)
        self.resolution = int(resolution)
        self.context = float(context)
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self._pipe: Any = None

    def describe(self) -> Dict[str, Any]:
        return {"repainter": self.name, "model": self.model, "num_inference_steps": self.num_inference_steps,
                "guidance_scale": self.guidance_scale, "resolution": self.resolution, "context": self.context,
                "prompt": self.prompt}

    @property
    def pipe(self) -> Any:
        """The inpainting pipeline, loaded on first use."""
        if self._pipe is None:
            self._pipe = load_diffusers(self.model, "sd-inpaint", self.runtime, what="--repaint-model")
        return self._pipe

    def window(self, mask: np.ndarray) -> tuple:
        """The square window (x0, y0, x1, y1) around the object, clipped to the image."""
        H, W = mask.shape
        x0, y0, x1, y1 = mask_box(mask)
        side = int(min(max(H, W), max(16, round(self.context * max(x1 - x0, y1 - y0)))))
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        wx0 = int(np.clip(round(cx - side / 2), 0, max(0, W - side)))
        wy0 = int(np.clip(round(cy - side / 2), 0, max(0, H - side)))
        return wx0, wy0, min(W, wx0 + side), min(H, wy0 + side)

    def repaint(self, image: np.ndarray, mask: np.ndarray, category: str, seed: int) -> Repaint:
        import torch
        from PIL import Image

        self.check(image, mask)
        x0, y0, x1, y1 = self.window(mask)
        R = self.resolution
        crop = Image.fromarray(np.ascontiguousarray(image[y0:y1, x0:x1])).resize((R, R), Image.BICUBIC)
        obj = np.asarray(Image.fromarray((mask[y0:y1, x0:x1] * 255).astype(np.uint8)).resize((R, R), Image.NEAREST)) > 127
        if not obj.any():
            raise ValueError("the object vanished at the working resolution")
        hole = Image.fromarray(np.where(obj, 0, 255).astype(np.uint8))
        gen = torch.Generator(device="cpu").manual_seed(int(seed) % (2 ** 63))
        with torch.inference_mode():
            out = self.pipe(prompt=self.prompt.format(category=category or "object"),
                            negative_prompt=self.negative_prompt, image=crop, mask_image=hole, height=R, width=R,
                            strength=1.0, num_inference_steps=self.num_inference_steps,
                            guidance_scale=self.guidance_scale, generator=gen, output_type="np")
        new = np.clip(np.round(np.asarray(out.images[0], np.float32) * 255.0), 0, 255).astype(np.uint8)
        kept = np.asarray(crop)
        new[obj] = kept[obj]  # the object's pixels exactly: identity from the after image
        return Repaint(new, obj, {"window": [x0, y0, x1, y1], "seed": int(seed) % (2 ** 63)})
