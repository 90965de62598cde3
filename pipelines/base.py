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

A pipeline also describes itself, so that the build has no switch on pipeline names (adding a
pipeline is its file plus its line in ``PIPELINES`` and ``BACKENDS``):

* ``model_needs(settings)``: the models it loads, each a ``ModelNeed`` (the constructor
  parameter, the build setting that names the model, its kind for ``check_model``);
* ``build_settings``: constructor parameter -> the build setting that gives its value;
* ``uses``: constructor parameters filled from resources the build shares (``RESOURCES``:
  ``runtime``, ``sam``);
* ``parameters()``: its own settings section, the other constructor parameters and defaults;
* ``from_build_config(settings, resources, params)``: the pipeline built from all of these.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
import inspect
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from refcoco_edit.errors import InputError, ReasonError
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
    # HxW bool masks of every other annotated object of the image (the distractors included);
    # None: unknown (data written before they were recorded)
    other_masks: Optional[List[np.ndarray]] = None
    # the categories of ``other_masks``, in order (None: unknown); ``carried`` reads them
    other_categories: Optional[List[str]] = None
    # False: the pipeline's canonical edit (a sample's first candidate); True: a seed-dependent
    # variation of it (``variation_rng``), so that candidates 1, 2, ... of a sample (and re-drawn
    # duplicates) are other images even where the canonical edit does not depend on the seed
    vary: bool = False


VARIATION_STREAM = 0x76617279  # "vary": the random stream of a request's variation, apart from its own


def variation_rng(request: EditRequest) -> Optional[np.random.Generator]:
    """The random generator of a request's variation (``EditRequest.vary``), or None for the
    canonical edit. A stream of its own (``[seed, VARIATION_STREAM]``): the draws a pipeline makes
    from ``default_rng(seed)`` are the same with or without a variation."""
    return np.random.default_rng([int(request.seed), VARIATION_STREAM]) if request.vary else None


OVERLAP_SHARE_RATIO = 1.25
"""``in_front``: how much larger one object's shared share must be to decide on its own"""
SAME_OBJECT_IOU = 0.9
"""``in_front``: two masks this alike are one object annotated twice"""


def in_front(target: np.ndarray, other: np.ndarray) -> bool:
    """Whether ``other`` is judged in front of ``target`` on the pixels both annotations claim.

    2-D masks carry no depth, and COCO's guideline (visible pixels only) is not always followed:
    where two annotations overlap, one annotator traced the object behind through the one in
    front. The rule, in order:

    0. **the same object**: masks that nearly coincide (IoU >= ``SAME_OBJECT_IOU``) are one
       object annotated twice: the target's, never "in front";
    1. **share**: the object whose mask the shared pixels are the larger part of (by more than
       ``OVERLAP_SHARE_RATIO``) is in front -- a smaller object lying over a larger one (a
       pointing arm across another person's outline, a cup on a table), the common case of a
       back object's outline drawn through the front one;
    2. **ground plane**: else the object whose mask reaches lower in the image is in front
       (in a photo of a scene on a floor or a street, the nearer object stands lower);
    3. else ``other`` is in front: when unsure, another object is never edited.
    """
    t, o = np.asarray(target, bool), np.asarray(other, bool)
    shared = int(np.count_nonzero(t & o))
    if shared == 0:
        return False
    n_t, n_o = int(t.sum()), int(o.sum())
    if shared / float(n_t + n_o - shared) >= SAME_OBJECT_IOU:
        return False
    share_t, share_o = shared / max(1, n_t), shared / max(1, n_o)
    if share_o > OVERLAP_SHARE_RATIO * share_t:
        return True
    if share_t > OVERLAP_SHARE_RATIO * share_o:
        return False
    bottom_t = int(np.flatnonzero(t.any(axis=1))[-1])
    bottom_o = int(np.flatnonzero(o.any(axis=1))[-1])
    return bottom_o >= bottom_t


