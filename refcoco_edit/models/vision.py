"""Image inputs of the transformers vision backbones (CLIP, DINO): uint8 HxWx3 arrays go to the
model's own image processor as ``CxHxW`` tensors already on the model's device, so resizing and
normalisation run there (the processor's torchvision backend), batched by the caller.

torch and transformers are imported inside the functions.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

import numpy as np

__all__ = ["writable", "pixel_values", "processor_input_size"]


def writable(im: np.ndarray) -> np.ndarray:
    """A C-contiguous array torch may wrap (decoded inputs are read-only: copy those)."""
    im = np.ascontiguousarray(im)
    return im if im.flags.writeable else im.copy()


def pixel_values(image_processor: Any, images: Sequence[np.ndarray], device: Any, dtype: Any) -> Any:
    """The processor's ``pixel_values`` of uint8 HxWx3 images, on ``device`` in ``dtype``."""
    import torch

    ts = [torch.from_numpy(writable(im)).permute(2, 0, 1).to(device, non_blocking=True) for im in images]
    px = image_processor(images=ts, return_tensors="pt", device=device)["pixel_values"]
    return px.to(device, dtype)


def processor_input_size(proc: Any) -> Dict[str, Any]:
    """The processor's size / crop size / resampling / mean / std, as plain JSON (results.json)."""
    def plain(v: Any) -> Any:
        if v is None or isinstance(v, (int, float, str, bool)):
            return v
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items() if x is not None}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        fields = getattr(v, "__dataclass_fields__", None)
        if fields:
            return {k: plain(getattr(v, k)) for k in fields if getattr(v, k) is not None}
        return str(v)

    resample = getattr(proc, "resample", None)
    try:
        from transformers.image_utils import PILImageResampling

        resample = PILImageResampling(int(resample)).name.lower() if resample is not None else None
    except (ImportError, ValueError, TypeError):
        resample = str(resample)
    return {"size": plain(getattr(proc, "size", None)), "crop_size": plain(getattr(proc, "crop_size", None)),
            "resample": resample, "mean": plain(getattr(proc, "image_mean", None)),
            "std": plain(getattr(proc, "image_std", None))}
