"""The ground-truth pipeline contract, its output record and the lazy pipeline registry.

A ground-truth (GT) pipeline turns one planned edit (source image, source mask, prompt, edit
type/target, seed, optional exemplar) into a candidate reference image plus its edit mask M_e.
Contract every pipeline keeps:

* the output image has the source's size, and equals the source *exactly* outside ``edit_mask``
  (pipelines paste back through M_e, see ``refcoco_edit.pipelines.masks.paste_back``);
* the output differs from the source somewhere inside ``edit_mask``;
* the same request (same seed) gives the same bytes;
* a bad request raises ``PipelineError`` with a quarantine reason code; the caller (the shard
  boundary) records it and goes on.

Pipelines are listed in ``PIPELINES`` as lazy ``"module:Class"`` strings so that naming a
diffusion pipeline never imports torch until it is built.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

import numpy as np

from refcoco_edit.errors import ReasonError
from refcoco_edit.registry import Registry, UnknownNameError
from refcoco_edit.suggest import did_you_mean


class PipelineError(ReasonError, RuntimeError):
    """A pipeline could not produce a candidate. ``reason`` is a quarantine reason code."""


@dataclass
class EditRequest:
    """One planned edit, in the upright RGB frame of the source image."""

    sample_id: str
    edit_type: str  # replace | remove | attribute | add
    image: np.ndarray  # HxWx3 uint8 RGB
    mask: np.ndarray  # HxW bool: the referred (source) object
    bbox: Sequence[float]  # COCO [x, y, w, h] of the source object
    prompt: str
    edit_phrase: str  # prompt[edit_span]
    edit_target: str  # the target category / attribute value ("giraffe", "red", "wooden")
    seed: int
    category: str = ""  # the source object's category
    exemplar: Optional[np.ndarray] = None  # hxwx4 uint8 RGBA cut-out of a target-category instance
    distractor_masks: List[np.ndarray] = field(default_factory=list)


@dataclass
class PipelineOutput:
    """A candidate reference: the edited image, its edit mask M_e and what produced it."""

    image: np.ndarray  # HxWx3 uint8, equal to the source outside edit_mask
    edit_mask: np.ndarray  # HxW bool (M_e)
    params: Dict[str, Any] = field(default_factory=dict)
    exemplar: Optional[np.ndarray] = None  # the exemplar actually used (RGBA), if any


class GTPipeline(ABC):
    """Base class of ground-truth pipelines (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    edit_types: ClassVar[Tuple[str, ...]] = ()
    needs_exemplar: ClassVar[bool] = False

    def check_inputs(self, request: EditRequest) -> None:
        """Raise PipelineError with a precise reason when a request cannot be served."""
        if request.edit_type not in self.edit_types:
            raise PipelineError("pipeline_error", f"{self.name} does not do {request.edit_type!r} edits")
        img, mask = request.image, request.mask
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise PipelineError("pipeline_error", f"image must be HxWx3 uint8, got {img.shape} {img.dtype}")
        if mask.shape != img.shape[:2]:
            raise PipelineError("bad_rle", f"mask {mask.shape} does not match image {img.shape[:2]}")
        if not mask.any():
            raise PipelineError("empty_mask", "the source mask is empty")
        if self.needs_exemplar and request.exemplar is None:
            raise PipelineError("no_exemplar", f"{self.name} needs an exemplar of {request.edit_target!r}")

    @abstractmethod
    def generate(self, request: EditRequest) -> PipelineOutput:
        """Produce one candidate for one request."""

    def __call__(self, requests: Sequence[EditRequest]) -> List[PipelineOutput]:
        """Batched entry point (list in, list out). The default runs ``generate`` per request;
        GPU pipelines override it to batch."""
        outs = []
        for r in requests:
            self.check_inputs(r)
            outs.append(self.generate(r))
        return outs


# name -> "module:Class"; imported only when get_pipeline builds one
PIPELINES: Registry[Any] = Registry("pipeline", {
    "classical-remove": "refcoco_edit.pipelines.classical:InpaintRemoval",
    "classical-replace": "refcoco_edit.pipelines.classical:ExemplarComposite",
    "classical-attribute": "refcoco_edit.pipelines.classical:Recolor",
    "pbe-replace": "refcoco_edit.pipelines.paint_by_example:PaintByExampleReplace",
    "bld-replace": "refcoco_edit.pipelines.blended_latent:BlendedLatentReplace",
    "bld-attribute": "refcoco_edit.pipelines.blended_latent:BlendedLatentAttribute",
    "sd-inpaint-remove": "refcoco_edit.pipelines.inpaint:InpaintRemove",
})

# backend -> edit type -> pipeline names producing candidates for it
BACKENDS: Dict[str, Dict[str, List[str]]] = {
    "classical": {
        "remove": ["classical-remove"],
        "replace": ["classical-replace"],
        "attribute": ["classical-attribute"],
    },
    # diffusers pipelines (torch, model weights): `refcoco-edit build --backend diffusion`
    "diffusion": {
        "remove": ["sd-inpaint-remove"],
        "replace": ["pbe-replace", "bld-replace"],
        "attribute": ["bld-attribute"],
    },
}


def get_pipeline(name: str, **kwargs: Any) -> GTPipeline:
    """Build a registered pipeline by name (``UnknownNameError`` with close matches for typos)."""
    return PIPELINES.get(name)(**kwargs)


def pipelines_for(backend: str, edit_type: str) -> List[str]:
    """The pipelines of ``backend`` that make candidates for ``edit_type`` (may be empty)."""
    if backend not in BACKENDS:
        raise UnknownNameError(f"unknown backend {backend!r}{did_you_mean(backend, BACKENDS)}", backend)
    return list(BACKENDS[backend].get(edit_type, []))
