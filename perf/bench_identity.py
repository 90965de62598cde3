"""Benchmark: throughput of the identity metrics (``ref_dino``, ``ref_clip_i``, ``ref_clip_t``,
``obj_dino``, ``obj_clip_i``) of
the reference-based track -- the batched ``ModelMetrics`` path of ``refcoco-edit score`` against a
per-image loop, in the same run, on the same models and views.

    python -m perf --only identity                       # tiny random models on CPU (the default)
    python -m perf.bench_identity --size full --device cuda [--samples 1024] [--batch 256] [--dtype fp16]

``run(quick=False) -> dict`` (``python -m perf``). The models are random-weight architectures built
in code (nothing is downloaded):

* ``tiny``: a ViT (hidden 32, 2 layers, 32 px, patch 8) as DINO and a CLIP (hidden 32, 2+2 layers,
  32 px, patch 4), the test suite's sizes;
* ``full``: DINO ViT-S/16 (hidden 384, 12 layers, 6 heads, 224 px, patch 16, ``ViTImageProcessor``
  224x224 bicubic, ImageNet mean/std) and CLIP ViT-L/14 (vision 1024 x 24 layers, patch 14,
  quick-GELU; text 768 x 12 layers; projection 768; the default ``CLIPImageProcessor``), with
  the byte-level tokenizer of the tests (514 tokens instead of CLIP's 49,408: only the embedding
  table differs, not the compute).

The samples are synthetic (seeded): an output image (256 px on CPU, 512 px with ``full``) with an
ellipse M_e, and an exemplar (square, 3/4 of the output's side) with an ellipse object mask, plus
an edit phrase, and an after photo of the output's size. Both sides compute the same numbers from the same arrays:

* **ours** -- ``ModelMetrics(NAMES)`` (the whole identity family) over chunks of ``batch``
  samples, as the harness calls it per chunk: the object views cut in numpy, every view of the
  chunk through each backbone in batches (the processor's torch path on the model's device),
  texts batched and de-duplicated;
* **baseline** -- a per-image loop, the way DreamBench-style evaluation scripts do it: for each
  sample, each of its views (edited object, reference object, output and after photo in M_e;
  whole output) goes alone through
  the processor (its default numpy path) and the model (batch 1), the edit phrase through the
  tokenizer and the text tower alone, cosines in numpy. Same views (``identity.object_view``),
  same dtype.

The values of the two sides must agree (fp32: 1e-4; fp16/bf16: 2e-2). ``ratio`` = ours / baseline
seconds (lower is better); ``speedup`` its inverse.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NAMES = ("ref_dino", "ref_clip_i", "ref_clip_t", "obj_dino", "obj_clip_i")
PHRASES = ("add a vase", "with a bowl", "add a red cup", "with a teddy bear", "add a bottle")


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------

def _ellipse(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
    ry, rx = rng.uniform(0.12, 0.3) * h, rng.uniform(0.12, 0.3) * w
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _image(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random colour field with some noise (PNG-like content, not white noise)."""
    import cv2

    coarse = rng.integers(0, 256, (6, 6, 3)).astype(np.float32)
    img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 8, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def samples(n: int, side: int, seed: int = 0) -> List[Any]:
    """``n`` synthetic reference-based ``ModelSample``s (output side x side, exemplar 3/4 of it)."""
    from refcoco_edit.benchmark.metrics.model_based import ModelSample

    rng = np.random.default_rng(seed)
    out = []
    ex_side = side * 3 // 4
    for k in range(n):
        o = _image(side, side, rng)
        me = _ellipse(side, side, rng)
        ex = _image(ex_side, ex_side, rng)
        exm = _ellipse(ex_side, ex_side, rng)
        after = _image(side, side, rng)
        out.append(ModelSample(output=o, source=o, edit_mask=me, exemplar=ex, exemplar_mask=exm, reference=after,
                               edit_phrase=PHRASES[k % len(PHRASES)], prompt=PHRASES[k % len(PHRASES)]))
    return out


# ----------------------------------------------------------------------------------------------
# models (random weights, built in code)
# ----------------------------------------------------------------------------------------------

