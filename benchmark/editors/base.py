"""The Editor contract: what an image editor under test receives and must return.

An editor is a small class with one list-in/list-out method (the habit of lm-evaluation-harness'
``LM``)::

    class MyEditor(Editor):
        name = "my-editor"
        protocol = frozenset({"gt_mask"})        # what it may see beyond (image, prompt, seed)
        batch_size = 4

        def load(self):                          # heavy work (weights) happens here, once, lazily
            self.pipe = ...

        def edit(self, images, prompts, seeds, extras):
            return [self.pipe(img, p, s, e["gt_mask"]) for img, p, s, e in zip(...)]

* ``images``: HxWx3 ``uint8`` RGB arrays (the source photos, at their native size; read-only).
* ``prompts``: the full instructions ``P`` (referring part + edit part).
* ``seeds``: one int in ``[0, 2**31 - 1)`` per sample, derived from (run seed, sample_id).
* ``extras``: one dict per sample. It always holds ``sample_id`` (an opaque key, for caching and
  for looking up precomputed outputs). Every other key is present only when the editor declares
  it in ``protocol`` (see ``PROTOCOL_KEYS``); the harness never passes undeclared information,
  and the report records each editor's protocol next to its scores.

``edit`` returns one item per input, in order: an ``HxWx3 uint8`` array of the source's size,
or an ``EditFailure`` for a sample it could not edit (the run records it and goes on). The
harness checks every output (``check_output``): a wrong size, dtype, channel count, NaN or
infinity is a per-sample failure with a reason code, never silently fixed. Floating outputs are
accepted only when finite and within [0, 1] (they are converted with ``round(255 * x)``).

An editor that also predicts *where* the referred object is (ReferDiffusion's M_hat) sets
``returns_mask = True`` and returns ``EditOutput(image, mask)``: ``mask`` is HxW, bool or
floating in [0, 1] (a probability), at the source's size. The harness checks it
(``check_mask``), caches it next to the output and reports ``mask_iou`` against the source mask
M. The mask is the editor's answer to "which object did the sentence refer to", so a missing or
malformed mask fails the sample (``bad_mask``) like a malformed image.
"""
from __future__ import annotations

import abc
from typing import Any, Dict, FrozenSet, List, Optional, Tuple, Union

import numpy as np

from refcoco_edit.reasons import reasons

__all__ = [
    "PROTOCOL_KEYS", "FAILURE_REASONS", "Editor", "EditFailure", "EditOutput", "check_output", "check_mask",
    "split_output", "check_protocol",
]

# What an editor may declare in ``protocol``: extra inputs beyond (image, prompt, seed).
PROTOCOL_KEYS: Dict[str, str] = {
    "gt_mask": "the ground-truth edited area M_e (bool HxW array), e.g. for Blended Latent Diffusion",
    "object_mask": "the referred object's mask M (bool HxW array)",
    "edit_phrase": "the edit part of the prompt, prompt[edit_span] (str)",
    "referring_phrase": "the referring part of the prompt, prompt[referring_span] (str)",
    "edit_type": "the edit type: replace | remove | attribute | add (str)",
    "reference": "the reference edited image I_e (HxWx3 uint8): an oracle, not a real editor",
    "reference_object": "the reference-based track's exemplar: {'image': HxWx3 uint8 photo of the object to put "
                        "in, 'mask': HxW bool mask of that object in it} (reference-based exports only)",
}

# Reason codes of per-sample editor failures (stable strings: results.json counts them); the one
# table of every code is refcoco_edit.reasons.REASONS.
FAILURE_REASONS: Dict[str, str] = reasons("edit")


class EditFailure:
    """A per-sample failure an editor returns in place of an image (it is not raised)."""

    __slots__ = ("reason", "message")

    def __init__(self, reason: str, message: str = ""):
        if reason not in FAILURE_REASONS:
            raise ValueError(f"unknown failure reason {reason!r}; use one of {sorted(FAILURE_REASONS)}")
        self.reason = reason
        self.message = str(message)

    def __repr__(self) -> str:
        return f"EditFailure({self.reason!r}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EditFailure) and (self.reason, self.message) == (other.reason, other.message)


