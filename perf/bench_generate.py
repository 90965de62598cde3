"""Benchmark: diffusion ground-truth generation, our batched pipelines vs a naive diffusers loop.

``run(quick=False) -> dict`` (``python -m perf --only generate``) measures, in the same run:

* **with CUDA** — images/s at 512x512, 50 DDIM steps, on a full-size Stable Diffusion 1.5
  architecture with random weights (UNet 320/640/1280/1280 with cross-attention 768, the SD VAE,
  a 12-layer CLIP-L text encoder): ``value`` = our Blended Latent Diffusion pipeline
  (``bld-attribute``: batches of ``batch_size`` requests per call, fp16, SDPA, channels-last,
  optional ``torch.compile`` with ``REFCOCO_EDIT_BENCH_COMPILE=1``, crop/paste-back/M_e
  included) vs ``baseline`` = a naive loop calling diffusers' ``StableDiffusionPipeline`` one image
  at a time in its default float32. ``ratio`` = baseline seconds per image / ours (higher is
  better). The goal of the issue: >= 4 img/s per H100 and >= 2.5x the naive loop.
* **without CUDA** (CPU machines, CI) — full-size models are far too slow, so the figure is our
  *per-sample overhead outside model compute*: tiny random models (tests/support/tiny_models.py), 64 px,
  10 steps; the time spent inside the UNet, VAE, text and image encoders is measured with forward
  hooks and subtracted from the wall time; ``value_s`` = our overhead per sample (all three
  pipelines: Paint-by-Example, BLD, SD inpainting, averaged), ``baseline_s`` = the same
  measure for a naive loop of diffusers' ``StableDiffusionInpaintPipeline`` calls, one image at a
  time, with the same crop/paste work done by hand. Both include crop, resize, tokenisation,
  scheduler arithmetic, M_e, feathered paste-back and the contract check.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _requests(n: int, edit_type: str, h: int = 480, w: int = 640, seed: int = 0) -> List[Any]:
    """``n`` synthetic edit requests (a smooth photo-like background with one object)."""
    from refcoco_edit.pipelines.base import EditRequest

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for i in range(n):
        img = np.dstack([90 + 60 * yy / h, 140 + 40 * np.sin(xx / 19.0 + i), 80 + 30 * xx / w])
        cx, cy = w * (0.3 + 0.4 * rng.random()), h * (0.3 + 0.4 * rng.random())
        mask = ((xx - cx) / (w / 8)) ** 2 + ((yy - cy) / (h / 6)) ** 2 <= 1
        img[mask] = (200, 60, 50)
        ex = np.zeros((60, 40, 4), np.uint8)
        ex[..., :3] = (40, 80, 220)
        ex[5:55, 5:35, 3] = 255
        out.append(EditRequest(sample_id=f"b{i}", edit_type=edit_type, image=np.clip(img, 0, 255).astype(np.uint8),
                               mask=mask, bbox=[0, 0, 1, 1], prompt="p", edit_phrase="red", edit_target="red",
                               seed=1000 + i, category="cow", exemplar=ex))
    return out


class ModelTimer:
    """Adds up the wall time spent inside given modules' forward calls (CUDA-synchronised)."""

    def __init__(self, modules: List[Any], cuda: bool = False) -> None:
        self.total = 0.0
        self._t0: List[float] = []
        self.cuda = cuda
        self.handles = []
        for m in modules:
            self.handles.append(m.register_forward_pre_hook(self._pre))
            self.handles.append(m.register_forward_hook(self._post))

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def _pre(self, *_: Any) -> None:
        self._sync()
        self._t0.append(time.perf_counter())

    def _post(self, *_: Any) -> None:
        self._sync()
        self.total += time.perf_counter() - self._t0.pop()

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _model_modules(pipe: Any) -> List[Any]:
    mods = [pipe.unet, pipe.vae.encoder, pipe.vae.decoder]
    for name in ("text_encoder", "image_encoder"):
        if getattr(pipe, name, None) is not None:
            mods.append(getattr(pipe, name))
    return mods


def _timed(fn: Callable[[], Any], pipe: Any, cuda: bool = False) -> Tuple[float, float]:
    """(wall seconds, seconds inside model forwards) of one call."""
    t = ModelTimer(_model_modules(pipe), cuda)
    try:
        t0 = time.perf_counter()
        fn()
        if cuda:
            import torch

            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    finally:
        t.close()
    return wall, t.total


