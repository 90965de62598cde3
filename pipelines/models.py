"""Model plumbing shared by the diffusion pipelines and the filters: where a model comes from,
whether it is the right kind, how it is loaded and put on a device.

A model is given as a local path or a Hugging Face hub id (``--pbe-model``, ``--sd-model``,
``--inpaint-model``, ``--clip-model``). Steps, each cheap before the next:

1. ``resolve_source``: a local path must exist; a hub id is looked up in the local hub cache when
   ``local_files_only`` (the default of ``refcoco-edit build``: nothing is ever downloaded unless
   asked for with ``--no-local-files-only``). Failures raise ``ModelError`` (``ModelUnavailable``
   for a hub id that is not cached), one line each.
2. ``validate_kind``: the model's JSON configs (``model_index.json``, ``unet/config.json``,
   ``config.json``) are read — no torch, no weights — and checked against the kind asked for
   (Stable Diffusion text-to-image: a 4-channel UNet; SD inpainting and Paint-by-Example: a
   9-channel UNet; Paint-by-Example: an ``image_encoder``; CLIP: ``model_type == "clip"``).
3. ``load_diffusers``: ``from_pretrained`` with ``local_files_only``, ``torch_dtype``; the pipeline
   is then moved to the device, gets SDPA attention, channels-last UNet/VAE and optionally
   ``torch.compile``; loaded pipelines are cached per process (the BLD replace and attribute
   pipelines share one SD model).

Paint-by-Example lives in ``diffusers.pipelines.deprecated.paint_by_example``. The hub checkpoint
(Fantasy-Studio/Paint-by-Example) names its image encoder ``["paint_by_example",
"PaintByExampleImageEncoder"]`` in ``model_index.json``, a name diffusers resolves through
``diffusers.pipelines.paint_by_example`` — which no longer exists. ``install_pbe_alias`` points that
name at the deprecated module (before any Paint-by-Example pipeline is built or loaded, so that a
pipeline saved by us writes the same name as the hub's). Checkpoints saved without the alias name
it ``["diffusers", "PaintByExampleImageEncoder"]``, which diffusers cannot resolve: for them
``load_diffusers`` assembles the pipeline from its component folders.

torch, diffusers and transformers are imported inside the functions that need them.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Tuple

__all__ = [
    "ModelError", "ModelUnavailable", "ModelSource", "KINDS", "resolve_source", "validate_kind", "check_model",
    "resolve_device", "resolve_dtype", "Runtime", "load_diffusers", "install_pbe_alias", "clear_cache",
]

# kind -> (what it is, in words)
KINDS: Dict[str, str] = {
    "sd": "a Stable Diffusion text-to-image model (diffusers layout, 4-channel UNet)",
    "sd-inpaint": "a Stable Diffusion inpainting model (diffusers layout, 9-channel UNet)",
    "pbe": "a Paint-by-Example model (diffusers layout: image_encoder + 9-channel UNet)",
    "clip": "a CLIP model (transformers layout, model_type clip)",
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


class ModelError(ValueError):
    """A model cannot be used: missing, of the wrong kind, or unloadable. One-line message."""


class ModelUnavailable(ModelError):
    """A hub id that is not in the local cache while ``local_files_only`` (optional models —
    CLIP for the filters — are then skipped with this message as the reason)."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model is: ``spec`` as given, ``local`` its folder/file when on disk (a local path or
    the cached snapshot of a hub id), ``hub_id`` when it names a hub repository."""

    spec: str
    local: Optional[Path]
    hub_id: Optional[str]

    @property
    def load_arg(self) -> str:
        """What to pass to ``from_pretrained``."""
        return str(self.local) if self.local is not None and self.hub_id is None else str(self.hub_id or self.spec)


def looks_like_path(spec: str) -> bool:
    """True when ``spec`` can only be a file-system path (absolute, ./, ~, a file suffix, or more
    than one slash); a hub id is ``name`` or ``namespace/name``."""
    s = str(spec)
    if s.startswith(("/", ".", "~")) or os.path.isabs(s) or "\\" in s:
        return True
    if s.endswith((".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".json")):
        return True
    return not _HUB_ID.match(s)


def _hub_file(repo_id: str, filename: str, local_files_only: bool) -> Optional[Path]:
    """A file of a hub repository from the local cache (or downloaded, when allowed)."""
    from huggingface_hub import try_to_load_from_cache

    got = try_to_load_from_cache(repo_id, filename)
    if isinstance(got, str):
        return Path(got)
    if local_files_only:
        return None
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename))
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one line for the user
        raise ModelError(f"cannot fetch {filename} of {repo_id!r} from the hub: {type(e).__name__}: {e}") from None


def resolve_source(spec: Optional[str], what: str, local_files_only: bool = True, index_file: str = "model_index.json") -> ModelSource:
    """Find model ``spec`` (a local path or hub id) for the option ``what`` (e.g. ``--sd-model``)."""
    if spec is None or not str(spec).strip():
        raise ModelError(f"{what}: no model given")
    spec = str(spec).strip()
    p = Path(os.path.expanduser(spec))
    if p.exists():
        return ModelSource(spec, p, None)
    if looks_like_path(spec):
        raise ModelError(f"{what} {spec}: no such file or folder")
    got = _hub_file(spec, index_file, local_files_only)
    if got is None:
        raise ModelUnavailable(
            f"{what} {spec}: not a local path and not in the local Hugging Face cache "
            f"(download it first, e.g. `hf download {spec}`, give a local folder, or pass --no-local-files-only)"
        )
    return ModelSource(spec, got.parent, spec)


def _read_json(src: ModelSource, rel: str, local_files_only: bool) -> Optional[Dict[str, Any]]:
    if src.hub_id is not None:
        path = _hub_file(src.hub_id, rel, local_files_only)
    else:
        path = (src.local / rel) if src.local is not None else None
    if path is None or not Path(path).is_file():
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise ModelError(f"{src.spec}: {rel} is not valid JSON ({e})") from None
    return data if isinstance(data, dict) else None


def validate_kind(src: ModelSource, kind: str, what: str, local_files_only: bool = True) -> Dict[str, Any]:
    """Check from its JSON configs alone that ``src`` is a model of ``kind``; returns a summary
    (class name, UNet input channels, ...) or raises ``ModelError`` saying what it is instead."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(KINDS)}")
    if src.hub_id is None and src.local is not None and src.local.is_file():
        raise ModelError(f"{what} {src.spec}: is a file; expected {KINDS[kind]} (a folder)")
    if kind == "clip":
        cfg = _read_json(src, "config.json", local_files_only)
        if cfg is None:
            raise ModelError(f"{what} {src.spec}: no config.json; expected {KINDS[kind]}")
        if cfg.get("model_type") != "clip":
            raise ModelError(f"{what} {src.spec}: model_type is {cfg.get('model_type')!r}; expected {KINDS[kind]}")
        return {"model_type": "clip", "architectures": cfg.get("architectures")}
    index = _read_json(src, "model_index.json", local_files_only)
    if index is None:
        raise ModelError(f"{what} {src.spec}: no model_index.json; expected {KINDS[kind]}")
    cls = str(index.get("_class_name", "?"))
    unet_cfg = _read_json(src, "unet/config.json", local_files_only) if "unet" in index else None
    if unet_cfg is None:
        raise ModelError(f"{what} {src.spec}: a {cls} without a UNet; expected {KINDS[kind]}")
    in_ch = int(unet_cfg.get("in_channels", -1))
    has = {k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v and v[0] is not None}
    summary = {"class_name": cls, "unet_in_channels": in_ch, "components": sorted(has)}
    want_ch = 4 if kind == "sd" else 9
    problems = []
    if in_ch != want_ch:
        problems.append(f"its UNet takes {in_ch} input channels, not {want_ch}")
    if kind == "pbe":
        if "image_encoder" not in has:
            problems.append("it has no image_encoder")
    else:
        if not {"text_encoder", "tokenizer"} <= has:
            problems.append("it has no text_encoder/tokenizer")
        if "image_encoder" in has and "PaintByExample" in cls:
            problems.append("it is a Paint-by-Example model")
    if not {"vae", "scheduler"} <= has:
        problems.append("it has no vae/scheduler")
    if problems:
        raise ModelError(f"{what} {src.spec}: a {cls} where {'; '.join(problems)}; expected {KINDS[kind]}")
    return summary


