"""CLIP-based metrics: the embedding behind AP, CLIP-Sim_fg (paper), CLIP whole/edited (PIE-Bench),
CLIP-I and CLIP-T (MagicBrush). Definitions and crop rules: ``refcoco_edit.benchmark.metrics.model_based``.

``ClipEncoder`` is the backbone as two callables, ``images`` and ``texts``, returning the
*unnormalised* projected embeddings as float32 numpy arrays (the cosines are taken in float64 by
the caller). It wraps a transformers ``CLIPModel`` (or a ``CLIPVisionModelWithProjection``, image
side only), its image processor and tokenizer. Images are handed to the processor as uint8
``CxHxW`` torch tensors already on the model's device, so resizing and normalisation run there
(the processor's torchvision backend) in batches of ``batch_size``.

The view rules (what the model sees of a sample):

* ``bbox_crop``: ``image[y0:y1, x0:x1]`` at the tight box of the mask (exclusive ends, no margin);
* ``masked_image``: the image with every pixel outside the mask set to 0, full frame (PIE-Bench's
  ``img * mask`` before its CLIP score).
"""
from __future__ import annotations

import pickle
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

__all__ = ["bbox_crop", "masked_image", "ClipEncoder"]


def bbox_crop(image: np.ndarray, mask: np.ndarray) -> Optional[np.ndarray]:
    """The crop of ``image`` at the tight bounding box of ``mask``; None when the mask is empty."""
    m = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    return np.ascontiguousarray(image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])


def _writable(im: np.ndarray) -> np.ndarray:
    """A C-contiguous array torch may wrap (decoded inputs are read-only: copy those)."""
    im = np.ascontiguousarray(im)
    return im if im.flags.writeable else im.copy()


def masked_image(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``image`` with the pixels outside ``mask`` set to 0 (uint8, same size)."""
    return np.where(np.asarray(mask, dtype=bool)[..., None], image, np.uint8(0)).astype(np.uint8)


class ClipEncoder:
    """A CLIP model + its image processor (+ tokenizer) as batched embedding callables."""

    def __init__(self, model: Any, image_processor: Any, tokenizer: Any = None, device: Any = "cpu",
                 dtype: Any = None, batch_size: int = 32, details: Optional[Dict[str, Any]] = None) -> None:
        import torch

        self.model = model.eval()
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.dtype = dtype or next(model.parameters()).dtype
        self.batch_size = int(batch_size)
        self.details = dict(details or {})
        cfg = model.config
        self.embed_dim = int(getattr(cfg, "projection_dim", 0) or model.visual_projection.out_features)
        tcfg = getattr(cfg, "text_config", None)
        self.max_text_len = int(getattr(tcfg, "max_position_embeddings", 77) or 77) if tcfg is not None else 77

    @classmethod
    def load(cls, spec: str, device: Any = "cpu", dtype: Any = None, batch_size: int = 32,
             local_files_only: bool = True) -> "ClipEncoder":
        """``CLIPModel`` + ``AutoImageProcessor`` + ``AutoTokenizer`` from a folder or hub id."""
        import torch
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        from .model_based import _input_error, model_details, read_model_config, resolve_model_dir

        what = "--clip-model"
        load_arg, folder, hub_id = resolve_model_dir(spec, what, local_files_only)
        read_model_config(folder, spec, what, ("clip",), "a CLIP model (transformers layout, model_type clip), "
                          "e.g. openai/clip-vit-large-patch14")
        dtype = dtype or torch.float32
        try:
            model = CLIPModel.from_pretrained(load_arg, local_files_only=local_files_only, dtype=dtype)
            proc = AutoImageProcessor.from_pretrained(load_arg, local_files_only=local_files_only)
            tok = AutoTokenizer.from_pretrained(load_arg, local_files_only=local_files_only)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise _input_error(f"{what} {spec}: cannot be loaded as a CLIP model: {type(e).__name__}: {first}") from None
        model.to(device)
        vc = model.config.vision_config
        details = model_details(spec, folder, hub_id, cls=type(model).__name__, projection_dim=int(model.config.projection_dim),
                                vision={"hidden_size": vc.hidden_size, "layers": vc.num_hidden_layers,
                                        "patch_size": vc.patch_size, "image_size": vc.image_size},
                                processor=type(proc).__name__, image_input=_input_size(proc),
                                device=str(torch.device(device)), dtype=str(dtype).replace("torch.", ""))
        return cls(model, proc, tok, device=device, dtype=dtype, batch_size=batch_size, details=details)

    def describe(self) -> Dict[str, Any]:
        return dict(self.details)

    # -- the callables -----------------------------------------------------------------------------
    def pixel_values(self, images: Sequence[np.ndarray]) -> Any:
        """The processor's ``pixel_values`` of uint8 HxWx3 images (on the model's device)."""
        import torch

        ts = [torch.from_numpy(_writable(im)).permute(2, 0, 1).to(self.device, non_blocking=True)
              for im in images]
        px = self.image_processor(images=ts, return_tensors="pt", device=self.device)["pixel_values"]
        return px.to(self.device, self.dtype)

    def images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(n, d) float32 projected image embeddings (unnormalised)."""
        import torch

        out: List[np.ndarray] = []
        m = self.model
        for k in range(0, len(images), self.batch_size):
            px = self.pixel_values(images[k:k + self.batch_size])
            with torch.inference_mode():
                pooled = m.vision_model(pixel_values=px).pooler_output
                out.append(m.visual_projection(pooled).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, d) float32 projected text embeddings (unnormalised)."""
        import torch

        if self.tokenizer is None or not hasattr(self.model, "text_model"):
            raise RuntimeError("this CLIP encoder has no text tower")
        out: List[np.ndarray] = []
        m = self.model
        for k in range(0, len(texts), self.batch_size):
            tok = self.tokenizer(list(texts[k:k + self.batch_size]), padding=True, truncation=True,
                                 max_length=self.max_text_len, return_tensors="pt")
            with torch.inference_mode():
                pooled = m.text_model(input_ids=tok["input_ids"].to(self.device),
                                      attention_mask=tok["attention_mask"].to(self.device)).pooler_output
                out.append(m.text_projection(pooled).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)


def _input_size(proc: Any) -> Dict[str, Any]:
    """The processor's size / crop size / resampling, as plain JSON."""
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