def build_models(size: str, device: Any, dtype: Any) -> Tuple[Any, Any, Any, Any, Any]:
    """(CLIPModel, CLIPImageProcessor, tokenizer, ViTModel, ViT processor) of ``size`` tiny | full."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, ViTConfig, ViTImageProcessor, ViTModel

    if str(REPO / "tests") not in sys.path:
        sys.path.insert(0, str(REPO / "tests"))
    from support.tiny_models import tiny_tokenizer  # the tests' byte-level CLIP tokenizer (offline)

    with tempfile.TemporaryDirectory(prefix="bench-identity-tok-") as d:  # read at construction, then not needed
        tok = tiny_tokenizer(Path(d))
    eos, bos = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|startoftext|>")
    special = dict(bos_token_id=bos, eos_token_id=eos, pad_token_id=eos, vocab_size=len(tok), max_position_embeddings=77)
    if size == "full":
        text = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                    hidden_act="quick_gelu", **special)
        vision = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                      image_size=224, patch_size=14, hidden_act="quick_gelu")
        clip_cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=768)
        clip_proc = CLIPImageProcessor()
        vit_cfg = ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                            image_size=224, patch_size=16, qkv_bias=True, layer_norm_eps=1e-6)
        vit_proc = ViTImageProcessor(size={"height": 224, "width": 224}, resample=3,
                                     image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    else:
        text = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, **special)
        vision = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=32,
                      patch_size=4)
        clip_cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)
        clip_proc = CLIPImageProcessor(crop_size=32, size=32)
        vit_cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                            image_size=32, patch_size=8)
        vit_proc = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.485, 0.456, 0.406],
                                     image_std=[0.229, 0.224, 0.225])
    torch.manual_seed(0)
    clip = CLIPModel(clip_cfg).to(device=device, dtype=dtype).eval()
    torch.manual_seed(1)
    vit = ViTModel(vit_cfg, add_pooling_layer=False).to(device=device, dtype=dtype).eval()
    return clip, clip_proc, tok, vit, vit_proc


# ----------------------------------------------------------------------------------------------
# the two sides
# ----------------------------------------------------------------------------------------------

def ours(mm: Any, data: List[Any], batch: int) -> List[Dict[str, float]]:
    """The harness's path: ``ModelMetrics.compute`` per chunk of ``batch`` samples."""
    out: List[Dict[str, float]] = []
    for i in range(0, len(data), batch):
        out += mm.compute(data[i:i + batch])
    return out


def baseline(data: List[Any], clip: Any, clip_proc: Any, tok: Any, vit: Any, vit_proc: Any) -> List[Dict[str, float]]:
    """One image at a time: processor (numpy path) + model with batch 1 per view, one text at a time."""
    import torch

    from refcoco_edit.benchmark.metrics.identity import edited_region, object_view

    dev = next(clip.parameters()).device
    dt = next(clip.parameters()).dtype

    def unit(t: Any) -> np.ndarray:
        v = t.float().cpu().numpy().astype(np.float64)[0]
        return v / np.linalg.norm(v)

    def dino(img: np.ndarray) -> np.ndarray:
        px = vit_proc(images=img, return_tensors="pt")["pixel_values"].to(dev, dt)
        with torch.inference_mode():
            return unit(vit(pixel_values=px).last_hidden_state[:, 0])

    def clip_img(img: np.ndarray) -> np.ndarray:
        px = clip_proc(images=img, return_tensors="pt")["pixel_values"].to(dev, dt)
        with torch.inference_mode():
            return unit(clip.visual_projection(clip.vision_model(pixel_values=px).pooler_output))

    def clip_txt(text: str) -> np.ndarray:
        t = tok([text], padding=True, truncation=True, max_length=77, return_tensors="pt")
        with torch.inference_mode():
            pooled = clip.text_model(input_ids=t["input_ids"].to(dev), attention_mask=t["attention_mask"].to(dev)).pooler_output
            return unit(clip.text_projection(pooled))

    res = []
    for s in data:
        ed = object_view(s.output, edited_region(s.edit_mask, s.pred_mask))
        rf = object_view(s.exemplar, s.exemplar_mask)
        oe, gt = object_view(s.output, s.edit_mask), object_view(s.reference, s.edit_mask)
        res.append({"ref_dino": float(dino(ed) @ dino(rf)), "ref_clip_i": float(clip_img(ed) @ clip_img(rf)),
                    "ref_clip_t": float(clip_img(s.output) @ clip_txt(s.edit_phrase)),
                    "obj_dino": float(dino(oe) @ dino(gt)), "obj_clip_i": float(clip_img(oe) @ clip_img(gt))})
    return res


