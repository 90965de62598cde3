"""MagicBrush's DINO score: ``cos(DINO(output), DINO(reference))`` on the ViT's CLS token.

``--dino-model``: a transformers ViT (``facebook/dino-vits16``, DINO ViT-S/16 as MagicBrush uses) or
DINOv2 (``facebook/dinov2-*``) model folder or hub id, with its ``preprocessor_config.json``. The
embedding is ``last_hidden_state[:, 0]``: the CLS token after the final layer norm, which is what
the DINO hub model's forward returns (ViT's extra tanh pooler is not used). Images go through the
model's own image processor (for dino-vits16: 224x224 bicubic, ImageNet mean/std) on the model's
device, in batches.
"""
from __future__ import annotations

import pickle
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

__all__ = ["DinoEncoder", "MODEL_TYPES"]

MODEL_TYPES = ("vit", "dinov2", "dinov2_with_registers", "dinov3_vit")


class DinoEncoder:
    """A ViT/DINOv2 model + its image processor as ``images(list of HxWx3 uint8) -> (n, d)``."""

    def __init__(self, model: Any, image_processor: Any, device: Any = "cpu", dtype: Any = None,
                 batch_size: int = 32, details: Optional[Dict[str, Any]] = None) -> None:
        import torch

        self.model = model.eval()
        self.image_processor = image_processor
        self.device = torch.device(device)
        self.dtype = dtype or next(model.parameters()).dtype
        self.batch_size = int(batch_size)
        self.details = dict(details or {})

    @classmethod
    def load(cls, spec: str, device: Any = "cpu", dtype: Any = None, batch_size: int = 32,
             local_files_only: bool = True) -> "DinoEncoder":
        """A ViT/DINOv2 model + its image processor from a folder or (cached) hub id; ``ModelError``
        when it is missing, of another kind, or cannot be loaded."""
        import torch
        from transformers import AutoImageProcessor, AutoModel

        from refcoco_edit.models import (ModelError, model_details, processor_input_size, read_model_config,
                                         resolve_model_dir)

        what = "--dino-model"
        load_arg, folder, hub_id = resolve_model_dir(spec, what, local_files_only)
        mt = read_model_config(folder, spec, what, MODEL_TYPES, f"a ViT or DINOv2 model ({', '.join(MODEL_TYPES)}), "
                               "e.g. facebook/dino-vits16")["model_type"]
        dtype = dtype or torch.float32
        kwargs: Dict[str, Any] = {"add_pooling_layer": False} if mt == "vit" else {}
        try:
            model = AutoModel.from_pretrained(load_arg, local_files_only=local_files_only, dtype=dtype, **kwargs)
            proc = AutoImageProcessor.from_pretrained(load_arg, local_files_only=local_files_only)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ModelError(f"{what} {spec}: cannot be loaded: {type(e).__name__}: {first}") from None
        model.to(device)
        details = model_details(spec, folder, hub_id, cls=type(model).__name__, model_type=mt,
                                hidden_size=int(model.config.hidden_size), embedding="last_hidden_state[:, 0] (CLS)",
                                processor=type(proc).__name__, image_input=processor_input_size(proc),
                                device=str(torch.device(device)), dtype=str(dtype).replace("torch.", ""))
        return cls(model, proc, device=device, dtype=dtype, batch_size=batch_size, details=details)

    def describe(self) -> Dict[str, Any]:
        return dict(self.details)

    def images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(n, d) float32 CLS embeddings."""
        import torch

        from refcoco_edit.models import pixel_values

        out: List[np.ndarray] = []
        for k in range(0, len(images), self.batch_size):
            px = pixel_values(self.image_processor, images[k:k + self.batch_size], self.device, self.dtype)
            with torch.inference_mode():
                h = self.model(pixel_values=px).last_hidden_state[:, 0]
            out.append(h.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 1), np.float32)