# ----------------------------------------------------------------------------------------------
# CPU: per-sample overhead with tiny models
# ----------------------------------------------------------------------------------------------
def _cpu_overhead(quick: bool) -> Dict[str, Any]:
    sys.path.insert(0, str(REPO / "tests"))
    from support.tiny_models import tiny  # noqa: E402  (builds the tiny models once, offline)

    import torch
    from PIL import Image

    from refcoco_edit.pipelines.base import get_pipeline
    from refcoco_edit.pipelines.masks import check_output, crop_window, dilate, mask_box, paste_back
    from refcoco_edit.models import Runtime, load_diffusers

    torch.manual_seed(0)
    n = 4 if quick else 8  # one batch: the per-sample overhead needs no more (keeps `python -m perf` < 5 min)
    steps, res = 10, 64
    rt = Runtime(device="cpu", batch_size=8)
    ours: Dict[str, Dict[str, float]] = {}
    for name, model, et in (("bld-attribute", "sd", "attribute"), ("pbe-replace", "pbe", "replace"),
                            ("sd-inpaint-remove", "sd-inpaint", "remove")):
        pipe = get_pipeline(name, model=str(tiny(model)), runtime=rt, num_inference_steps=steps, resolution=res)
        reqs = _requests(n, et)
        pipe.generate_batch(reqs[:2])  # warm-up (first-call allocations)
        wall, model_s = _timed(lambda: pipe.generate_batch(reqs), pipe.pipe)
        ours[name] = {"wall_per_sample_s": wall / n, "model_per_sample_s": model_s / n,
                      "overhead_per_sample_s": (wall - model_s) / n}
    # the naive loop: diffusers' inpainting pipeline, one image per call, the same crop/paste by hand
    naive = load_diffusers(str(tiny("sd-inpaint")), "sd-inpaint", Runtime(device="cpu", channels_last=False))
    reqs = _requests(n, "remove")
    gen = torch.Generator("cpu")

    def naive_loop() -> None:
        for r in reqs:
            hole = dilate(r.mask, 6)
            x0, y0, x1, y1 = crop_window(mask_box(hole), r.image.shape, 1.5)
            crop = Image.fromarray(r.image[y0:y1, x0:x1]).resize((res, res))
            m = Image.fromarray((hole[y0:y1, x0:x1] * 255).astype(np.uint8)).resize((res, res))
            out = naive(prompt="background", negative_prompt=r.category, image=crop, mask_image=m, height=res, width=res,
                        num_inference_steps=steps, generator=gen.manual_seed(r.seed)).images[0]
            full = r.image.copy()
            full[y0:y1, x0:x1] = np.asarray(out.resize((x1 - x0, y1 - y0)))
            res_img = paste_back(r.image, full, hole, 4)
            check_output(r.image, res_img, hole)

    naive_loop_first = reqs[:2]
    for r in naive_loop_first:  # warm-up
        naive(prompt="x", image=Image.fromarray(r.image[:res, :res]), mask_image=Image.fromarray((r.mask[:res, :res] * 255).astype(np.uint8)),
              height=res, width=res, num_inference_steps=2)
    wall, model_s = _timed(naive_loop, naive)
    base = {"wall_per_sample_s": wall / n, "model_per_sample_s": model_s / n, "overhead_per_sample_s": (wall - model_s) / n}
    ours_overhead = float(np.mean([v["overhead_per_sample_s"] for v in ours.values()]))
    return {
        "name": "generate",
        "mode": "cpu-overhead",
        "baseline": "naive one-image StableDiffusionInpaintPipeline loop",
        "unit": "s/sample outside models",
        "better": "higher",
        "notes": "CPU: overhead outside model compute, tiny models 64px (img/s at 512px needs CUDA)",
        "what": "per-sample seconds outside model compute (tiny models, 64 px, 10 steps); ours = mean over "
                "pbe-replace, bld-attribute, sd-inpaint-remove (batch 8); baseline = naive one-image "
                "StableDiffusionInpaintPipeline loop",
        "samples": n,
        "baseline_s": round(base["overhead_per_sample_s"], 5),
        "value_s": round(ours_overhead, 5),
        "ratio": round(base["overhead_per_sample_s"] / max(ours_overhead, 1e-9), 3),
        "ours": {k: {kk: round(vv, 5) for kk, vv in v.items()} for k, v in ours.items()},
        "naive": {k: round(v, 5) for k, v in base.items()},
        "torch_threads": torch.get_num_threads(),
    }


