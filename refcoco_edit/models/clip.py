"""The one CLIP encoder: the candidate filters of the build (``refcoco_edit.pipelines.filters``)
and the score metrics (``refcoco_edit.benchmark.metrics``) both embed through ``ClipEncoder``.

It wraps a transformers ``CLIPModel`` (or a ``CLIPVisionModelWithProjection``, image side only),
its image processor and its tokenizer as two batched callables, ``images`` and ``texts``, that
return float32 numpy arrays of the projected embeddings (vision/text pooler output ->
visual/text projection, i.e. OpenAI CLIP's ``encode_image`` / ``encode_text``):

* unnormalised by default (the metrics take their cosines in float64);
* L2-normalised in float32 with ``normalize=True`` (the filters' dot products are cosines).

Images go through ``refcoco_edit.models.vision.pixel_values`` (the processor on the model's device)
in batches of ``batch_size``; texts through the tokenizer, padded per batch and truncated to the
model's positions (77). What the model sees of a sample (crops, masked views) is decided by the
caller, not here. torch and transformers are imported inside the methods.
"""
from __future__ import annotations

import pickle
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from refcoco_edit.models.runtime import resolve_device
from refcoco_edit.models.source import ModelError, check_model
from refcoco_edit.models.vision import pixel_values, processor_input_size
from refcoco_edit.models.weights import model_details

__all__ = ["ClipEncoder"]


class ClipEncoder:
    """A CLIP model + its image processor (+ tokenizer) as batched embedding callables.

    ``name`` is what a filter score records as its ``clip_model`` (the spec it was loaded from);
    ``embed_dim`` the projection size; ``describe()`` the results.json ``model_details`` entry.
    """

    def __init__(self, model: Any, image_processor: Any, tokenizer: Any = None, device: Any = "cpu",
                 dtype: Any = None, batch_size: int = 32, details: Optional[Dict[str, Any]] = None,
                 normalize: bool = False, name: str = "") -> None:
        import torch

        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.dtype = dtype or next(model.parameters()).dtype
        self.batch_size = int(batch_size)
        self.details = dict(details or {})
        self.normalize = bool(normalize)
        self.name = str(name)
        cfg = model.config
        self.embed_dim = int(getattr(cfg, "projection_dim", 0) or model.visual_projection.out_features)
        tcfg = getattr(cfg, "text_config", None)
        self.max_text_len = int(getattr(tcfg, "max_position_embeddings", 77) or 77) if tcfg is not None else 77

    @classmethod
    def load(cls, spec: str, device: Any = "cpu", dtype: Any = None, batch_size: int = 32,
             local_files_only: bool = True, normalize: bool = False, what: str = "--clip-model") -> "ClipEncoder":
        """``CLIPModel`` + ``AutoImageProcessor`` + ``AutoTokenizer`` from a folder or (cached) hub
        id, checked to be a CLIP model first; ``device`` as ``resolve_device`` takes it (``auto``,
        ``cpu``, ``cuda:N`` or a torch device), ``dtype`` None means float32. ``ModelError`` (one
        line) when it is missing, of another kind, or cannot be loaded."""
        import torch
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        src, _ = check_model(spec, "clip", what, local_files_only)
        assert src.local is not None
        device = resolve_device(str(device))
        dtype = dtype or torch.float32
        try:
            model = CLIPModel.from_pretrained(src.load_arg, local_files_only=local_files_only, dtype=dtype)
            proc = AutoImageProcessor.from_pretrained(src.load_arg, local_files_only=local_files_only)
            tok = AutoTokenizer.from_pretrained(src.load_arg, local_files_only=local_files_only)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ModelError(f"{what} {spec}: cannot be loaded as a CLIP model: {type(e).__name__}: {first}") from None
        model.to(device)
        vc = model.config.vision_config
        details = model_details(spec, src.local, src.hub_id, cls=type(model).__name__,
                                projection_dim=int(model.config.projection_dim),
                                vision={"hidden_size": vc.hidden_size, "layers": vc.num_hidden_layers,
                                        "patch_size": vc.patch_size, "image_size": vc.image_size},
                                processor=type(proc).__name__, image_input=processor_input_size(proc),
                                device=str(device), dtype=str(dtype).replace("torch.", ""))
        return cls(model, proc, tok, device=device, dtype=dtype, batch_size=batch_size, details=details,
                   normalize=normalize, name=str(spec))

    def describe(self) -> Dict[str, Any]:
        """results.json ``config.model_details`` entry of this model."""
        return dict(self.details)

    # -- the callables -----------------------------------------------------------------------------
    def pixel_values(self, images: Sequence[np.ndarray]) -> Any:
        """The processor's ``pixel_values`` of uint8 HxWx3 images (on the model's device)."""
        return pixel_values(self.image_processor, images, self.device, self.dtype)

    def _out(self, projected: Any) -> np.ndarray:
        import torch

        f = projected.float()
        if self.normalize:
            f = torch.nn.functional.normalize(f, dim=-1)
        return f.cpu().numpy()

    def images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(n, d) float32 projected image embeddings (unit vectors with ``normalize``)."""
        import torch

        out: List[np.ndarray] = []
        m = self.model
        for k in range(0, len(images), self.batch_size):
            px = self.pixel_values(images[k:k + self.batch_size])
            with torch.inference_mode():
                pooled = m.vision_model(pixel_values=px).pooler_output
                out.append(self._out(m.visual_projection(pooled)))
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, d) float32 projected text embeddings (unit vectors with ``normalize``)."""
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
                out.append(self._out(m.text_projection(pooled)))
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)