CARRIED_FRACTION = 0.9
"""``carried``: the least share of an object's pixels inside the target's outline"""
CARRIED_MAX_AREA = 0.5
"""``carried``: the largest an object carried by the target may be, relative to the target"""
CARRYING_EDITS = ("remove", "replace")
"""the edit types that take the target away, and what it carries with it"""
CARRIED_CATEGORIES = frozenset({"tie", "backpack", "handbag", "umbrella", "suitcase"})
"""what an object can carry: COCO's accessories, worn or held (a cup inside a table's outline
stands on the table, and a person inside a bus's coarse outline stands before it: neither goes)"""


def carried(target: np.ndarray, other: np.ndarray, category: Optional[str]) -> bool:
    """Whether ``other`` (of ``category``) is worn or held by the object ``target``: an accessory
    (``CARRIED_CATEGORIES``; an unknown category never is) at least ``CARRIED_FRACTION`` of whose
    pixels lie inside ``target``'s outline and that is at most ``CARRIED_MAX_AREA`` of its size
    (a tie, which COCO's person outlines include). An edit that takes the target away
    (``CARRYING_EDITS``) takes it along: left behind, it would float where the target was (a tie
    hanging in the air once its wearer is removed). A recolour keeps it. Masks alone cannot tell
    a worn tie from a person drawn inside a bus's coarse outline: the category does."""
    if category not in CARRIED_CATEGORIES:
        return False
    t, o = np.asarray(target, bool), np.asarray(other, bool)
    n_o = int(np.count_nonzero(o))
    if n_o == 0 or n_o > CARRIED_MAX_AREA * int(np.count_nonzero(t)):
        return False
    return int(np.count_nonzero(o & t)) >= CARRIED_FRACTION * n_o


def _categories(categories: Optional[Sequence[str]], n: int) -> List[Optional[str]]:
    """``categories`` as a list of ``n`` (all None when unknown or not one per object)."""
    if categories is None or len(categories) != n:
        return [None] * n
    return list(categories)


def protected_region(request: EditRequest) -> Optional[np.ndarray]:
    """The pixels an edit must never paint: every other annotated object's pixels -- its mask
    less the source's, plus the pixels both claim where the other object is judged in front of
    the source (``in_front``); None when the other objects are unknown or there are none.

    Layer order from the masks: COCO instance masks hold an object's *visible* pixels only (the
    annotation of a partly hidden object stops where the object in front of it begins). A pixel of
    another object's mask is therefore that object, seen; where it lies over the source's box the
    other object is in front of the source (it occludes it), and painting there would damage it.
    Pixels claimed by both masks (overlapping annotations) go to the object judged in front: the
    other object's stay protected (removing the person behind a pointing arm leaves the arm),
    the source's may be edited. Objects behind the source need no special case: their masks
    already exclude the pixels the source hides. An object the source carries (``carried``: a
    worn tie) is not protected from an edit that takes the source away (``CARRYING_EDITS``):
    it goes with it."""
    if not request.other_masks:
        return None
    mask = np.asarray(request.mask).astype(bool)
    takes_away = request.edit_type in CARRYING_EDITS
    cats = _categories(request.other_categories, len(request.other_masks))
    region = np.zeros(mask.shape, bool)
    for m, cat in zip(request.other_masks, cats):
        m = np.asarray(m).astype(bool)
        if m.shape != mask.shape:
            raise PipelineError("bad_rle", f"another object's mask {m.shape} does not match the image {mask.shape}")
        if takes_away and carried(mask, m, cat):
            continue
        region |= m if in_front(mask, m) else m & ~mask
    return region if region.any() else None


@dataclass
class PipelineOutput:
    """A candidate reference: the edited image, its edit mask M_e and what produced it."""

    image: np.ndarray  # HxWx3 uint8, equal to the source outside edit_mask
    edit_mask: np.ndarray  # HxW bool (M_e)
    params: Dict[str, Any] = field(default_factory=dict)
    exemplar: Optional[np.ndarray] = None  # the exemplar actually used (RGBA), if any


