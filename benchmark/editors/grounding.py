"""Stage 1 of the ``grounded-*`` editors: find the object a phrase names, as one box per image.

``load_grounder(spec, runtime)`` picks the grounder from ``spec``:

=========================  ==========================================================================
spec                       grounder
=========================  ==========================================================================
a model folder / hub id    ``model_type`` of its ``config.json``:
                           ``owlv2`` / ``owlvit`` (OWL-ViT v2 / v1) and ``grounding-dino`` /
                           ``mm-grounding-dino`` (Grounding DINO) through transformers'
                           ``AutoProcessor`` + ``AutoModelForZeroShotObjectDetection``: the box of
                           the highest-scoring query (no threshold: the phrase names one object;
                           a query whose box is under 1 px inside the image is skipped);
                           ``clipseg`` (``CLIPSegForImageSegmentation``): the heat map, thresholded,
                           its connected component that holds the peak, and that component's box
``boxes:FILE.json``        precomputed boxes ``{sample_id: [x0, y0, x1, y1]}`` in source pixels
                           (another detector's output; also how a test fixes the box)
=========================  ==========================================================================

Every grounder is batched (one forward pass per batch of images; Grounding DINO, which pads a batch
to its largest image, one pass per image size, so that a sample's box never depends on its batch), runs in fp16 on CUDA by default
(``Runtime``: ``dtype=auto``) and is loaded once. ``ground`` returns one ``Grounding`` per image:
a box (x0, y0, x1, y1, floats in source pixels, clipped to the image) and its score, or ``box=None``
when nothing was found. torch and transformers are imported inside the functions.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from refcoco_edit.models import ModelError, Runtime

__all__ = ["Grounding", "Grounder", "DetectorGrounder", "ClipSegGrounder", "BoxFileGrounder", "load_grounder",
           "DETECTOR_TYPES", "DEFAULT_GROUNDER"]

DEFAULT_GROUNDER = "google/owlv2-base-patch16-ensemble"
# model_type -> family, for the detectors loaded with AutoModelForZeroShotObjectDetection
DETECTOR_TYPES: Dict[str, str] = {"owlv2": "owl", "owlvit": "owl", "grounding-dino": "gdino",
                                  "mm-grounding-dino": "gdino"}
Box = Tuple[float, float, float, float]


@dataclass
class Grounding:
    """One image's answer: ``box`` (x0, y0, x1, y1 in source pixels) or None, its ``score``, and
    for CLIPSeg the ``heat`` map (HxW float in [0, 1]) the box came from."""

    box: Optional[Box]
    score: float = float("nan")
    heat: Optional[np.ndarray] = field(default=None, repr=False)


def _clip_box(box: Sequence[float], h: int, w: int) -> Optional[Box]:
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = sorted((min(max(x0, 0.0), float(w)), min(max(x1, 0.0), float(w))))
    y0, y1 = sorted((min(max(y0, 0.0), float(h)), min(max(y1, 0.0), float(h))))
    if x1 - x0 < 1.0 or y1 - y0 < 1.0:
        return None
    return x0, y0, x1, y1


class Grounder:
    """Base: ``describe()`` for results.json, ``ground(images, phrases, keys)`` -> list of Grounding."""

    kind = ""

    def describe(self) -> Dict[str, Any]:
        return {"kind": self.kind}

    def ground(self, images: List[np.ndarray], phrases: List[str], keys: List[str]) -> List[Grounding]:
        raise NotImplementedError


class _HFGrounder(Grounder):
    """A transformers grounding model and its processor, on the runtime's device and dtype."""

    def __init__(self, spec: str, model_type: str, runtime: Runtime, model_cls: Any) -> None:
        from transformers import AutoProcessor

        from refcoco_edit.models import dtype_kwargs, resolve_model_dir

        self.spec, self.model_type = spec, model_type
        arg, _, _ = resolve_model_dir(spec, "grounder", runtime.local_files_only)
        self.device, self.dtype = runtime.torch_device(), runtime.torch_dtype()
        try:
            self.processor = AutoProcessor.from_pretrained(arg, local_files_only=runtime.local_files_only)
            self.model = model_cls.from_pretrained(arg, local_files_only=runtime.local_files_only,
                                                   **dtype_kwargs(self.dtype)).to(self.device).eval()
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, ImportError, AttributeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ModelError(f"grounder {spec}: cannot be loaded as a {model_type} model: {type(e).__name__}: {first}") from None

    def describe(self) -> Dict[str, Any]:
        return {"kind": self.kind, "model": self.spec, "model_type": self.model_type, "dtype": str(self.dtype)}

    def _inputs(self, **kw: Any) -> Dict[str, Any]:
        import torch

        inputs = self.processor(return_tensors="pt", **kw)
        return {k: (v.to(self.device, self.dtype) if torch.is_floating_point(v) else v.to(self.device))
                for k, v in inputs.items()}


