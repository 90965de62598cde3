"""Diffusion editors under test: InstructPix2Pix, MagicBrush, Blended Latent Diffusion and an
Inpaint-Anything-style mask + inpaint editor.

=====================  ===========================  ==============================================
name                   protocol (beyond image+P)    model (``--editor-arg model=...``; default)
=====================  ===========================  ==============================================
``instruct-pix2pix``   —                            InstructPix2Pix (``timbrooks/instruct-pix2pix``)
``magicbrush``         —                            InstructPix2Pix fine-tuned on MagicBrush
                                                    (``vinesmsuic/magicbrush-jul7``)
``blended-latent``     ``gt_mask``, ``edit_phrase``  Stable Diffusion text-to-image
                                                    (``stable-diffusion-v1-5/stable-diffusion-v1-5``)
``inpaint-anything``   ``gt_mask``                  Stable Diffusion inpainting
                                                    (``stable-diffusion-v1-5/stable-diffusion-inpainting``)
=====================  ===========================  ==============================================

Every option is an ``--editor-arg key=value`` (constructor keyword), recorded in results.json and
part of the output cache's fingerprint: ``model`` (a local folder or hub id), ``steps``,
``guidance_scale``, ``resolution``, ``device`` (auto | cpu | cuda | cuda:N), ``dtype`` (auto = fp16
on CUDA, fp32 elsewhere | fp32 | fp16 | bf16), ``local_files_only`` (default true: a hub id must be
in the local cache; nothing is downloaded unless it is false), ``batch_size``, plus the options of
each editor below. Nothing is loaded in ``__init__``; ``load()`` (called by the harness once, only
when some sample needs editing) loads the pipeline and raises ``InputError`` (exit 2) with one
line when the model is missing or of the wrong kind.

Seeds: one CPU ``torch.Generator`` per sample, seeded with the harness's per-sample seed, so a
sample's noise does not depend on its batch or the device.

Sizes. The harness requires an output of the source's size (never resized behind its back), so
each editor maps its working resolution back itself:

* InstructPix2Pix / MagicBrush edit the whole image: it is resized (PIL Lanczos, no crop) to W'xH',
  the longer side = ``resolution`` (512) and each side rounded to the nearest multiple of the
  model's size unit (VAE factor x 2^(UNet down blocks - 1): 64 for SD 1.5; at least one unit),
  edited there, and the result is resized back to the source's W x H (PIL Lanczos). The aspect
  ratio changes by at most half a unit per side and is restored exactly.
* Blended Latent and Inpaint-Anything work in the square context window around the mask
  (``context`` x its box, as the ground-truth pipelines do), resized to ``resolution``; the result
  is resized back into the window and pasted through the mask (``refcoco_edit.pipelines.masks.paste_back``,
  feathered inside the mask by ``feather_px``): outside the mask the output is the source, bit
  for bit.

InstructPix2Pix / MagicBrush: the instruction is the prompt P followed by the paper's suffix
"and do not change any pixel else" (``suffix=...``; ``suffix=""`` turns it off): trailing
whitespace and ``.``/``!``/``;`` of P are dropped and the suffix is joined with one space
("Replace the cow with a panda." -> "Replace the cow with a panda and do not change any pixel
else"). Defaults follow InstructPix2Pix's ``edit_cli.py``: 100 steps, text guidance 7.5, image
guidance 1.5, resolution 512.

Blended Latent Diffusion (as in the paper: it sees M_e and the edit phrase): the loop of
``refcoco_edit.pipelines.blended_latent`` (DDIM + classifier-free guidance, the noised source latents blended
outside the latent mask after each step) with the region = M_e and the text =
``prompt_template.format(text=edit_phrase)`` (default ``"{text}"``), then the pixel paste-back.

Inpaint-Anything style (it sees M_e): M_e (grown by ``dilate_px``, default 0) is the hole of
diffusers' ``StableDiffusionInpaintPipeline`` (``refcoco_edit.pipelines.inpaint``'s loading, DDIM scheduler),
filled with the text P (``text=prompt``) or the edit phrase (``text=edit_phrase``, which adds
``edit_phrase`` to the protocol), then pasted back.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from refcoco_edit.errors import InputError
from refcoco_edit.models import DTYPES, ModelError, Runtime

from .base import Editor, EditFailure

__all__ = ["InstructPix2PixEditor", "MagicBrushEditor", "BlendedLatentEditor", "InpaintAnythingEditor", "DiffusionEditor",
           "seeded_generators", "to_uint8", "model_error",
           "PAPER_SUFFIX", "instruction", "working_size", "SIZE_RULE", "size_unit", "size_groups", "resize_lanczos",
           "to_source_size", "check_guidance_options", "load_model_folder", "load_paint_by_example"]

PAPER_SUFFIX = "and do not change any pixel else"
DEFAULT_IP2P_MODEL = "timbrooks/instruct-pix2pix"
DEFAULT_MAGICBRUSH_MODEL = "vinesmsuic/magicbrush-jul7"


def instruction(prompt: str, suffix: Optional[str]) -> str:
    """P + the suffix (see the module docstring); P unchanged when the suffix is empty."""
    if not suffix or not str(suffix).strip():
        return prompt
    return f"{prompt.rstrip().rstrip('.!;').rstrip()} {str(suffix).strip()}"


def working_size(h: int, w: int, resolution: int, unit: int) -> Tuple[int, int]:
    """(h', w'): the longer side = ``resolution``, each side rounded to the nearest multiple of
    ``unit`` (at least one unit)."""
    scale = float(resolution) / float(max(h, w))
    return (max(unit, int(round(h * scale / unit)) * unit), max(unit, int(round(w * scale / unit)) * unit))


SIZE_RULE = ("resize (PIL Lanczos, no crop) to the longer side = resolution, each side rounded to a multiple "
             "of VAE factor x 2^(UNet down blocks - 1); the result resized back to the source size (Lanczos)")
"""The working-size rule of the whole-image editors (InstructPix2Pix, ReferDiffusion, FreeEdit), as
results.json records it (``describe()["size_rule"]``)."""


def size_unit(model: Any) -> int:
    """What each side of a working size is a multiple of: VAE factor x 2^(U-Net down blocks - 1)
    (``model``: a pipeline or model with ``vae_scale_factor`` and ``unet``)."""
    return int(model.vae_scale_factor) * 2 ** (len(model.unet.config.block_out_channels) - 1)


def size_groups(images: Sequence[np.ndarray], resolution: int, unit: int,
                indices: Optional[Iterable[int]] = None) -> Dict[Tuple[int, int], List[int]]:
    """Working size (h', w') -> the indices of the images (all, or ``indices``) edited at it, so
    each group runs as one batch."""
    groups: Dict[Tuple[int, int], List[int]] = {}
    for i in (range(len(images)) if indices is None else indices):
        h, w = images[i].shape[:2]
        groups.setdefault(working_size(h, w, resolution, unit), []).append(i)
    return groups


def resize_lanczos(image: np.ndarray, hw: Tuple[int, int]) -> Any:
    """``image`` (HxWx3 uint8) resized to ``hw`` = (h, w) with PIL Lanczos, as a PIL image."""
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(image)).resize((int(hw[1]), int(hw[0])), Image.LANCZOS)


def to_source_size(image01: np.ndarray, source: np.ndarray) -> np.ndarray:
    """An output at the working size (uint8, or floats in [0, 1]: ``to_uint8``) as uint8 at the size
    of ``source`` (Lanczos)."""
    return np.asarray(resize_lanczos(to_uint8(image01), source.shape[:2]))


def check_guidance_options(steps: Any, guidance_scale: Any, image_guidance_scale: Any, resolution: Any, dtype: Any,
                           batch_size: Any) -> None:
    """The options every dual-guidance editor shares (ValueError on a bad one)."""
    _check_common(steps, guidance_scale, resolution, dtype, batch_size)
    if not math.isfinite(float(image_guidance_scale)):
        raise ValueError(f"image_guidance_scale must be finite, got {image_guidance_scale}")


def load_model_folder(editor: Editor, option: str, kind: str, parts: Sequence[str],
                      loader: Callable[[Path], Any]) -> Tuple[Any, Any, Any, Path, str]:
    """A trained model saved as a folder (``editor.config[option]``): resolves the editor's device
    and dtype, checks the folder holds ``parts`` (else "not a ``kind``"), loads it with
    ``loader(path)`` (load errors become one-line InputErrors) and returns it in eval mode,
    frozen, on that device and dtype, with (device, dtype, path, what)."""
    import pickle

    from refcoco_edit.models import resolve_device, resolve_dtype

    c = editor.config
    what = f"editor {editor.name!r} {option} {c[option]}"
    try:
        device = resolve_device(c["device"])
        dtype = resolve_dtype(c["dtype"], device)
    except ModelError as e:
        raise model_error(editor.name, e) from None
    path = Path(c[option]).expanduser()
    if not path.is_dir():
        raise InputError(f"{what}: no such folder")
    missing = [n for n in parts if not (path / n).exists()]
    if missing:
        writer = kind.split()[0]
        raise InputError(f"{what}: not a {kind} (missing {', '.join(missing)}; expected a folder written by "
                         f"{writer}.save_pretrained)")
    try:
        model = loader(path)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError, ImportError,
            AttributeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"{what}: cannot be loaded: {type(e).__name__}: {first}") from None
    model.eval().requires_grad_(False)
    return model.to(device=device, dtype=dtype), device, dtype, path, what


def _check_common(steps: Any, guidance_scale: Any, resolution: Any, dtype: Any, batch_size: Any) -> None:
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not math.isfinite(float(guidance_scale)):
        raise ValueError(f"guidance_scale must be finite, got {guidance_scale}")
    if int(resolution) < 8 or int(resolution) % 8:
        raise ValueError(f"resolution must be a positive multiple of 8, got {resolution}")
    if str(dtype).lower() not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def seeded_generators(seeds: List[int]) -> List[Any]:
    import torch

    return [torch.Generator("cpu").manual_seed(int(s) % (2 ** 63)) for s in seeds]


def to_uint8(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == np.uint8:
        return a
    return np.clip(np.rint(np.asarray(a, np.float64) * 255.0), 0, 255).astype(np.uint8)


def model_error(editor: str, e: Exception) -> InputError:
    return InputError(f"editor {editor!r}: {e}")


def load_paint_by_example(editor: "DiffusionEditor") -> Any:
    """The Paint-by-Example pipeline of an editor (``pbe-mask``, ``grounded-pbe``), loaded by the
    build's own loader (``PaintByExampleReplace``: the same checkpoint handling as ground truth)
    with the editor's model, steps, guidance_scale, resolution, context and runtime; a missing or
    broken checkpoint is an InputError naming the editor."""
    from refcoco_edit.models import ModelError
    from refcoco_edit.pipelines.paint_by_example import PaintByExampleReplace

    c = editor.config
    gt = PaintByExampleReplace(model=c["model"], runtime=editor.runtime(), num_inference_steps=c["steps"],
                               guidance_scale=c["guidance_scale"], resolution=c["resolution"], context=c["context"])
    try:
        gt.load()
    except ModelError as e:
        raise model_error(editor.name, e) from None
    return gt.pipe


class DiffusionEditor(Editor):
    """Shared options and the runtime (device, dtype, local_files_only) of the diffusion editors."""

    default_model = ""
    batch_size = 4

    def __init__(self, **config: Any) -> None:
        _check_common(config["steps"], config["guidance_scale"], config["resolution"], config["dtype"],
                      config.get("batch_size"))
        if config.get("batch_size") is not None:
            self.batch_size = int(config["batch_size"])
        if not config.get("model"):
            config["model"] = self.default_model
        super().__init__(**config)
        self._pipe: Any = None

    def runtime(self) -> Runtime:
        """The model layer's runtime of this editor's options."""
        c = self.config
        return Runtime(device=str(c["device"]), dtype=str(c["dtype"]).lower(), local_files_only=bool(c["local_files_only"]),
                       batch_size=int(self.batch_size))


# ----------------------------------------------------------------------------------------------
# InstructPix2Pix / MagicBrush
# ----------------------------------------------------------------------------------------------

class InstructPix2PixEditor(DiffusionEditor):
    """InstructPix2Pix (diffusers ``StableDiffusionInstructPix2PixPipeline``) on the whole image."""

    name = "instruct-pix2pix"
    protocol = frozenset()
    default_model = DEFAULT_IP2P_MODEL

    def __init__(self, model: Optional[str] = None, suffix: Optional[str] = PAPER_SUFFIX, steps: int = 100,
                 guidance_scale: float = 7.5, image_guidance_scale: float = 1.5, resolution: int = 512,
                 negative_prompt: str = "", device: str = "auto", dtype: str = "auto", local_files_only: bool = True,
                 batch_size: Optional[int] = None) -> None:
        if not math.isfinite(float(image_guidance_scale)):
            raise ValueError(f"image_guidance_scale must be finite, got {image_guidance_scale}")
        super().__init__(model=model, suffix=suffix or "", steps=int(steps), guidance_scale=float(guidance_scale),
                         image_guidance_scale=float(image_guidance_scale), resolution=int(resolution),
                         negative_prompt=str(negative_prompt or ""), device=str(device), dtype=str(dtype),
                         local_files_only=bool(local_files_only), batch_size=batch_size)
        self._unit = 64

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        d["instruction_rule"] = ("prompt with trailing whitespace and .!; removed + ' ' + suffix" if self.config["suffix"]
                                 else "the prompt as is (no suffix)")
        d["size_rule"] = SIZE_RULE
        return d

    def load(self) -> None:
        import json

        from refcoco_edit.models import optimize, resolve_source

        c = self.config
        rt = self.runtime()
        what = f"editor {self.name!r} model"
        try:
            src = resolve_source(c["model"], what, rt.local_files_only, "model_index.json")
            dtype = rt.torch_dtype()  # also checks the device
        except ModelError as e:
            raise model_error(self.name, e) from None
        unet_cfg = (src.local / "unet" / "config.json") if src.local is not None else None
        if unet_cfg is not None and unet_cfg.is_file():
            in_ch = int(json.loads(unet_cfg.read_text(encoding="utf-8")).get("in_channels", -1))
            if in_ch != 8:
                raise InputError(f"{what} {c['model']}: its UNet takes {in_ch} input channels, not 8: not an "
                                 "InstructPix2Pix model")
        from diffusers import StableDiffusionInstructPix2PixPipeline

        from refcoco_edit.models import dtype_kwargs

        try:
            pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
                src.load_arg, local_files_only=rt.local_files_only, safety_checker=None, requires_safety_checker=False,
                **dtype_kwargs(dtype))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, ImportError, AttributeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise InputError(f"{what} {c['model']}: cannot be loaded as an InstructPix2Pix pipeline: "
                             f"{type(e).__name__}: {first}") from None
        if int(pipe.unet.config.in_channels) != 8:
            raise InputError(f"{what} {c['model']}: its UNet takes {pipe.unet.config.in_channels} input channels, not 8")
        self._pipe = optimize(pipe, rt)
        self._unit = size_unit(pipe)

    def edit(self, images: List[np.ndarray], prompts: List[str], seeds: List[int],
             extras: List[Dict[str, Any]]) -> List[Union[np.ndarray, EditFailure]]:
        import torch

        c = self.config
        out: List[Any] = [None] * len(images)
        for hw, idx in size_groups(images, c["resolution"], self._unit).items():
            pil = [resize_lanczos(images[i], hw) for i in idx]
            with torch.inference_mode():
                res = self._pipe(
                    prompt=[instruction(prompts[i], c["suffix"]) for i in idx], image=pil,
                    negative_prompt=[c["negative_prompt"]] * len(idx) if c["negative_prompt"] else None,
                    num_inference_steps=c["steps"], guidance_scale=c["guidance_scale"],
                    image_guidance_scale=c["image_guidance_scale"], generator=seeded_generators([seeds[i] for i in idx]),
                    output_type="np")
            for i, g in zip(idx, res.images):
                out[i] = to_source_size(g, images[i])
        return out


class MagicBrushEditor(InstructPix2PixEditor):
    """InstructPix2Pix fine-tuned on MagicBrush (same pipeline, its own weights)."""

    name = "magicbrush"
    default_model = DEFAULT_MAGICBRUSH_MODEL


# ----------------------------------------------------------------------------------------------
# mask-based editors (windowed, pasted back through the mask)
# ----------------------------------------------------------------------------------------------

def _empty_mask_failure() -> EditFailure:
    return EditFailure("editor_error", "the ground-truth mask M_e is empty: nothing to edit")


class BlendedLatentEditor(DiffusionEditor):
    """Blended Latent Diffusion with the ground-truth mask M_e and the edit phrase P_e."""

    name = "blended-latent"
    protocol = frozenset({"gt_mask", "edit_phrase"})
    default_model = "stable-diffusion-v1-5/stable-diffusion-v1-5"

    def __init__(self, model: Optional[str] = None, steps: int = 50, guidance_scale: float = 7.5, resolution: int = 512,
                 context: float = 1.5, backbone: str = "sd", prompt_template: str = "{text}", negative_prompt: str = "",
                 feather_px: int = 0, device: str = "auto", dtype: str = "auto", local_files_only: bool = True,
                 batch_size: Optional[int] = None) -> None:
        if "{text}" not in str(prompt_template):
            raise ValueError(f"prompt_template must contain {{text}}, got {prompt_template!r}")
        if backbone not in ("sd", "inpaint"):
            raise ValueError(f"backbone must be 'sd' or 'inpaint', got {backbone!r}")
        if backbone == "inpaint" and not model:
            model = "stable-diffusion-v1-5/stable-diffusion-inpainting"
        super().__init__(model=model, steps=int(steps), guidance_scale=float(guidance_scale), resolution=int(resolution),
                         context=float(context), backbone=backbone, prompt_template=str(prompt_template),
                         negative_prompt=str(negative_prompt or ""), feather_px=int(feather_px), device=str(device),
                         dtype=str(dtype), local_files_only=bool(local_files_only), batch_size=batch_size)

    def load(self) -> None:
        from refcoco_edit.pipelines.blended_latent import BlendedLatentEdit

        c = self.config
        gt = BlendedLatentEdit(model=c["model"], runtime=self.runtime(), num_inference_steps=c["steps"],
                               guidance_scale=c["guidance_scale"], resolution=c["resolution"], context=c["context"],
                               backbone=c["backbone"], prompt_template=c["prompt_template"],
                               negative_prompt=c["negative_prompt"], feather_px=c["feather_px"])
        try:
            gt.load()
        except ModelError as e:
            raise model_error(self.name, e) from None
        self._pipe = gt

    def edit(self, images: List[np.ndarray], prompts: List[str], seeds: List[int],
             extras: List[Dict[str, Any]]) -> List[Union[np.ndarray, EditFailure]]:
        from refcoco_edit.pipelines.masks import paste_back

        gt, c = self._pipe, self.config
        out: List[Any] = [None] * len(images)
        todo: List[Tuple[int, np.ndarray, np.ndarray, str]] = []
        for i, (im, p, e) in enumerate(zip(images, prompts, extras)):
            m = np.asarray(e["gt_mask"], dtype=bool)
            if not m.any():
                out[i] = _empty_mask_failure()
                continue
            phrase = str(e.get("edit_phrase") or "").strip() or p
            todo.append((i, np.ascontiguousarray(im), m, c["prompt_template"].format(text=phrase)))
        if todo:
            gens = gt.edit_regions([t[1] for t in todo], [t[2] for t in todo], [t[3] for t in todo],
                                   [c["negative_prompt"]] * len(todo), [seeds[t[0]] for t in todo])
            for (i, src, m, _), gen in zip(todo, gens):
                out[i] = paste_back(src, gen, m, feather_px=c["feather_px"])
        return out


class InpaintAnythingEditor(DiffusionEditor):
    """Inpaint-Anything style: the ground-truth mask M_e filled by Stable Diffusion inpainting."""

    name = "inpaint-anything"
    protocol = frozenset({"gt_mask"})
    default_model = "stable-diffusion-v1-5/stable-diffusion-inpainting"

    def __init__(self, model: Optional[str] = None, steps: int = 50, guidance_scale: float = 7.5, resolution: int = 512,
                 context: float = 1.5, text: str = "prompt", negative_prompt: str = "", dilate_px: int = 0,
                 feather_px: int = 0, scheduler: str = "ddim", device: str = "auto", dtype: str = "auto",
                 local_files_only: bool = True, batch_size: Optional[int] = None) -> None:
        if text not in ("prompt", "edit_phrase"):
            raise ValueError(f"text must be 'prompt' or 'edit_phrase', got {text!r}")
        if scheduler not in ("ddim", "model"):
            raise ValueError(f"scheduler must be 'ddim' or 'model', got {scheduler!r}")
        if int(dilate_px) < 0:
            raise ValueError(f"dilate_px must be >= 0, got {dilate_px}")
        super().__init__(model=model, steps=int(steps), guidance_scale=float(guidance_scale), resolution=int(resolution),
                         context=float(context), text=text, negative_prompt=str(negative_prompt or ""),
                         dilate_px=int(dilate_px), feather_px=int(feather_px), scheduler=scheduler, device=str(device),
                         dtype=str(dtype), local_files_only=bool(local_files_only), batch_size=batch_size)
        self.protocol = frozenset({"gt_mask", "edit_phrase"}) if text == "edit_phrase" else frozenset({"gt_mask"})

    def load(self) -> None:
        from refcoco_edit.pipelines.inpaint import InpaintRemove

        c = self.config
        gt = InpaintRemove(model=c["model"], runtime=self.runtime(), num_inference_steps=c["steps"],
                           guidance_scale=c["guidance_scale"], resolution=c["resolution"], context=c["context"],
                           scheduler=c["scheduler"], feather_px=c["feather_px"])
        try:
            gt.load()
            _ = gt.pipe  # the DDIM scheduler swap happens on first access
        except ModelError as e:
            raise model_error(self.name, e) from None
        self._pipe = gt

    def edit(self, images: List[np.ndarray], prompts: List[str], seeds: List[int],
             extras: List[Dict[str, Any]]) -> List[Union[np.ndarray, EditFailure]]:
        import torch

        from refcoco_edit.pipelines.masks import dilate, mask_box, paste_back
        from refcoco_edit.pipelines.windows import crop_to_window, uncrop

        gt, c = self._pipe, self.config
        out: List[Any] = [None] * len(images)
        todo = []
        for i, (im, p, e) in enumerate(zip(images, prompts, extras)):
            m = np.asarray(e["gt_mask"], dtype=bool)
            if not m.any():
                out[i] = _empty_mask_failure()
                continue
            hole = dilate(m, c["dilate_px"])
            win, img, mk = crop_to_window(np.ascontiguousarray(im), hole, mask_box(hole), c["context"], c["resolution"])
            text = (str(e.get("edit_phrase") or "").strip() or p) if c["text"] == "edit_phrase" else p
            todo.append((i, hole, win, img, mk, text))
        if todo:
            r = c["resolution"]
            with torch.inference_mode():
                res = gt.pipe(prompt=[t[5] for t in todo],
                              negative_prompt=[c["negative_prompt"]] * len(todo) if c["negative_prompt"] else None,
                              image=[t[3] for t in todo], mask_image=[t[4] for t in todo], height=r, width=r,
                              strength=1.0, num_inference_steps=c["steps"], guidance_scale=c["guidance_scale"],
                              generator=seeded_generators([seeds[t[0]] for t in todo]), output_type="np")
            for (i, hole, win, _, _, _), g in zip(todo, res.images):
                src = np.ascontiguousarray(images[i])
                gen = uncrop(src, win, np.asarray(g, dtype=np.float32))
                out[i] = paste_back(src, gen, hole, feather_px=c["feather_px"])
        return out