# ----------------------------------------------------------------------------------------------
# CUDA: images/s at 512 px, 50 steps, full-size SD 1.5 architecture, random weights
# ----------------------------------------------------------------------------------------------
def sd15_components(dtype: Any, device: Any) -> Dict[str, Any]:
    """Full-size SD 1.5 components with random weights (no download) and a byte-level tokenizer."""
    import tempfile

    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, str(REPO / "tests"))
    from support.tiny_models import tiny_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                        block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4)
    tok = tiny_tokenizer(Path(tempfile.mkdtemp(prefix="bench-tok-")))
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                        num_hidden_layers=12, max_position_embeddings=77, vocab_size=49408,
                                        projection_dim=768, eos_token_id=len(tok) - 1, bos_token_id=len(tok) - 2))
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    return dict(unet=unet.to(device, dtype), vae=vae.to(device, dtype), text_encoder=text.to(device, dtype),
                tokenizer=tok, scheduler=sched)


def _cuda_throughput(quick: bool, device: str = "cuda", res: int = 512, steps: int = 50, dtype: str = "fp16") -> Dict[str, Any]:
    """The GPU measurement (``device``/``res``/``steps``/``dtype`` let it be smoke-run on a CPU)."""
    import torch

    def sync() -> None:
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
    from diffusers import StableDiffusionPipeline

    from refcoco_edit.pipelines.blended_latent import BlendedLatentAttribute
    from refcoco_edit.models import Runtime, optimize

    batch = int(os.environ.get("REFCOCO_EDIT_BENCH_BATCH", "8"))
    compile_ = os.environ.get("REFCOCO_EDIT_BENCH_COMPILE", "0") == "1"
    n_ours = batch * (2 if quick else 6)
    n_naive = 2 if quick else 4
    if quick:
        steps = min(steps, 20)
    # ours: fp16, SDPA, channels-last, batched
    rt = Runtime(device=device, dtype=dtype, batch_size=batch, compile=compile_)
    comps = sd15_components(rt.torch_dtype(), device)
    sd = StableDiffusionPipeline(**comps, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    optimize(sd, rt)
    pipe = BlendedLatentAttribute("random-sd15", rt, num_inference_steps=steps, resolution=res)
    pipe._pipe = sd  # the in-memory random model stands in for a loaded one
    pipe.generate_batch(_requests(batch, "attribute", seed=1))  # warm-up (and compile)
    reqs = _requests(n_ours, "attribute")
    sync()
    t0 = time.perf_counter()
    outs = pipe.generate_batch(reqs)
    sync()
    ours_s = (time.perf_counter() - t0) / n_ours
    failed = sum(isinstance(o, Exception) for o in outs)
    del sd, pipe, comps
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()
    # naive: diffusers' default float32 pipeline, one image per call
    comps = sd15_components(torch.float32, device)
    naive = StableDiffusionPipeline(**comps, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    naive.set_progress_bar_config(disable=True)
    naive(prompt="red car", height=res, width=res, num_inference_steps=2)  # warm-up
    sync()
    t0 = time.perf_counter()
    for i in range(n_naive):
        naive(prompt="a photo of a red car", height=res, width=res, num_inference_steps=steps,
              generator=torch.Generator("cpu").manual_seed(i))
    sync()
    naive_s = (time.perf_counter() - t0) / n_naive
    return {
        "name": "generate",
        "mode": "cuda-throughput",
        "baseline": "naive diffusers StableDiffusionPipeline, 1 image/call, fp32",
        "unit": "s/image",
        "better": "higher",
        "notes": f"512px 50 steps full-size SD1.5: ours {1.0 / ours_s:.2f} img/s vs {1.0 / naive_s:.2f}",
        "what": f"seconds per image at {res}x{res}, {steps} DDIM steps, CFG, full-size SD 1.5 architecture with random "
                f"weights; ours = bld-attribute batch {batch} {dtype} SDPA channels-last compile={compile_}; baseline = naive "
                f"diffusers StableDiffusionPipeline, one image per call, float32",
        "device": torch.cuda.get_device_name(0) if str(device).startswith("cuda") else str(device),
        "baseline_s": round(naive_s, 4),
        "value_s": round(ours_s, 4),
        "ratio": round(naive_s / ours_s, 3),
        "ours_images_per_s": round(1.0 / ours_s, 3),
        "naive_images_per_s": round(1.0 / naive_s, 3),
        "images": {"ours": n_ours, "naive": n_naive, "ours_failed": failed},
    }


def run(quick: bool = False) -> Dict[str, Any]:
    """The benchmark entry point of ``python -m perf``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    import torch

    if torch.cuda.is_available():
        return _cuda_throughput(quick)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared CPU box: one thread gives stable figures
    try:
        return _cpu_overhead(quick)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