class DetectorGrounder(_HFGrounder):
    """OWL-ViT / OWLv2 / Grounding DINO: the box of the best-scoring query for the phrase."""

    kind = "detector"

    def __init__(self, spec: str, model_type: str, runtime: Runtime) -> None:
        from transformers import AutoModelForZeroShotObjectDetection

        super().__init__(spec, model_type, runtime, AutoModelForZeroShotObjectDetection)
        self.family = DETECTOR_TYPES[model_type]

    def ground(self, images: List[np.ndarray], phrases: List[str], keys: List[str]) -> List[Grounding]:
        imgs = [np.ascontiguousarray(im) for im in images]
        if self.family == "owl":  # every image is resized to one square: one pass for the batch
            return self._ground(imgs, list(phrases))
        # Grounding DINO pads a batch to its largest image, which changes every padded image's
        # features: one pass per image size, so a sample's box never depends on its batch
        out: List[Any] = [None] * len(imgs)
        groups: Dict[Tuple[int, int], List[int]] = {}
        for i, im in enumerate(imgs):
            groups.setdefault(im.shape[:2], []).append(i)
        for idx in groups.values():
            for i, g in zip(idx, self._ground([imgs[i] for i in idx], [phrases[i] for i in idx])):
                out[i] = g
        return out

    def _ground(self, imgs: List[np.ndarray], phrases: List[str]) -> List[Grounding]:
        import torch

        if self.family == "owl":
            inputs = self._inputs(text=[[p] for p in phrases], images=imgs, truncation=True)
        else:  # Grounding DINO: lower-case phrases ending with "." (its training format)
            text = [p.strip().lower().rstrip(".") + "." for p in phrases]
            inputs = self._inputs(text=text, images=imgs, padding=True, truncation=True)
        with torch.inference_mode():
            out = self.model(**inputs)
        logits = out.logits.float()  # owl: (B, Q, 1); gdino: (B, Q, text tokens)
        boxes = out.pred_boxes.float()  # (B, Q, 4) cx, cy, w, h in [0, 1]
        if self.family == "owl":
            scores = torch.sigmoid(logits[..., 0])
        else:
            ids = inputs["input_ids"]
            tok = self.processor.tokenizer
            special = {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.convert_tokens_to_ids(".")}
            valid = torch.ones_like(ids, dtype=torch.bool)
            for s in special:
                if s is not None:
                    valid &= ids != s
            valid &= inputs["attention_mask"].bool()
            prob = torch.sigmoid(logits[..., : ids.shape[1]])
            prob = prob.masked_fill(~valid[:, None, :], 0.0)
            scores = prob.max(dim=-1).values
        res: List[Grounding] = []
        for b, im in enumerate(imgs):
            h, w = im.shape[:2]
            # OWLv2 pads to a square (bottom/right) before resizing: its boxes are relative to it
            sx, sy = (max(h, w), max(h, w)) if self.model_type == "owlv2" else (w, h)
            found = Grounding(None)
            for q in torch.argsort(scores[b], descending=True).tolist():  # the best query with a usable box
                cx, cy, bw, bh = (float(v) for v in boxes[b, q])
                box = _clip_box(((cx - bw / 2) * sx, (cy - bh / 2) * sy, (cx + bw / 2) * sx, (cy + bh / 2) * sy), h, w)
                if box is not None:
                    found = Grounding(box, float(scores[b, q]))
                    break
            res.append(found)
        return res


