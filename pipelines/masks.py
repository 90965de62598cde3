"""Edit masks M_e and exact paste-back through them (CPU, numpy + OpenCV).

Every ground-truth pipeline ends the same way:

1. ``edit_mask``: M_e = dilate(source mask ∪ changed region), so that M_e covers the object, what
   replaced it, and a margin for the seam;
2. ``paste_back``: the generated image is blended into the source through a feathered alpha that is
   exactly 0 outside M_e, so the output equals the source bit for bit outside M_e (the contract in
   ``refcoco_edit.pipelines.base``; the background metrics such as L2_bg rely on it);
3. ``check_output``: the contract is verified (size, exact background, a real change inside M_e)
   and violations become ``PipelineError`` with a quarantine reason code.

Helpers of the diffusion pipelines (added with them; torch is imported only inside the SAM code):

4. regions: ``grow_box`` / ``box_mask`` give the edit *region* of a replacement (a grown box around
   the source, because the new object's shape may differ from the old one), ``crop_window`` the
   square context window a diffusion model works on;
5. ``replacement_edit_mask``: M_e of a replacement = dilate(source mask ∪ new object), the new
   object segmented by SAM with a box prompt (``SamBoxSegmenter``) or, without SAM, the pixels
   that really changed inside the region;
6. ``load_sam``: segment-anything checkpoints read with ``torch.load(weights_only=True)`` (never
   unpickling code) into the architecture of ``--sam-type`` (vit_b | vit_l | vit_h), or a custom
   architecture described by a JSON file beside the checkpoint; a checkpoint whose tensors do not
   fit the architecture is refused with a one-line ``SamCheckpointError``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from refcoco_edit.pipelines.base import PipelineError

__all__ = [
    "dilate", "erode", "changed_region", "edit_mask", "feather_alpha", "paste_back", "check_output",
    "mask_box", "grow_box", "box_mask", "crop_window", "replacement_edit_mask",
    "SAM_ARCHS", "SamCheckpointError", "load_sam", "SamBoxSegmenter",
]

Box = Tuple[int, int, int, int]  # x0, y0, x1, y1 (x1/y1 exclusive)


def _ellipse(px: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))


def _as_u8(mask: np.ndarray) -> np.ndarray:
    return (np.asarray(mask) > 0).astype(np.uint8)


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    """Grow a binary mask by ``px`` pixels with an elliptical (round) kernel; ``px<=0`` copies.

    Round rather than square so the margin is the same in every direction.
    """
    px = int(px)
    if px <= 0:
        return np.asarray(mask).astype(bool, copy=True)
    return cv2.dilate(_as_u8(mask), _ellipse(px)).astype(bool)


def erode(mask: np.ndarray, px: int) -> np.ndarray:
    """Shrink a binary mask by ``px`` pixels (elliptical kernel); ``px<=0`` copies.

    Pixels beyond the image border count as inside, so a mask touching the border is not eaten
    away from that side.
    """
    px = int(px)
    if px <= 0:
        return np.asarray(mask).astype(bool, copy=True)
    return cv2.erode(_as_u8(mask), _ellipse(px), borderType=cv2.BORDER_REPLICATE).astype(bool)


def changed_region(source: np.ndarray, edited: np.ndarray, threshold: float = 12.0) -> np.ndarray:
    """Pixels whose largest per-channel absolute difference exceeds ``threshold``.

    Isolated specks (JPEG-like noise, single-pixel drift of a generator) are removed with a 3x3
    morphological opening so they do not inflate M_e.
    """
    if source.shape != edited.shape:
        raise ValueError(f"source {source.shape} and edited {edited.shape} differ in shape")
    diff = np.abs(source.astype(np.int16) - edited.astype(np.int16))
    if diff.ndim == 3:
        diff = diff.max(axis=2)
    changed = (diff > threshold).astype(np.uint8)
    changed = cv2.morphologyEx(changed, cv2.MORPH_OPEN, _ellipse(1))
    return changed.astype(bool)


def edit_mask(source_mask: np.ndarray, changed: Optional[np.ndarray] = None, dilate_px: int = 8) -> np.ndarray:
    """M_e = dilate(source_mask ∪ changed, dilate_px): the object, what replaced it, and a seam margin."""
    m = np.asarray(source_mask).astype(bool)
    if changed is not None:
        if changed.shape != m.shape:
            raise ValueError(f"changed {changed.shape} and source_mask {m.shape} differ in shape")
        m = m | changed.astype(bool)
    return dilate(m, dilate_px)


def feather_alpha(edit_mask: np.ndarray, feather_px: int) -> np.ndarray:
    """A soft float32 alpha in [0, 1]: exactly 0 outside ``edit_mask``, rising to 1 inside it.

    The ramp is the (Euclidean) distance to the nearest pixel outside the mask divided by
    ``feather_px``, so the seam is soft but lies entirely *inside* M_e: nothing outside changes.
    The image border does not count as "outside", so masks touching it stay at 1 there.
    """
    m = _as_u8(edit_mask)
    if feather_px <= 0 or not m.any():
        return m.astype(np.float32)
    if m.all():
        return np.ones(m.shape, np.float32)
    dist = cv2.distanceTransform(m, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    alpha = np.minimum(dist / float(feather_px), 1.0).astype(np.float32)
    alpha[m == 0] = 0.0
    return alpha


def paste_back(source: np.ndarray, edited: np.ndarray, edit_mask: np.ndarray, feather_px: int = 4) -> np.ndarray:
    """Blend ``edited`` into ``source`` through the feathered M_e; uint8 output.

    The result equals ``source`` bit-exactly wherever ``edit_mask`` is False (enforced explicitly,
    not left to floating point), which is what makes background metrics meaningful.
    """
    if source.shape != edited.shape:
        raise ValueError(f"source {source.shape} and edited {edited.shape} differ in shape")
    if edit_mask.shape != source.shape[:2]:
        raise ValueError(f"edit_mask {edit_mask.shape} does not match image {source.shape[:2]}")
    m = np.asarray(edit_mask).astype(bool)
    alpha = feather_alpha(m, feather_px)
    if source.ndim == 3:
        alpha = alpha[..., None]
    src = source.astype(np.float32)
    blended = src + (edited.astype(np.float32) - src) * alpha
    out = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    keep = ~m
    out[keep] = source[keep]
    return out


def check_output(
    source: np.ndarray,
    output: np.ndarray,
    edit_mask: np.ndarray,
    min_changed_fraction: float = 0.02,
    min_mean_diff: float = 2.0,
    pixel_threshold: float = 8.0,
) -> Dict[str, float]:
    """Verify the pipeline contract and return change statistics.

    Raises ``PipelineError("pipeline_error")`` when the size/dtype differs or any pixel outside M_e
    differs from the source; ``PipelineError("no_change")`` when, inside M_e, fewer than
    ``min_changed_fraction`` of the pixels changed by more than ``pixel_threshold`` (max over
    channels) or the mean absolute difference is below ``min_mean_diff`` — i.e. nothing
    meaningful was edited. Returns ``{"changed_fraction", "mean_abs_diff_inside"}``.
    """
    if output.shape != source.shape or output.dtype != source.dtype:
        raise PipelineError(
            "pipeline_error", f"output {output.shape} {output.dtype} differs from source {source.shape} {source.dtype}"
        )
    m = np.asarray(edit_mask).astype(bool)
    if m.shape != source.shape[:2]:
        raise PipelineError("pipeline_error", f"edit_mask {m.shape} does not match image {source.shape[:2]}")
    if not m.any():
        raise PipelineError("no_change", "the edit mask is empty")
    diff = np.abs(source.astype(np.int16) - output.astype(np.int16))
    per_px = diff.max(axis=2) if diff.ndim == 3 else diff
    outside = int(np.count_nonzero(per_px[~m]))
    if outside:
        raise PipelineError("pipeline_error", f"{outside} pixels outside the edit mask differ from the source")
    inside = per_px[m]
    changed_fraction = float(np.count_nonzero(inside > pixel_threshold)) / inside.size
    mean_diff = float(diff[m].mean())
    stats = {"changed_fraction": changed_fraction, "mean_abs_diff_inside": mean_diff}
    if changed_fraction < min_changed_fraction or mean_diff < min_mean_diff:
        raise PipelineError(
            "no_change",
            f"no meaningful change inside the edit mask (changed fraction {changed_fraction:.4f} < "
            f"{min_changed_fraction} or mean abs diff {mean_diff:.2f} < {min_mean_diff})",
        )
    return stats


# ----------------------------------------------------------------------------------------------
# regions of the diffusion pipelines
# ----------------------------------------------------------------------------------------------
def mask_box(mask: np.ndarray) -> Box:
    """Tight box (x0, y0, x1, y1), x1/y1 exclusive, of a non-empty boolean mask."""
    m = np.asarray(mask).astype(bool)
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        raise PipelineError("empty_mask", "the mask is empty")
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def grow_box(box: Sequence[int], growth: float, shape: Sequence[int], min_px: int = 0) -> Box:
    """Grow a box by ``growth`` times its width/height on each side (at least ``min_px``),
    clipped to an image of ``shape`` (h, w, ...)."""
    h, w = int(shape[0]), int(shape[1])
    x0, y0, x1, y1 = (int(v) for v in box)
    gx = max(int(min_px), int(round(float(growth) * (x1 - x0))))
    gy = max(int(min_px), int(round(float(growth) * (y1 - y0))))
    return max(0, x0 - gx), max(0, y0 - gy), min(w, x1 + gx), min(h, y1 + gy)


def box_mask(box: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """A boolean HxW mask that is True inside ``box``."""
    x0, y0, x1, y1 = (int(v) for v in box)
    m = np.zeros((int(shape[0]), int(shape[1])), bool)
    m[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = True
    return m


def crop_window(region: Sequence[int], shape: Sequence[int], context: float = 1.5, min_size: int = 0) -> Box:
    """A square window around ``region`` with ``context`` times its longer side (at least
    ``min_size``), shifted to stay inside the image and clipped where the image is smaller.

    Diffusion models work on this window resized to their resolution: the object keeps a useful
    size in the model's input whatever the photo's size, and there is context around it.
    """
    h, w = int(shape[0]), int(shape[1])
    x0, y0, x1, y1 = (int(v) for v in region)
    side = int(round(max(x1 - x0, y1 - y0) * max(float(context), 1.0)))
    side = max(side, int(min_size), 1)
    side_x, side_y = min(side, w), min(side, h)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    wx0 = int(round(cx - side_x / 2.0))
    wy0 = int(round(cy - side_y / 2.0))
    wx0 = min(max(0, wx0), w - side_x)
    wy0 = min(max(0, wy0), h - side_y)
    return wx0, wy0, wx0 + side_x, wy0 + side_y


def replacement_edit_mask(
    source_mask: np.ndarray,
    region: np.ndarray,
    source: Optional[np.ndarray] = None,
    generated: Optional[np.ndarray] = None,
    new_object: Optional[np.ndarray] = None,
    dilate_px: int = 8,
    threshold: float = 12.0,
    changed: Optional[np.ndarray] = None,
) -> Tuple[np.ndarray, str]:
    """M_e of a replacement and how the new object was found.

    The new object is ``new_object`` (a SAM segmentation) restricted to the edit ``region`` when
    it is given and not empty; otherwise the pixels of the region that really changed between
    ``source`` and ``generated``. M_e = dilate(source_mask ∪ new object, dilate_px). Returns
    ``(M_e, method)`` with method ``"sam"``, ``"diff"`` or ``"source"`` (nothing found: M_e is
    the dilated source mask). ``changed`` may be given precomputed (``changed_region``) instead of
    ``source``/``generated``.
    """
    region = np.asarray(region).astype(bool)
    obj = None
    method = "source"
    if new_object is not None:
        cand = np.asarray(new_object).astype(bool) & region
        if cand.any():
            obj, method = cand, "sam"
    if obj is None and changed is None and source is not None and generated is not None:
        changed = changed_region(source, generated, threshold)
    if obj is None and changed is not None:
        cand = np.asarray(changed).astype(bool) & region
        if cand.any():
            obj, method = cand, "diff"
    return edit_mask(source_mask, obj, dilate_px), method


# ----------------------------------------------------------------------------------------------
# SAM (segment-anything): safe checkpoint loading and box-prompted segmentation
# ----------------------------------------------------------------------------------------------
# The published architectures (segment_anything.build_sam); ``img_size`` etc. are shared.
_SAM_COMMON: Dict[str, Any] = {
    "img_size": 1024, "patch_size": 16, "window_size": 14, "prompt_embed_dim": 256, "mlp_ratio": 4.0,
    "decoder_depth": 2, "decoder_mlp_dim": 2048, "decoder_heads": 8, "iou_head_hidden_dim": 256,
    "mask_in_chans": 16,
}
SAM_ARCHS: Dict[str, Dict[str, Any]] = {
    "vit_b": {**_SAM_COMMON, "embed_dim": 768, "depth": 12, "num_heads": 12, "global_attn_indexes": [2, 5, 8, 11]},
    "vit_l": {**_SAM_COMMON, "embed_dim": 1024, "depth": 24, "num_heads": 16, "global_attn_indexes": [5, 11, 17, 23]},
    "vit_h": {**_SAM_COMMON, "embed_dim": 1280, "depth": 32, "num_heads": 16, "global_attn_indexes": [7, 15, 23, 31]},
}
SAM_DEFAULT_CHECKPOINTS = {"vit_b": "sam_vit_b_01ec64.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_h": "sam_vit_h_4b8939.pth"}


class SamCheckpointError(ValueError):
    """A SAM checkpoint is missing, unreadable, or does not fit the declared architecture."""


def sam_arch_file(checkpoint: Union[str, Path]) -> Path:
    """The optional architecture file of a checkpoint: ``<checkpoint without suffix>.json``."""
    return Path(checkpoint).with_suffix(".json")


def sam_arch(checkpoint: Union[str, Path], sam_type: str) -> Tuple[Dict[str, Any], str]:
    """The architecture to build for ``checkpoint``: its JSON file's ``sam_arch`` if there is one
    (a distilled or test-sized SAM), else the preset of ``sam_type``. Returns (arch, name)."""
    side = sam_arch_file(checkpoint)
    if side.is_file():
        try:
            doc = json.loads(side.read_text())
            arch = {**_SAM_COMMON, **doc["sam_arch"]}
        except (ValueError, KeyError, TypeError) as e:
            raise SamCheckpointError(f"SAM architecture file {side} is not valid ({e})") from None
        return arch, f"custom ({side.name})"
    if sam_type not in SAM_ARCHS:
        raise SamCheckpointError(f"unknown --sam-type {sam_type!r}; choose from {', '.join(SAM_ARCHS)}")
    return dict(SAM_ARCHS[sam_type]), sam_type


def build_sam(arch: Dict[str, Any]) -> Any:
    """A randomly initialised ``segment_anything.modeling.Sam`` of the given architecture."""
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    a = {**_SAM_COMMON, **arch}
    emb = int(a["img_size"]) // int(a["patch_size"])
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=int(a["depth"]), embed_dim=int(a["embed_dim"]), img_size=int(a["img_size"]),
            mlp_ratio=float(a["mlp_ratio"]), norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=int(a["num_heads"]), patch_size=int(a["patch_size"]), qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=list(a["global_attn_indexes"]), window_size=int(a["window_size"]),
            out_chans=int(a["prompt_embed_dim"]),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=int(a["prompt_embed_dim"]), image_embedding_size=(emb, emb),
            input_image_size=(int(a["img_size"]), int(a["img_size"])), mask_in_chans=int(a["mask_in_chans"]),
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=int(a["decoder_depth"]), embedding_dim=int(a["prompt_embed_dim"]),
                                          mlp_dim=int(a["decoder_mlp_dim"]), num_heads=int(a["decoder_heads"])),
            transformer_dim=int(a["prompt_embed_dim"]), iou_head_depth=3,
            iou_head_hidden_dim=int(a["iou_head_hidden_dim"]),
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def read_sam_state(checkpoint: Union[str, Path]) -> Dict[str, Any]:
    """The tensors of a SAM checkpoint, read with ``torch.load(weights_only=True)``: a pickle that
    holds anything but tensors and plain containers is refused, never executed."""
    import pickle

    import torch

    path = Path(checkpoint)
    if not path.is_file():
        raise SamCheckpointError(f"SAM checkpoint {path} does not exist")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SamCheckpointError(f"SAM checkpoint {path} cannot be read safely: {first}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not any(str(k).startswith("image_encoder.") for k in state):
        raise SamCheckpointError(f"{path} is not a segment-anything checkpoint (no image_encoder.* tensors)")
    return state


def load_sam(checkpoint: Union[str, Path], sam_type: str = "vit_h", device: Any = "cpu") -> Any:
    """Build the SAM architecture of ``sam_type`` (or the checkpoint's JSON file) and load the
    checkpoint into it, strictly: every tensor must be there with its shape."""
    state = read_sam_state(checkpoint)
    arch, name = sam_arch(checkpoint, sam_type)
    sam = build_sam(arch)
    expected = sam.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        detail = []
        if wrong:
            k, got, want = wrong[0]
            detail.append(f"{k} has shape {got}, {name} expects {want}")
        if missing:
            detail.append(f"{len(missing)} tensors missing (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise SamCheckpointError(f"SAM checkpoint {checkpoint} does not fit --sam-type {name}: " + "; ".join(detail))
    sam.load_state_dict(state, strict=True)
    return sam.to(device).eval()


class SamBoxSegmenter:
    """Segment the object inside a box with SAM (``SamPredictor``: resize to the encoder's size,
    one image embedding, one box prompt, the single best mask)."""

    def __init__(self, sam: Any, checkpoint: str = "", sam_type: str = "") -> None:
        from segment_anything import SamPredictor

        self.sam = sam
        self.predictor = SamPredictor(sam)
        self.checkpoint = str(checkpoint)
        self.sam_type = sam_type

    @classmethod
    def from_checkpoint(cls, checkpoint: Union[str, Path], sam_type: str = "vit_h", device: Any = "cpu") -> "SamBoxSegmenter":
        return cls(load_sam(checkpoint, sam_type, device), str(checkpoint), sam_type)

    def segment(self, image: np.ndarray, box: Sequence[int]) -> np.ndarray:
        """HxW bool mask of the object in ``box`` (x0, y0, x1, y1) of an RGB uint8 image."""
        import torch

        with torch.inference_mode():
            self.predictor.set_image(np.ascontiguousarray(image), image_format="RGB")
            masks, _, _ = self.predictor.predict(box=np.asarray(box, dtype=np.float32), multimask_output=False)
            self.predictor.reset_image()
        return np.asarray(masks[0]).astype(bool)