def check_model(spec: Optional[str], kind: str, what: str, local_files_only: bool = True) -> Tuple[ModelSource, Dict[str, Any]]:
    """``resolve_source`` + ``validate_kind`` (no torch): the up-front check of a build."""
    src = resolve_source(spec, what, local_files_only, "config.json" if kind == "clip" else "model_index.json")
    return src, validate_kind(src, kind, what, local_files_only)


# ----------------------------------------------------------------------------------------------
# device, dtype, loading
# ----------------------------------------------------------------------------------------------
DTYPES = ("auto", "fp32", "fp16", "bf16")


def resolve_device(device: str = "auto") -> Any:
    """``auto`` -> cuda when available, else cpu; an unavailable device is a ``ModelError``."""
    import torch

    d = str(device or "auto").lower()
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(d)
    except (RuntimeError, ValueError) as e:
        raise ModelError(f"--device {device}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"--device {device}: CUDA is not available on this machine")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelError(f"--device {device}: MPS is not available on this machine")
    return dev


def resolve_dtype(dtype: str, device: Any) -> Any:
    """``auto`` -> float16 on CUDA (bfloat16 where fp16 is unsupported), float32 elsewhere."""
    import torch

    d = str(dtype or "auto").lower()
    if d not in DTYPES:
        raise ModelError(f"--dtype {dtype}: choose from {', '.join(DTYPES)}")
    if d == "auto":
        return torch.float16 if getattr(device, "type", str(device)) == "cuda" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[d]


@dataclass(frozen=True)
class Runtime:
    """How models run: device, dtype, hub policy and speed switches."""

    device: str = "auto"
    dtype: str = "auto"
    local_files_only: bool = True
    channels_last: bool = True
    compile: bool = False
    batch_size: int = 4

    def torch_device(self) -> Any:
        return resolve_device(self.device)

    def torch_dtype(self) -> Any:
        return resolve_dtype(self.dtype, self.torch_device())


_PBE_ALIAS = "diffusers.pipelines.paint_by_example"


def install_pbe_alias() -> Any:
    """Make ``diffusers.pipelines.paint_by_example`` the deprecated Paint-by-Example module (see the
    module docstring); idempotent. Returns the module."""
    import sys

    import diffusers.pipelines as pipelines_pkg
    from diffusers.pipelines.deprecated import paint_by_example as pbe_mod

    if sys.modules.get(_PBE_ALIAS) is not pbe_mod:
        sys.modules[_PBE_ALIAS] = pbe_mod
    if getattr(pipelines_pkg, "paint_by_example", None) is not pbe_mod:
        setattr(pipelines_pkg, "paint_by_example", pbe_mod)
    return pbe_mod


def _load_pbe_components(src: ModelSource, runtime: "Runtime", dtype: Any) -> Any:
    """A Paint-by-Example pipeline assembled from its component folders (for checkpoints whose
    ``model_index.json`` names the encoder in a way diffusers cannot resolve)."""
    import diffusers
    from transformers import CLIPImageProcessor

    mod = install_pbe_alias()
    common = dict(local_files_only=runtime.local_files_only)
    sched_cfg = _read_json(src, "scheduler/scheduler_config.json", runtime.local_files_only) or {}
    sched_cls = getattr(diffusers, str(sched_cfg.get("_class_name", "PNDMScheduler")))
    return mod.PaintByExamplePipeline(
        vae=diffusers.AutoencoderKL.from_pretrained(src.load_arg, subfolder="vae", **common, **dtype_kwargs(dtype)),
        image_encoder=mod.PaintByExampleImageEncoder.from_pretrained(src.load_arg, subfolder="image_encoder", **common,
                                                                     **dtype_kwargs(dtype)),
        unet=diffusers.UNet2DConditionModel.from_pretrained(src.load_arg, subfolder="unet", **common, **dtype_kwargs(dtype)),
        scheduler=sched_cls.from_pretrained(src.load_arg, subfolder="scheduler", **common),
        safety_checker=None,
        feature_extractor=CLIPImageProcessor.from_pretrained(src.load_arg, subfolder="feature_extractor", **common),
        requires_safety_checker=False,
    )


_CACHE: Dict[Tuple[Any, ...], Any] = {}


def clear_cache() -> None:
    """Forget the loaded pipelines of this process (tests; freeing GPU memory)."""
    _CACHE.clear()


def _pipeline_class(kind: str) -> Any:
    if kind == "pbe":
        return install_pbe_alias().PaintByExamplePipeline
    if kind == "sd-inpaint":
        from diffusers import StableDiffusionInpaintPipeline

        return StableDiffusionInpaintPipeline
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline


def dtype_kwargs(dtype: Any) -> Dict[str, Any]:
    """``from_pretrained``'s dtype argument: ``dtype=`` where diffusers/transformers take it (newer
    releases deprecate ``torch_dtype=``), ``torch_dtype=`` before."""
    import importlib

    try:
        mod = importlib.import_module("diffusers.utils.deprecation_utils")
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype} if hasattr(mod, "_resolve_dtype") else {"torch_dtype": dtype}