def _sync(device: Any) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def measure(size: str = "tiny", device: str = "cpu", n: Optional[int] = None, batch: Optional[int] = None,
            dtype: str = "fp32", n_baseline: Optional[int] = None, repeats: int = 3) -> Dict[str, Any]:
    """Both sides on the same samples and models; the result row of ``perf/results.json``."""
    import torch

    from refcoco_edit.benchmark.metrics.dino import DinoEncoder
    from refcoco_edit.benchmark.metrics.model_based import ModelMetrics
    from refcoco_edit.models import ClipEncoder

    cuda = str(device).startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device here")
    dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    side = 512 if size == "full" else 256
    n = int(n or (1024 if cuda else (64 if size == "tiny" else 8)))
    batch = int(batch or (256 if cuda else 32))
    n_base = int(min(n, n_baseline or (n if not cuda else 128)))
    t = time.perf_counter()
    clip, clip_proc, tok, vit, vit_proc = build_models(size, device, dt)
    build_s = time.perf_counter() - t
    data = samples(n, side)
    mm = ModelMetrics(list(NAMES), {}, device=str(device), batch_size=batch,
                      clip=ClipEncoder(clip, clip_proc, tok, device=device, dtype=dt, batch_size=batch),
                      dino=DinoEncoder(vit, vit_proc, device=device, dtype=dt, batch_size=batch))
    ours(mm, data[:min(n, batch)], batch)  # warm-up: kernels, processor paths
    baseline(data[:2], clip, clip_proc, tok, vit, vit_proc)
    _sync(device)
    t_ours: List[float] = []
    t_base: List[float] = []
    got = ref = None
    for _ in range(max(1, repeats)):  # alternate the sides, best of each (a shared machine)
        t = time.perf_counter()
        got = ours(mm, data, batch)
        _sync(device)
        t_ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        ref = baseline(data[:n_base], clip, clip_proc, tok, vit, vit_proc)
        _sync(device)
        t_base.append((time.perf_counter() - t) * n / n_base)  # scaled to n samples
    assert got is not None and ref is not None
    tol = 1e-4 if dtype == "fp32" else 2e-2
    diff = {k: max(abs(g[k] - r[k]) for g, r in zip(got, ref)) for k in NAMES}
    nan = [k for k in NAMES if any(math.isnan(g[k]) for g in got)]
    if nan or any(v > tol for v in diff.values()):
        raise AssertionError(f"ours and the per-image loop disagree: max |diff| {diff} (tolerance {tol}), NaN in {nan}")
    value, base = min(t_ours), min(t_base)
    dev_name = torch.cuda.get_device_name(0) if cuda else "cpu"
    return {
        "name": "identity",
        "baseline": "per-image loop (processor numpy path + model batch 1 per view, one text at a time)",
        "unit": f"s/{n} samples",
        "baseline_s": round(base, 4),
        "value_s": round(value, 4),
        "ratio": round(value / base, 4),
        "speedup": round(base / value, 2),
        "samples_per_s": {"ours": round(n / value, 2), "baseline": round(n / base, 2)},
        "notes": (f"{size} models on {dev_name} ({dtype}): {n / value:.1f} vs {n / base:.1f} samples/s "
                  f"({base / value:.1f}x); per sample 4 DINO views, 5 CLIP images, 1 text"),
        "size": size,
        "models": ("DINO ViT-S/16 + CLIP ViT-L/14, random weights" if size == "full"
                   else "tiny ViT (32 px, patch 8) + tiny CLIP (32 px, patch 4), random weights"),
        "device": dev_name,
        "dtype": dtype,
        "samples": n,
        "baseline_samples_measured": n_base,
        "batch": batch,
        "image_size": f"output {side}x{side}, exemplar {side * 3 // 4}x{side * 3 // 4}",
        "repeats": max(1, repeats),
        "times": {"ours": [round(x, 4) for x in t_ours], "baseline": [round(x, 4) for x in t_base]},
        "max_abs_diff_vs_baseline": {k: float(f"{v:.3g}") for k, v in diff.items()},
        "build_models_s": round(build_s, 2),
        "torch_threads": torch.get_num_threads(),
    }


def run(quick: bool = False) -> Dict[str, Any]:
    """``python -m perf``: tiny models on CPU, one torch thread (a shared machine gives stable figures)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return measure("tiny", "cpu", n=16 if quick else 64, batch=32, repeats=1 if quick else 3)
    finally:
        torch.set_num_threads(threads)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf.bench_identity", description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("tiny", "full"), default="tiny",
                    help="tiny: the tests' sizes; full: DINO ViT-S/16 + CLIP ViT-L/14 (random weights)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda[:N]")
    ap.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default=None, help="default: fp16 on CUDA, fp32 on CPU")
    ap.add_argument("--samples", type=int, default=None, help="default: 1024 on CUDA, 64 tiny / 8 full on CPU")
    ap.add_argument("--batch", type=int, default=None, help="ModelMetrics batch size (default: 256 on CUDA, 32 on CPU)")
    ap.add_argument("--baseline-samples", type=int, default=None,
                    help="samples the per-image loop runs (scaled to --samples; default: all, 128 on CUDA)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", type=Path, default=None, help="also write the result row as JSON here")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = args.dtype or ("fp16" if str(args.device).startswith("cuda") else "fp32")
    try:
        res = measure(args.size, args.device, args.samples, args.batch, dtype, args.baseline_samples, args.repeats)
    except ValueError as e:
        print(f"bench_identity: {e}", file=sys.stderr)
        return 2
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