class EditOutput:
    """An edited image plus the editor's predicted mask of the referred object (``returns_mask``).

    ``image``: what ``edit`` would otherwise return (HxWx3 array or PIL image). ``mask``: HxW, bool
    or floating in [0, 1]; ``mask >= 0.5`` is the predicted region."""

    __slots__ = ("image", "mask")

    def __init__(self, image: Any, mask: Any = None):
        self.image = image
        self.mask = mask

    def __repr__(self) -> str:
        shape = getattr(self.mask, "shape", None)
        return f"EditOutput(image={type(self.image).__name__}, mask={shape})"


def split_output(out: Any) -> Tuple[Any, Any]:
    """``(image_or_failure, mask_or_None)`` of one item returned by ``edit``."""
    if isinstance(out, EditOutput):
        return out.image, out.mask
    return out, None


def check_protocol(protocol: Any, where: str = "editor") -> FrozenSet[str]:
    """A protocol declaration as a frozenset of known keys (ValueError on an unknown key)."""
    keys = frozenset(protocol or ())
    unknown = sorted(keys - set(PROTOCOL_KEYS))
    if unknown:
        raise ValueError(f"{where} declares unknown protocol input(s) {unknown}; known: {sorted(PROTOCOL_KEYS)}")
    return keys


class Editor(abc.ABC):
    """An image editor under test. Subclasses set ``name``/``protocol`` and implement ``edit``.

    Constructor keyword arguments are the editor's configuration (``--editor-arg key=value``).
    Declare them as explicit keyword parameters of your ``__init__`` (so a misspelt option is a
    TypeError, reported as bad usage) and pass them on with ``super().__init__(**options)``: they
    must be JSON-serialisable, are recorded in results.json and fingerprint the output cache. Nothing heavy happens in ``__init__``: weights load in ``load()``, which the harness
    calls once, only when some sample actually needs editing (a fully cached run loads nothing).
    """

    name: str = ""
    protocol: FrozenSet[str] = frozenset()
    batch_size: int = 1
    returns_mask: bool = False
    """True: ``edit`` returns ``EditOutput(image, mask)`` with the predicted mask of the referred
    object; the harness caches it and reports ``mask_iou``."""
    version: str = "1"
    """Bump when outputs change for the same configuration: it invalidates cached outputs."""

    def __init__(self, **config: Any):
        self.config: Dict[str, Any] = dict(config)
        self._loaded = False

    def load(self) -> None:
        """Load weights / start resources. Called once before the first ``edit``."""

    def ensure_loaded(self) -> None:
        if not self._loaded:
            self.load()
            self._loaded = True

    @abc.abstractmethod
    def edit(self, images: List[np.ndarray], prompts: List[str], seeds: List[int],
             extras: List[Dict[str, Any]]) -> List[Union[np.ndarray, EditFailure]]:
        """Edit a batch; one output (array or EditFailure) per input, in order."""

    def describe(self) -> Dict[str, Any]:
        """What results.json records about this editor."""
        cls = type(self)
        return {
            "name": self.name or cls.__name__,
            "class": f"{cls.__module__}:{cls.__qualname__}",
            "protocol": sorted(check_protocol(self.protocol, cls.__name__)),
            "config": {k: self.config[k] for k in sorted(self.config)},
            "batch_size": int(self.batch_size),
            "version": str(self.version),
            "returns_mask": bool(self.returns_mask),
        }


def _describe_array(a: np.ndarray) -> str:
    return f"shape {tuple(a.shape)}, dtype {a.dtype}"