class ClipSegGrounder(_HFGrounder):
    """CLIPSeg: the heat map of the phrase; the box of its peak's component above ``threshold``."""

    kind = "clipseg"

    def __init__(self, spec: str, runtime: Runtime, threshold: float = 0.4) -> None:
        from transformers import CLIPSegForImageSegmentation

        super().__init__(spec, "clipseg", runtime, CLIPSegForImageSegmentation)
        self.threshold = float(threshold)

    def describe(self) -> Dict[str, Any]:
        return {**super().describe(), "threshold": self.threshold,
                "rule": "sigmoid heat map resized to the image; the connected component of heat >= min(threshold, "
                        "0.5 x peak) that holds the peak; its box"}

    def ground(self, images: List[np.ndarray], phrases: List[str], keys: List[str]) -> List[Grounding]:
        import cv2
        import torch

        imgs = [np.ascontiguousarray(im) for im in images]
        inputs = self._inputs(text=list(phrases), images=imgs, padding=True, truncation=True)
        with torch.inference_mode():
            logits = self.model(**inputs).logits.float()
        if logits.ndim == 2:  # a batch of one is squeezed by the model
            logits = logits[None]
        heats = torch.sigmoid(logits).cpu().numpy()
        res: List[Grounding] = []
        for im, heat in zip(imgs, heats):
            h, w = im.shape[:2]
            hm = cv2.resize(heat.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR).clip(0.0, 1.0)
            peak = float(hm.max())
            on = (hm >= min(self.threshold, 0.5 * peak)).astype(np.uint8)
            _, labels = cv2.connectedComponents(on)
            py, px = np.unravel_index(int(np.argmax(hm)), hm.shape)
            comp = labels == labels[py, px]
            ys, xs = np.nonzero(comp)
            box = _clip_box((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), h, w) if xs.size else None
            res.append(Grounding(box, peak, hm))
        return res


class BoxFileGrounder(Grounder):
    """Precomputed boxes: a JSON object ``{sample_id: [x0, y0, x1, y1]}`` in source pixels."""

    kind = "boxes"

    def __init__(self, path: str) -> None:
        p = Path(path).expanduser()
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ModelError(f"grounder boxes:{path}: cannot read the boxes file ({e})") from None
        if not isinstance(data, dict):
            raise ModelError(f"grounder boxes:{path}: expected a JSON object {{sample_id: [x0, y0, x1, y1]}}")
        self.path = str(p)
        self.boxes: Dict[str, Box] = {}
        for k, v in data.items():
            if not (isinstance(v, (list, tuple)) and len(v) == 4 and all(isinstance(x, (int, float)) for x in v)):
                raise ModelError(f"grounder boxes:{path}: the box of {k!r} is not [x0, y0, x1, y1]: {v!r}")
            self.boxes[str(k)] = tuple(float(x) for x in v)  # type: ignore[assignment]

    def describe(self) -> Dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "boxes": len(self.boxes)}

    def ground(self, images: List[np.ndarray], phrases: List[str], keys: List[str]) -> List[Grounding]:
        out = []
        for im, key in zip(images, keys):
            b = self.boxes.get(str(key))
            out.append(Grounding(_clip_box(b, im.shape[0], im.shape[1]) if b is not None else None, 1.0))
        return out


def load_grounder(spec: str, runtime: Runtime, clipseg_threshold: float = 0.4) -> Grounder:
    """The grounder of ``spec`` (see the module docstring); ``ModelError`` with one line when it is
    missing or of an unsupported kind."""
    spec = str(spec or "").strip()
    if spec.startswith("boxes:"):
        return BoxFileGrounder(spec[len("boxes:"):])
    from refcoco_edit.models import resolve_model_dir

    _, folder, _ = resolve_model_dir(spec, "grounder", runtime.local_files_only)
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"grounder {spec}: unreadable config.json ({e})") from None
    mt = str(cfg.get("model_type", "")) if isinstance(cfg, dict) else ""
    if mt in DETECTOR_TYPES:
        return DetectorGrounder(spec, mt, runtime)
    if mt == "clipseg":
        return ClipSegGrounder(spec, runtime, clipseg_threshold)
    raise ModelError(f"grounder {spec}: model_type is {mt!r}; expected one of {sorted(DETECTOR_TYPES) + ['clipseg']} "
                     "(OWL-ViT, OWLv2, Grounding DINO or CLIPSeg), or boxes:FILE.json")
