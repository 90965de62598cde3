"""Loading diffusers pipelines: checked, on the runtime's device and dtype, cached per process.

``load_diffusers``: ``check_model`` first (no torch), then ``from_pretrained`` with
``local_files_only`` and the dtype; the pipeline is then moved to the device, gets SDPA
attention, channels-last UNet/VAE and optionally ``torch.compile`` (``optimize``); loaded
pipelines are cached per process (the BLD replace and attribute pipelines share one SD model).
A pickled ``.bin`` is read by diffusers with ``torch.load(weights_only=True)``: a pickle that
holds code makes the load fail with one line (``ModelError``), and it does not run
(``tests/test_security.py``).

Paint-by-Example lives in ``diffusers.pipelines.deprecated.paint_by_example``. The hub checkpoint
(Fantasy-Studio/Paint-by-Example) names its image encoder ``["paint_by_example",
"PaintByExampleImageEncoder"]`` in ``model_index.json``, a name diffusers resolves through
``diffusers.pipelines.paint_by_example`` — which no longer exists. ``install_pbe_alias`` points that
name at the deprecated module (before any Paint-by-Example pipeline is built or loaded, so that a
pipeline saved by us writes the same name as the hub's). Checkpoints saved without the alias name
it ``["diffusers", "PaintByExampleImageEncoder"]``, which diffusers cannot resolve: for them
``load_diffusers`` assembles the pipeline from its component folders.

torch and diffusers are imported inside the functions that need them.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

from refcoco_edit.models.runtime import Runtime, dtype_kwargs
from refcoco_edit.models.source import KINDS, ModelError, ModelSource, check_model, read_json

__all__ = ["install_pbe_alias", "load_diffusers", "optimize", "clear_cache"]

_PBE_ALIAS = "diffusers.pipelines.paint_by_example"
_CACHE: Dict[Tuple[Any, ...], Any] = {}


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


def _load_pbe_components(src: ModelSource, runtime: Runtime, dtype: Any) -> Any:
    """A Paint-by-Example pipeline assembled from its component folders (for checkpoints whose
    ``model_index.json`` names the encoder in a way diffusers cannot resolve)."""
    import diffusers
    from transformers import CLIPImageProcessor

    mod = install_pbe_alias()
    common = dict(local_files_only=runtime.local_files_only)
    sched_cfg = read_json(src, "scheduler/scheduler_config.json", runtime.local_files_only) or {}
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
        index = read_json(src, "model_index.json", runtime.local_files_only) or {}
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
