"""Two-stage referring editors that find the object themselves: text grounding -> SAM -> editing.

The baseline the paper argues against (its Fig. 3): the referred object is *found* from the
sentence, then edited locally. Unlike ``blended-latent`` / ``inpaint-anything`` these editors never
see the ground-truth mask; they return the mask they found (``returns_mask``), so the report gives
``mask_iou`` beside the edit metrics, and the table shows whether referring is the hard part.

=====================  ======================================================================
name                   stage 3 (the editing back-end, reusing ``refcoco_edit.pipelines``)
=====================  ======================================================================
``grounded-inpaint``   SD inpainting of the found region (``pipelines.inpaint``'s loading, DDIM)
``grounded-pbe``       Paint-by-Example into the found box, exemplar from ``exemplar_dir`` or, with
                       ``exemplars=sample``, the sample's own exemplar (``reference_object``)
``grounded-blended``   Blended Latent Diffusion in the found region (``pipelines.blended_latent``)
=====================  ======================================================================

Per batch (one model load per run; every stage batched over the samples):

0. **phrase**: ``phrase=parse`` (default; protocol: nothing beyond image + prompt) reads the
   referring phrase P_r and the edit phrase P_e from the prompt with ``phrases.parse_instruction``
   (a small English grammar, no spans); ``phrase=prompt`` gives the grounder the whole sentence;
   ``phrase=span`` declares ``referring_phrase`` and grounds the dataset's span (an upper bound of
   the parser, recorded as such in the protocol). P_e always comes from the parser.
1. **grounding** (``grounding.load_grounder``; ``grounder=`` a local path or hub id of OWLv2 /
   OWL-ViT / Grounding DINO / CLIPSeg, or ``boxes:FILE.json``): one box per image, the best one.
2. **SAM** (``pipelines.masks.load_sam``, the build's loader; ``sam_checkpoint=`` + ``sam_type=``): the
   box prompts SAM; its mask is clipped to the box grown by ``box_margin`` (x its size per side);
   an empty mask falls back to the box. ``sam_checkpoint=none``: the box is the mask. This mask
   M_hat is returned and scored as ``mask_iou``.
3. **edit**: the region R = dilate(M_hat, ``dilate_px``) (``grounded-pbe``: the grown box), always
   inside the grown box; the back-end works in the square context window around R (``context``,
   ``resolution``) and the result is pasted back through R: outside it the output is the source,
   bit for bit. Text of inpainting / blended: replace -> P_e ("a giraffe"); attribute -> P_e + P_r
   without its article ("red dog on the left"); remove -> ``background_prompt`` with P_r as the
   negative prompt; a sentence the parser does not understand -> the whole prompt
   (``text=prompt``: always the whole prompt).

A sample whose box is not found, whose exemplar is missing (PbE) or whose edit Paint-by-Example
cannot do (not a replacement) is a per-sample ``editor_error`` with the reason.

``grounded-pbe`` on the reference-based track: ``exemplars=folder`` (default) takes an exemplar of
the parsed edit target from ``exemplar_dir`` (a category's picture, not the sample's object);
``exemplars=sample`` declares ``reference_object`` and paints the sample's own exemplar (its object
mask as alpha) into the found box: the mask-free two-stage baseline of that track. The protocol
follows the option, so the harness still passes only what is declared, and scoring an rie export
with ``exemplars=sample`` is refused (it has no exemplars). A triplet whose instruction names no
object to find (the track's additions, "add a vase") fails per sample: there is nothing to ground.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from refcoco_edit.errors import InputError
from refcoco_edit.models import ModelError

from .base import EditFailure, EditOutput
from .diffusion import DiffusionEditor, load_paint_by_example, model_error, seeded_generators
from .grounding import DEFAULT_GROUNDER, Grounder, load_grounder
from .phrases import ParsedInstruction, parse_instruction, strip_article

__all__ = ["GroundedEditor", "GroundedInpaintEditor", "GroundedPbEEditor", "GroundedBlendedEditor", "PHRASE_MODES"]

PHRASE_MODES = {
    "parse": "the referring phrase parsed from the prompt (rule-based grammar; the editor sees no spans)",
    "prompt": "the whole prompt as the grounding query",
    "span": "the dataset's referring span prompt[referring_span] (declares referring_phrase: an upper bound of the parser)",
}
BACKGROUND_PROMPT = "empty background, natural continuation of the surroundings, high quality photo"
_EXTS = (".png", ".jpg", ".jpeg", ".webp")
IBox = Tuple[int, int, int, int]


class _Job:
    __slots__ = ("i", "src", "mask", "box", "region", "text", "negative", "parsed", "extra")

    def __init__(self, i: int, src: np.ndarray, mask: np.ndarray, box: IBox, region: np.ndarray, text: str,
                 negative: str, parsed: ParsedInstruction, extra: Optional[Dict[str, Any]] = None) -> None:
        self.i, self.src, self.mask, self.box, self.region = i, src, mask, box, region
        self.text, self.negative, self.parsed = text, negative, parsed
        self.extra = extra if extra is not None else {}  # the sample's protocol inputs


class GroundedEditor(DiffusionEditor):
    """Base of the grounded editors: stages 0-2 and the paste-back; subclasses run stage 3."""

    returns_mask = True
    backend = ""
    region_rule = "mask"  # "mask": dilated M_hat inside the grown box; "box": the grown box

    def __init__(self, model: Optional[str] = None, grounder: str = DEFAULT_GROUNDER, phrase: str = "parse",
                 sam_checkpoint: str = "auto", sam_type: str = "vit_h", box_margin: float = 0.05, dilate_px: int = 6,
                 steps: int = 50, guidance_scale: float = 7.5, resolution: int = 512, context: float = 1.5,
                 text: str = "parsed", background_prompt: str = BACKGROUND_PROMPT, negative_prompt: str = "",
                 feather_px: int = 0, clipseg_threshold: float = 0.4, device: str = "auto", dtype: str = "auto",
                 local_files_only: bool = True, batch_size: Optional[int] = None, **backend: Any) -> None:
        if phrase not in PHRASE_MODES:
            raise ValueError(f"phrase must be one of {', '.join(PHRASE_MODES)}, got {phrase!r}")
        if text not in ("parsed", "prompt"):
            raise ValueError(f"text must be 'parsed' or 'prompt', got {text!r}")
        if not (math.isfinite(float(box_margin)) and float(box_margin) >= 0):
            raise ValueError(f"box_margin must be >= 0, got {box_margin}")
        if int(dilate_px) < 0 or int(feather_px) < 0:
            raise ValueError("dilate_px and feather_px must be >= 0")
        if not str(grounder or "").strip():
            raise ValueError("grounder is empty: give a model folder / hub id, or boxes:FILE.json")
        super().__init__(model=model, grounder=str(grounder), phrase=phrase, sam_checkpoint=str(sam_checkpoint),
                         sam_type=str(sam_type), box_margin=float(box_margin), dilate_px=int(dilate_px), steps=int(steps),
                         guidance_scale=float(guidance_scale), resolution=int(resolution), context=float(context),
                         text=text, background_prompt=str(background_prompt), negative_prompt=str(negative_prompt or ""),
                         feather_px=int(feather_px), clipseg_threshold=float(clipseg_threshold), device=str(device),
                         dtype=str(dtype), local_files_only=bool(local_files_only), batch_size=batch_size, **backend)
        self.protocol = frozenset({"referring_phrase"}) if phrase == "span" else frozenset()
        self._grounder: Optional[Grounder] = None
        self._sam: Any = None

    # -- description -------------------------------------------------------------------------------
    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        c = self.config
        d["grounding_protocol"] = {"phrase": c["phrase"], "what": PHRASE_MODES[c["phrase"]],
                                   "edit_phrase": "parsed from the prompt (phrases.parse_instruction)"}
        d["stages"] = {
            "grounding": f"{c['grounder']}: the best box for the phrase",
            "segmentation": ("none: the box is the mask" if self._sam_off() else
                             f"SAM {c['sam_type']} ({c['sam_checkpoint']}) from the box, clipped to the box grown by "
                             f"box_margin; empty -> the box"),
            "edit": f"{self.backend} in {'the grown box' if self.region_rule == 'box' else 'dilate(mask, dilate_px) inside the grown box'}, "
                    "pasted back through that region (exact outside)",
        }
        return d

    def _sam_off(self) -> bool:
        return str(self.config["sam_checkpoint"]).strip().lower() in ("none", "off", "")

    # -- loading ------------------------------------------------------------------------------------
    def load(self) -> None:
        c, rt = self.config, self.runtime()
        try:
            self._grounder = load_grounder(c["grounder"], rt, c["clipseg_threshold"])
        except ModelError as e:
            raise model_error(self.name, e) from None
        if not self._sam_off():
            from refcoco_edit.pipelines.masks import SAM_DEFAULT_CHECKPOINTS, SamBoxSegmenter, SamCheckpointError

            path = str(c["sam_checkpoint"])
            if path.lower() == "auto":
                path = SAM_DEFAULT_CHECKPOINTS.get(c["sam_type"], "")
                if not Path(path).is_file():
                    raise InputError(f"editor {self.name!r}: no SAM checkpoint: sam_checkpoint=auto looks for {path!r} "
                                     "in the working folder; give --editor-arg sam_checkpoint=PATH (or none: the box is the mask)")
            try:
                self._sam = SamBoxSegmenter.from_checkpoint(path, c["sam_type"], rt.torch_device())
            except (SamCheckpointError, ModelError) as e:
                raise model_error(self.name, e) from None
        self.load_backend()

    def load_backend(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- stages 0-2 ------------------------------------------------------------------------------------
    def _query(self, prompt: str, extra: Dict[str, Any], parsed: ParsedInstruction) -> str:
        mode = self.config["phrase"]
        if mode == "span":
            return str(extra.get("referring_phrase") or "").strip() or parsed.referring
        if mode == "prompt":
            return prompt
        return parsed.referring

    def _texts(self, prompt: str, parsed: ParsedInstruction) -> Tuple[str, str]:
        """(text, negative prompt) of the back-end for one sample."""
        c = self.config
        neg = c["negative_prompt"]
        if c["text"] == "prompt" or parsed.kind == "unknown":
            return prompt, neg
        if parsed.kind == "remove":
            return c["background_prompt"], ", ".join(x for x in (neg, strip_article(parsed.referring)) if x)
        if parsed.kind == "attribute":
            return f"{parsed.edit} {strip_article(parsed.referring)}".strip(), neg
        return parsed.edit or prompt, neg

    def _segment(self, image: np.ndarray, box: IBox) -> Tuple[np.ndarray, np.ndarray]:
        """(M_hat, the grown box as a mask)."""
        from refcoco_edit.pipelines.masks import box_mask, grow_box

        clip = box_mask(grow_box(box, self.config["box_margin"], image.shape), image.shape)
        if self._sam is None:
            return box_mask(box, image.shape), clip
        m = self._sam.segment(image, box) & clip
        return (m if m.any() else box_mask(box, image.shape)), clip

    def edit(self, images: List[np.ndarray], prompts: List[str], seeds: List[int],
             extras: List[Dict[str, Any]]) -> List[Union[EditOutput, EditFailure]]:
        from refcoco_edit.pipelines.masks import dilate

        assert self._grounder is not None
        parsed = [parse_instruction(p) for p in prompts]
        queries = [self._query(p, e, q) for p, e, q in zip(prompts, extras, parsed)]
        found = self._grounder.ground([np.ascontiguousarray(im) for im in images], queries,
                                      [str(e.get("sample_id", "")) for e in extras])
        out: List[Any] = [None] * len(images)
        jobs: List[_Job] = []
        for i, (im, g) in enumerate(zip(images, found)):
            if g.box is None:
                out[i] = EditFailure("editor_error", f"the grounder found no box for {queries[i]!r}")
                continue
            src = np.ascontiguousarray(im)
            x0, y0, x1, y1 = g.box
            box = (int(math.floor(x0)), int(math.floor(y0)), int(math.ceil(x1)), int(math.ceil(y1)))
            mask, clip = self._segment(src, box)
            region = clip if self.region_rule == "box" else (dilate(mask, self.config["dilate_px"]) & clip)
            text, neg = self._texts(prompts[i], parsed[i])
            jobs.append(_Job(i, src, mask, box, region, text, neg, parsed[i], extras[i]))
        if jobs:
            gens = self.run_backend(jobs, [seeds[j.i] for j in jobs])
            self._finish(jobs, gens, out)
        return out

    def _finish(self, jobs: List[_Job], gens: List[Any], out: List[Any]) -> None:
        from refcoco_edit.pipelines.masks import paste_back

        for j, g in zip(jobs, gens):
            if isinstance(g, EditFailure):
                out[j.i] = g
            else:
                out[j.i] = EditOutput(paste_back(j.src, g, j.region, feather_px=self.config["feather_px"]), j.mask)

    def run_backend(self, jobs: List[_Job], seeds: List[int]) -> List[Any]:  # pragma: no cover - abstract
        """Stage 3: one full-size generated image (uint8 HxWx3) or EditFailure per job."""
        raise NotImplementedError


def _windowed(jobs: List[_Job], context: float, resolution: int) -> List[Tuple[Any, Any, Any]]:
    from refcoco_edit.pipelines.masks import mask_box
    from refcoco_edit.pipelines.windows import crop_to_window

    return [crop_to_window(j.src, j.region, mask_box(j.region), context, resolution) for j in jobs]


class GroundedInpaintEditor(GroundedEditor):
    """Grounding -> SAM -> Stable Diffusion inpainting of the found region."""

    name = "grounded-inpaint"
    backend = "SD inpainting"
    default_model = "stable-diffusion-v1-5/stable-diffusion-inpainting"

    def __init__(self, model: Optional[str] = None, grounder: str = DEFAULT_GROUNDER, phrase: str = "parse",
                 sam_checkpoint: str = "auto", sam_type: str = "vit_h", box_margin: float = 0.05, dilate_px: int = 6,
                 steps: int = 50, guidance_scale: float = 7.5, resolution: int = 512, context: float = 1.5,
                 text: str = "parsed", background_prompt: str = BACKGROUND_PROMPT, negative_prompt: str = "",
                 feather_px: int = 0, clipseg_threshold: float = 0.4, device: str = "auto", dtype: str = "auto",
                 local_files_only: bool = True, batch_size: Optional[int] = None) -> None:
        super().__init__(model, grounder, phrase, sam_checkpoint, sam_type, box_margin, dilate_px, steps, guidance_scale,
                         resolution, context, text, background_prompt, negative_prompt, feather_px, clipseg_threshold,
                         device, dtype, local_files_only, batch_size)

    def load_backend(self) -> None:
        from refcoco_edit.pipelines.inpaint import InpaintRemove

        c = self.config
        gt = InpaintRemove(model=c["model"], runtime=self.runtime(), num_inference_steps=c["steps"],
                           guidance_scale=c["guidance_scale"], resolution=c["resolution"], context=c["context"],
                           scheduler="ddim", feather_px=c["feather_px"])
        try:
            _ = gt.pipe  # loads, and swaps in the DDIM scheduler
        except ModelError as e:
            raise model_error(self.name, e) from None
        self._pipe = gt.pipe

    def run_backend(self, jobs: List[_Job], seeds: List[int]) -> List[Any]:
        import torch

        from refcoco_edit.pipelines.windows import uncrop

        c, r = self.config, self.config["resolution"]
        crops = _windowed(jobs, c["context"], r)
        with torch.inference_mode():
            res = self._pipe(prompt=[j.text for j in jobs], negative_prompt=[j.negative for j in jobs],
                             image=[w[1] for w in crops], mask_image=[w[2] for w in crops], height=r, width=r,
                             strength=1.0, num_inference_steps=c["steps"], guidance_scale=c["guidance_scale"],
                             generator=seeded_generators(seeds), output_type="np")
        return [uncrop(j.src, w[0], np.asarray(g, np.float32)) for j, w, g in zip(jobs, crops, res.images)]


class GroundedBlendedEditor(GroundedEditor):
    """Grounding -> SAM -> Blended Latent Diffusion in the found region."""

    name = "grounded-blended"
    backend = "Blended Latent Diffusion"
    default_model = "stable-diffusion-v1-5/stable-diffusion-v1-5"

    def __init__(self, model: Optional[str] = None, grounder: str = DEFAULT_GROUNDER, phrase: str = "parse",
                 sam_checkpoint: str = "auto", sam_type: str = "vit_h", box_margin: float = 0.05, dilate_px: int = 6,
                 steps: int = 50, guidance_scale: float = 7.5, resolution: int = 512, context: float = 1.5,
                 text: str = "parsed", background_prompt: str = BACKGROUND_PROMPT, negative_prompt: str = "",
                 feather_px: int = 0, clipseg_threshold: float = 0.4, device: str = "auto", dtype: str = "auto",
                 local_files_only: bool = True, batch_size: Optional[int] = None, backbone: str = "sd") -> None:
        if backbone not in ("sd", "inpaint"):
            raise ValueError(f"backbone must be 'sd' or 'inpaint', got {backbone!r}")
        if backbone == "inpaint" and not model:
            model = "stable-diffusion-v1-5/stable-diffusion-inpainting"
        super().__init__(model, grounder, phrase, sam_checkpoint, sam_type, box_margin, dilate_px, steps, guidance_scale,
                         resolution, context, text, background_prompt, negative_prompt, feather_px, clipseg_threshold,
                         device, dtype, local_files_only, batch_size, backbone=backbone)

    def load_backend(self) -> None:
        from refcoco_edit.pipelines.blended_latent import BlendedLatentEdit

        c = self.config
        gt = BlendedLatentEdit(model=c["model"], runtime=self.runtime(), num_inference_steps=c["steps"],
                               guidance_scale=c["guidance_scale"], resolution=c["resolution"], context=c["context"],
                               backbone=c["backbone"], feather_px=c["feather_px"])
        try:
            gt.load()
        except ModelError as e:
            raise model_error(self.name, e) from None
        self._pipe = gt

    def run_backend(self, jobs: List[_Job], seeds: List[int]) -> List[Any]:
        return self._pipe.edit_regions([j.src for j in jobs], [j.region for j in jobs], [j.text for j in jobs],
                                       [j.negative for j in jobs], seeds)


EXEMPLAR_SOURCES = {
    "folder": "exemplar_dir: DIR/<parsed target>/* or DIR/<parsed target>.png, picked by the sample's seed",
    "sample": "the sample's own exemplar (reference_object: the reference-based track's exemplar image, its object "
              "mask as alpha)",
}


class GroundedPbEEditor(GroundedEditor):
    """Grounding -> SAM -> Paint-by-Example into the found box (replacements; exemplar from a
    folder, or the sample's own exemplar with ``exemplars=sample``)."""

    name = "grounded-pbe"
    backend = "Paint-by-Example"
    default_model = "Fantasy-Studio/Paint-by-Example"
    region_rule = "box"

    def __init__(self, model: Optional[str] = None, grounder: str = DEFAULT_GROUNDER, phrase: str = "parse",
                 sam_checkpoint: str = "auto", sam_type: str = "vit_h", box_margin: float = 0.15, dilate_px: int = 6,
                 steps: int = 50, guidance_scale: float = 5.0, resolution: int = 512, context: float = 1.5,
                 feather_px: int = 0, clipseg_threshold: float = 0.4, device: str = "auto", dtype: str = "auto",
                 local_files_only: bool = True, batch_size: Optional[int] = None, exemplar_dir: str = "",
                 exemplar_background: int = 255, exemplars: str = "folder") -> None:
        if exemplars not in EXEMPLAR_SOURCES:
            raise ValueError(f"exemplars must be one of {', '.join(EXEMPLAR_SOURCES)}, got {exemplars!r}")
        if exemplars == "sample" and exemplar_dir:
            raise ValueError("exemplar_dir is not used with exemplars=sample (the sample's own exemplar is painted)")
        super().__init__(model, grounder, phrase, sam_checkpoint, sam_type, box_margin, dilate_px, steps, guidance_scale,
                         resolution, context, "parsed", BACKGROUND_PROMPT, "", feather_px, clipseg_threshold,
                         device, dtype, local_files_only, batch_size, exemplar_dir=str(exemplar_dir or ""),
                         exemplar_background=int(exemplar_background), exemplars=exemplars)
        if exemplars == "sample":  # the protocol follows the option: the harness passes only what is declared
            self.protocol = self.protocol | {"reference_object"}

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        d["exemplar_source"] = EXEMPLAR_SOURCES[self.config["exemplars"]]
        return d

    def load_backend(self) -> None:
        c = self.config
        if c["exemplars"] == "folder" and (not c["exemplar_dir"] or not Path(c["exemplar_dir"]).is_dir()):
            raise InputError(f"editor {self.name!r}: exemplar_dir={c['exemplar_dir']!r} is not a folder; give "
                             "--editor-arg exemplar_dir=DIR holding DIR/<target>.png or DIR/<target>/*.png (on a "
                             "reference-based export: --editor-arg exemplars=sample)")
        self._pipe = load_paint_by_example(self)

    def exemplar(self, target: str, seed: int) -> Optional[np.ndarray]:
        """An RGBA exemplar of ``target`` ("a giraffe") from ``exemplar_dir`` (``DIR/giraffe/*`` or
        ``DIR/giraffe.png``), picked by the sample's seed; None when there is none."""
        from PIL import Image, UnidentifiedImageError

        root = Path(self.config["exemplar_dir"])
        name = strip_article(target).lower()
        if not name or name.startswith(".") or any(ch in name for ch in "/\\\0:"):
            return None
        files = sorted(p for p in (root / name).glob("*") if p.suffix.lower() in _EXTS) if (root / name).is_dir() else []
        files += [root / f"{name}{e}" for e in _EXTS if (root / f"{name}{e}").is_file()]
        for k in range(len(files)):
            try:
                with Image.open(files[(int(seed) + k) % len(files)]) as im:
                    arr = np.asarray(im.convert("RGBA")).copy()
            except (OSError, UnidentifiedImageError, ValueError):
                continue
            if (arr[..., 3] > 0).any():
                return arr
        return None

    def run_backend(self, jobs: List[_Job], seeds: List[int]) -> List[Any]:
        import torch

        from refcoco_edit.pipelines.paint_by_example import exemplar_on_background
        from refcoco_edit.pipelines.windows import uncrop

        from .pbe_mask import reference_rgba

        c, r = self.config, self.config["resolution"]
        res: List[Any] = [None] * len(jobs)
        run: List[Tuple[int, Any]] = []
        for k, (j, s) in enumerate(zip(jobs, seeds)):
            if j.parsed.kind != "replace":
                res[k] = EditFailure("editor_error", f"Paint-by-Example makes replacements of a found object; the "
                                                     f"prompt reads as {j.parsed.kind!r} (an addition names no object "
                                                     "to find)")
                continue
            if c["exemplars"] == "sample":
                ex = reference_rgba(j.extra["reference_object"])
                if ex is None:
                    res[k] = EditFailure("editor_error", "the sample's exemplar mask is empty or not of its image's size")
                    continue
            else:
                ex = self.exemplar(j.parsed.edit, s)
            if ex is None:
                res[k] = EditFailure("editor_error", f"no exemplar of {j.parsed.edit!r} in {c['exemplar_dir']}")
                continue
            run.append((k, exemplar_on_background(ex, c["exemplar_background"])))
        if run:
            sel = [jobs[k] for k, _ in run]
            crops = _windowed(sel, c["context"], r)
            with torch.inference_mode():
                out = self._pipe(example_image=[e for _, e in run], image=[w[1] for w in crops],
                                 mask_image=[w[2] for w in crops], height=r, width=r, num_inference_steps=c["steps"],
                                 guidance_scale=c["guidance_scale"], generator=seeded_generators([seeds[k] for k, _ in run]),
                                 output_type="np")
            for (k, _), j, w, g in zip(run, sel, crops, out.images):
                res[k] = uncrop(j.src, w[0], np.asarray(g, np.float32))
        return res