def check_output(out: Any, hw: Tuple[int, int], resize: bool = False
                 ) -> Tuple[Optional[np.ndarray], Optional[EditFailure], bool]:
    """Validate one editor output against its source size ``hw`` = (h, w).

    Returns ``(array, None, resized)`` with an HxWx3 uint8 array, or ``(None, failure, False)``.
    With ``resize`` an output of the wrong size is resized (PIL bicubic) to the source size and
    ``resized`` is True; every other defect is a failure whatever ``resize`` says.
    """
    if isinstance(out, EditFailure):
        return None, out, False
    if hasattr(out, "mode") and hasattr(out, "size") and not isinstance(out, np.ndarray):
        # a PIL image: take its pixels as they are; channels are checked below
        out = np.asarray(out)
    if not isinstance(out, np.ndarray):
        return None, EditFailure("bad_type", f"expected a numpy array, got {type(out).__name__}"), False
    a = out
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            return None, EditFailure("non_finite", f"output has NaN or infinite values ({_describe_array(a)})"), False
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo < 0.0 or hi > 1.0:
            return None, EditFailure("bad_range", f"floating output must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]"), False
    elif a.dtype != np.uint8:
        return None, EditFailure("bad_dtype", f"expected uint8 or floating point in [0, 1], got {_describe_array(a)}"), False
    if a.ndim != 3 or a.shape[2] != 3:
        return None, EditFailure("bad_channels", f"expected HxWx3 RGB, got {_describe_array(a)}"), False
    if a.dtype.kind == "f":
        a = np.round(a.astype(np.float64) * 255.0).astype(np.uint8)
    resized = False
    if (a.shape[0], a.shape[1]) != (int(hw[0]), int(hw[1])):
        if not resize:
            return None, EditFailure(
                "wrong_size", f"output is {a.shape[0]}x{a.shape[1]} (h x w), the source is {hw[0]}x{hw[1]}"), False
        from PIL import Image

        a = np.asarray(Image.fromarray(np.ascontiguousarray(a)).resize((int(hw[1]), int(hw[0])), Image.BICUBIC))
        resized = True
    return np.ascontiguousarray(a), None, resized


def check_mask(mask: Any, hw: Tuple[int, int], resize: bool = False
               ) -> Tuple[Optional[np.ndarray], Optional[EditFailure]]:
    """Validate a predicted mask against the source size ``hw``; ``(levels, None)`` with an HxW
    uint8 array of ``round(255 * p)`` (what is cached as a grey PNG: ``p >= 0.5`` <=> ``levels >= 128``,
    exactly), or ``(None, failure)``. With ``resize`` a mask of another size is resized bilinearly,
    as outputs are."""
    if mask is None:
        return None, EditFailure("bad_mask", "the editor declares returns_mask but gave no mask for this sample")
    if hasattr(mask, "mode") and hasattr(mask, "size") and not isinstance(mask, np.ndarray):
        mask = np.asarray(mask)
    if not isinstance(mask, np.ndarray):
        return None, EditFailure("bad_mask", f"expected a numpy mask, got {type(mask).__name__}")
    m = mask
    if m.ndim == 3 and m.shape[2] == 1:
        m = m[:, :, 0]
    if m.ndim != 2:
        return None, EditFailure("bad_mask", f"expected an HxW mask, got {_describe_array(m)}")
    if m.dtype == bool:
        p = m.astype(np.float64)
    elif m.dtype.kind == "f":
        if not np.isfinite(m).all():
            return None, EditFailure("bad_mask", f"mask has NaN or infinite values ({_describe_array(m)})")
        p = m.astype(np.float64)
    elif m.dtype.kind in "iu":
        p = m.astype(np.float64)  # 0/1 integer masks
    else:
        return None, EditFailure("bad_mask", f"expected a bool or floating mask, got {_describe_array(m)}")
    lo, hi = (float(p.min()), float(p.max())) if p.size else (0.0, 0.0)
    if lo < 0.0 or hi > 1.0:
        return None, EditFailure("bad_mask", f"mask values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]")
    if (p.shape[0], p.shape[1]) != (int(hw[0]), int(hw[1])):
        if not resize:
            return None, EditFailure(
                "bad_mask", f"mask is {p.shape[0]}x{p.shape[1]} (h x w), the source is {hw[0]}x{hw[1]}")
        from PIL import Image

        p = np.asarray(Image.fromarray(p.astype(np.float32)).resize((int(hw[1]), int(hw[0])), Image.BILINEAR),
                       dtype=np.float64).clip(0.0, 1.0)
    return np.ascontiguousarray(np.round(p * 255.0).astype(np.uint8)), None