def optimize(pipe: Any, runtime: Runtime) -> Any:
    """Device, SDPA attention, channels-last UNet/VAE, optional ``torch.compile`` of the UNet."""
    import torch

    device = runtime.torch_device()
    pipe.to(device)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    unet = getattr(pipe, "unet", None)
    if unet is not None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        unet.set_attn_processor(AttnProcessor2_0())  # scaled_dot_product_attention
        if runtime.channels_last:
            unet.to(memory_format=torch.channels_last)
        if runtime.compile:
            pipe.unet = torch.compile(unet, mode="max-autotune-no-cudagraphs", fullgraph=False)
    vae = getattr(pipe, "vae", None)
    if vae is not None and runtime.channels_last:
        vae.to(memory_format=torch.channels_last)
    return pipe


def load_diffusers(spec: str, kind: str, runtime: Runtime, what: str = "") -> Any:
    """Load (once per process) the diffusers pipeline of ``kind`` from ``spec`` on the runtime's
    device and dtype. Raises ``ModelError`` for every problem, with one line."""
    what = what or f"{kind} model"
    src, _ = check_model(spec, kind, what, runtime.local_files_only)
    device, dtype = runtime.torch_device(), runtime.torch_dtype()
    key = (kind, src.load_arg, str(device), str(dtype), runtime.channels_last, runtime.compile)
    if key in _CACHE:
        return _CACHE[key]
    cls = _pipeline_class(kind)
    kwargs: Dict[str, Any] = dict(local_files_only=runtime.local_files_only, safety_checker=None,
                                  requires_safety_checker=False, **dtype_kwargs(dtype))
    try:
        index = _read_json(src, "model_index.json", runtime.local_files_only) or {}
        if kind == "pbe" and list(index.get("image_encoder") or [])[:1] != ["paint_by_example"]:
            # saved without the alias (["diffusers", ...]): diffusers cannot resolve that name
            pipe = _load_pbe_components(src, runtime, dtype)
        else:
            pipe = cls.from_pretrained(src.load_arg, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, ImportError, AttributeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(f"{what} {spec}: cannot be loaded as {KINDS[kind]}: {type(e).__name__}: {first}") from None
    pipe = optimize(pipe, runtime)
    _CACHE[key] = pipe
    return pipe


# ----------------------------------------------------------------------------------------------
# the shared frame of the diffusion ground-truth pipelines
# ----------------------------------------------------------------------------------------------
import numpy as np  # noqa: E402  (numpy is a core dependency; kept below the torch-free helpers)

from refcoco_edit.pipelines.base import EditRequest, GTPipeline, PipelineError, PipelineOutput  # noqa: E402
from refcoco_edit.pipelines.masks import check_output, crop_window, mask_box, paste_back  # noqa: E402


@dataclass
class Job:
    """One request prepared for a model call: the crop window, the model-resolution inputs, and
    whatever the pipeline needs to finish it."""

    request: EditRequest
    window: Tuple[int, int, int, int]  # x0, y0, x1, y1 in the source image
    region: np.ndarray  # HxW bool: where the model is asked to change things (full image)
    image: Any  # PIL RGB crop at the working resolution
    mask: Any  # PIL L crop mask at the working resolution (255 = edit)
    extra: Dict[str, Any]


class DiffusionGTPipeline(GTPipeline):
    """Base of the diffusion ground-truth pipelines: lazy model loading, the crop window at a
    working resolution, batching over requests, and the exact paste-back through M_e.

    Subclasses set ``model_kind``/``model_option`` and implement ``prepare`` (request -> Job),
    ``run_model`` (jobs -> generated crops, one model call per batch) and ``finish`` (job +
    full-size generated image -> PipelineOutput via ``self.paste``).
    """

    model_kind: str = "sd"
    model_option: str = "--sd-model"
    uses: ClassVar[Tuple[str, ...]] = ("runtime",)
    build_settings: ClassVar[Mapping[str, str]] = {
        "num_inference_steps": "num_inference_steps", "guidance_scale": "guidance_scale",
        "resolution": "resolution", "context": "context"}

    def __init__(
        self,
        model: str,
        runtime: Optional[Runtime] = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        resolution: int = 512,
        context: float = 1.5,
        feather_px: int = 4,
        sam: Any = None,
    ) -> None:
        if int(num_inference_steps) < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if int(resolution) < 16 or int(resolution) % 8:
            raise ValueError(f"resolution must be a multiple of 8 and >= 16, got {resolution}")
        self.model = str(model)
        self.runtime = runtime or Runtime()
        self.num_inference_steps = int(num_inference_steps)
        self.guidance_scale = float(guidance_scale)
        self.resolution = int(resolution)
        self.context = float(context)
        self.feather_px = int(feather_px)
        self.sam = sam
        self._pipe: Any = None

    # -- model ---------------------------------------------------------------------------------
    @property
    def pipe(self) -> Any:
        """The loaded diffusers pipeline (loaded on first use; ``ModelError`` when it cannot be)."""
        if self._pipe is None:
            self._pipe = load_diffusers(self.model, self.model_kind, self.runtime, self.model_option)
        return self._pipe

    def load(self) -> "DiffusionGTPipeline":
        """Load the model now (the build does this before any shard runs)."""
        _ = self.pipe
        return self

    def base_params(self) -> Dict[str, Any]:
        """What produced a candidate (stored on it): model, steps, guidance, resolution, dtype."""
        return {
            "model": self.model, "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale, "resolution": self.resolution, "context": self.context,
            "dtype": str(self.runtime.torch_dtype()).replace("torch.", ""), "feather_px": self.feather_px,
            "sam": None if self.sam is None else getattr(self.sam, "sam_type", "sam"),
        }

    # -- geometry ------------------------------------------------------------------------------
    def crop(self, image: np.ndarray, mask: np.ndarray, region_box: Tuple[int, int, int, int]) -> Tuple[Tuple[int, int, int, int], Any, Any]:
        """The square context window around ``region_box`` and the image/mask crops resized to
        the working resolution (PIL)."""
        from PIL import Image

        win = crop_window(region_box, image.shape, self.context)
        x0, y0, x1, y1 = win
        r = self.resolution
        img = Image.fromarray(np.ascontiguousarray(image[y0:y1, x0:x1])).resize((r, r), Image.LANCZOS)
        m = Image.fromarray((np.asarray(mask)[y0:y1, x0:x1] * 255).astype(np.uint8)).resize((r, r), Image.NEAREST)
        return win, img, m

    @staticmethod
    def uncrop(source: np.ndarray, window: Tuple[int, int, int, int], crop: np.ndarray) -> np.ndarray:
        """The source with ``window`` replaced by the generated crop resized back to it."""
        import cv2

        x0, y0, x1, y1 = window
        out = source.copy()
        c = np.asarray(crop)
        if c.dtype != np.uint8:
            c = np.clip(np.rint(c * 255.0), 0, 255).astype(np.uint8)
        interp = cv2.INTER_AREA if c.shape[0] > (y1 - y0) else cv2.INTER_CUBIC
        out[y0:y1, x0:x1] = cv2.resize(c, (x1 - x0, y1 - y0), interpolation=interp)
        return out

    def paste(self, request: EditRequest, generated: np.ndarray, m_e: np.ndarray, params: Dict[str, Any],
              exemplar: Optional[np.ndarray] = None) -> PipelineOutput:
        """Paste back through the feathered M_e (exact outside), verify the contract, record.

        Both run on the box of M_e grown by ``feather_px + 2`` only: outside it the output is the
        source by construction, and the feathered alpha of a pixel only depends on the mask
        within ``feather_px`` of it, so the result is the full-image ``paste_back``'s, bit for
        bit, at a fraction of the cost on large photos.
        """
        src = request.image
        if not np.asarray(m_e).any():
            raise PipelineError("no_change", "the edit mask is empty")
        x0, y0, x1, y1 = mask_box(m_e)
        g = self.feather_px + 2
        x0, y0, x1, y1 = max(0, x0 - g), max(0, y0 - g), min(src.shape[1], x1 + g), min(src.shape[0], y1 + g)
        out = src.copy()
        out[y0:y1, x0:x1] = paste_back(src[y0:y1, x0:x1], generated[y0:y1, x0:x1], m_e[y0:y1, x0:x1],
                                       feather_px=self.feather_px)
        stats = check_output(src[y0:y1, x0:x1], out[y0:y1, x0:x1], m_e[y0:y1, x0:x1])
        params = {**self.base_params(), **params, "seed": int(request.seed)}
        params["stats"] = {k: round(float(v), 4) for k, v in stats.items()}
        return PipelineOutput(image=out, edit_mask=m_e, params=params, exemplar=exemplar)

    @staticmethod
    def changed_in_window(job: "Job", generated: np.ndarray, threshold: float = 12.0) -> np.ndarray:
        """``changed_region`` of the source and the generated image, computed on the window only
        (outside it the generated image is the source)."""
        from refcoco_edit.pipelines.masks import changed_region

        x0, y0, x1, y1 = job.window
        out = np.zeros(generated.shape[:2], bool)
        out[y0:y1, x0:x1] = changed_region(job.request.image[y0:y1, x0:x1], generated[y0:y1, x0:x1], threshold)
        return out

    # -- the batched entry points ----------------------------------------------------------------
    def prepare(self, request: EditRequest) -> Job:  # pragma: no cover - abstract
        raise NotImplementedError

    def run_model(self, jobs: List[Job]) -> List[np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def finish(self, job: Job, generated: np.ndarray) -> PipelineOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def generate_batch(self, requests: List[EditRequest]) -> List[Any]:
        """List in, list out: a ``PipelineOutput`` or the ``PipelineError`` of each request.

        1. check and prepare every request (a bad one fails alone);
        2. run the model over the prepared jobs in batches of ``runtime.batch_size``;
        3. map each generated crop back, build M_e, paste back and check.
        """
        results: List[Any] = [None] * len(requests)
        jobs: List[Tuple[int, Job]] = []
        for i, r in enumerate(requests):  # 1
            try:
                self.check_inputs(r)
                jobs.append((i, self.prepare(r)))
            except PipelineError as e:
                results[i] = e
        bs = max(1, int(self.runtime.batch_size))
        for k in range(0, len(jobs), bs):  # 2
            chunk = jobs[k:k + bs]
            crops = self.run_model([j for _, j in chunk])
            for (i, job), crop in zip(chunk, crops):  # 3
                try:
                    generated = self.uncrop(job.request.image, job.window, crop)
                    results[i] = self.finish(job, generated)
                except PipelineError as e:
                    results[i] = e
        return results

    def generate(self, request: EditRequest) -> PipelineOutput:
        (res,) = self.generate_batch([request])
        if isinstance(res, Exception):
            raise res
        return res

    def __call__(self, requests: List[EditRequest]) -> List[PipelineOutput]:
        """The ``GTPipeline`` entry point: batched; the first failing request raises."""
        outs = self.generate_batch(list(requests))
        for o in outs:
            if isinstance(o, Exception):
                raise o
        return outs

    # -- helpers for subclasses ------------------------------------------------------------------
    def generators(self, jobs: List[Job]) -> List[Any]:
        """One CPU ``torch.Generator`` per job, seeded by its request: a sample's noise does not
        depend on the batch it runs in, nor on the device."""
        import torch

        return [torch.Generator("cpu").manual_seed(int(j.request.seed) % (2 ** 63)) for j in jobs]