# what a build hands to the pipelines that ask for it (``uses``): never a setting
RESOURCES: Tuple[str, ...] = ("runtime", "sam")


@dataclass(frozen=True)
class ModelNeed:
    """A model a pipeline loads: the constructor parameter it is passed as (``param``), the build
    setting that names it (``setting``, e.g. ``pbe_model``) and its kind for
    ``refcoco_edit.models.check_model`` (``pbe``, ``sd``, ``sd-inpaint``)."""

    param: str
    setting: str
    kind: str

    @property
    def option(self) -> str:
        """The command-line flag of the setting (``--pbe-model``), for messages."""
        return "--" + self.setting.replace("_", "-")


class GTPipeline(ABC):
    """Base class of ground-truth pipelines (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    edit_types: ClassVar[Tuple[str, ...]] = ()
    needs_exemplar: ClassVar[bool] = False
    # self-description (see the module docstring): models, shared build settings, resources
    models: ClassVar[Tuple[ModelNeed, ...]] = ()
    build_settings: ClassVar[Mapping[str, str]] = {}  # constructor parameter -> build setting
    uses: ClassVar[Tuple[str, ...]] = ()  # constructor parameters given by the build's resources

    @classmethod
    def model_needs(cls, settings: Mapping[str, Any]) -> List[ModelNeed]:
        """The models this pipeline loads under these build settings (``models`` by default;
        a pipeline whose model depends on a setting overrides this)."""
        return list(cls.models)

    @classmethod
    def parameters(cls) -> Dict[str, Any]:
        """This pipeline's own settings section: its constructor parameters and their defaults,
        less the models and resources the build hands over."""
        skip = set(RESOURCES) | set(cls.uses) | {m.param for m in cls.models}
        out: Dict[str, Any] = {}
        for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in skip:
                continue
            out[p.name] = None if p.default is p.empty else p.default
        return out

    @classmethod
    def check_params(cls, params: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
        """``params`` (this pipeline's section) as a dict, or ``InputError`` naming a parameter
        the pipeline does not take (with the closest one it does)."""
        if params is not None and not isinstance(params, Mapping):
            raise InputError(f"pipeline {cls.name}: its parameters must be a mapping, got {params!r}")
        own = dict(params or {})
        known = cls.parameters()
        bad = [k for k in own if k not in known]
        if bad:
            raise InputError(f"pipeline {cls.name}: unknown parameter {bad[0]!r}{did_you_mean(bad[0], known)}"
                             f" (its parameters: {', '.join(sorted(known))})")
        return own

    @classmethod
    def from_build_config(cls, settings: Mapping[str, Any], resources: Mapping[str, Callable[[], Any]],
                          params: Optional[Mapping[str, Any]] = None) -> "GTPipeline":
        """Build this pipeline from the build's ``settings`` (setting name -> value; ``None``
        keeps the constructor default), its ``resources`` (name -> factory, for ``uses``) and
        ``params``, this pipeline's own section, which wins over the shared settings.

        Raises ``InputError`` for a parameter the pipeline does not take."""
        own = cls.check_params(params)
        kw: Dict[str, Any] = {}
        for param, setting in cls.build_settings.items():
            if settings.get(setting) is not None:
                kw[param] = settings[setting]
        for need in cls.model_needs(settings):
            kw[need.param] = settings[need.setting]
        for name in cls.uses:
            kw[name] = resources[name]()
        kw.update(own)
        return cls(**kw)

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
    "classical-attribute": "refcoco_edit.pipelines.recolor:Recolor",
    "pbe-replace": "refcoco_edit.pipelines.paint_by_example:PaintByExampleReplace",
    "bld-replace": "refcoco_edit.pipelines.blended_latent:BlendedLatentReplace",
    "bld-attribute": "refcoco_edit.pipelines.blended_latent:BlendedLatentAttribute",
    "sd-inpaint-remove": "refcoco_edit.pipelines.inpaint:InpaintRemove",
}, normalize=lambda name: name.replace("_", "-"))  # YAML keys may write classical_remove

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
