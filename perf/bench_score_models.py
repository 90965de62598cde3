"""Benchmark: model-metric throughput of `refcoco-edit score` — CLIP ViT-L/14 + the LAION aesthetic
head (AP) + L2_bg, end to end, images per second.

``run(quick=False) -> dict`` (``python -m perf --only score_models``). The models are full-size
architectures with random weights, built in code (nothing is downloaded): a
``CLIPVisionModelWithProjection`` with the ViT-L/14 configuration (24 layers, width 1024, 16
heads, patch 14, 224 px, projection 768, quick-GELU), the default ``CLIPImageProcessor``
(shortest side 224 bicubic, center crop, CLIP mean/std) and the aesthetic MLP with input 768.
The data are the 512x512 synthetic samples of ``perf/bench_score.py`` (PNG source, output, M_e).

* ``value`` — the harness's path: each sample's source and output PNGs decoded once in a pool of
  threads (2 on CPU, as the harness default; up to 16 with CUDA, i.e. ``score --workers 16``), L2_bg from the shared arrays (``compute_sample``), AP through ``ModelMetrics``
  (``ClipEncoder``: uint8 tensors moved to the device, the processor's torchvision backend
  resizing there, batches of ``batch``, fp16 on CUDA) — images per second end to end; also the
  model part alone (``model_img_per_s``: arrays already decoded).
* ``baseline`` — the per-image way of the LAION predictor's script: per sample ``Image.open``,
  the PIL processor (``CLIPImageProcessorPil``), one forward pass of batch 1 in float32, the MLP,
  and L2_bg in float64 numpy.

With CUDA (goal of issue #6: >= 1000 img/s end to end on one H100) the run uses 1024 samples
(the 64 generated ones, repeated), batch 256, fp16. Without CUDA the benchmark is skipped
(``{"skipped": "no CUDA ..."}``): ViT-L/14 on a CPU says nothing about the GPU goal and would
take a third of ``python -m perf``; ``REFCOCO_EDIT_PERF_CPU=1`` runs a small-batch CPU figure
(``device: "cpu"``, marked in the result): 8 samples (4 with ``--quick``), batch 8, fp32, one thread.
The two paths' AP values must agree (fp32: 1e-3; fp16: 5e-2, a random-weight MLP amplifies
fp16 rounding).
"""
from __future__ import annotations

import gc
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def vit_l14(device: Any, dtype: Any) -> Tuple[Any, Any]:
    """CLIP ViT-L/14 vision tower + projection (random weights) and the default CLIP processor."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                           image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
                           attn_implementation="sdpa")
    torch.manual_seed(0)
    model = CLIPVisionModelWithProjection(cfg).to(device=device, dtype=dtype).eval()
    return model, CLIPImageProcessor()


def _load(root: Path, meta: List[Dict[str, Any]], n: int) -> List[Dict[str, Any]]:
    from refcoco_edit import rle

    items = []
    for k in range(n):
        s = meta[k % len(meta)]
        items.append({"sid": s["sample_id"], "src": root / f"{s['sample_id']}.source.png",
                      "out": root / f"{s['sample_id']}.output.png", "me": rle.decode(s["edit_mask"]).astype(bool)})
    return items


def _ours(items: List[Dict[str, Any]], mm: Any, batch: int, phases: Dict[str, float], workers: int = 2
          ) -> Dict[int, Tuple[float, float]]:
    from refcoco_edit.benchmark.data import decode_image
    from refcoco_edit.benchmark.metrics import SampleArrays, compute_sample
    from refcoco_edit.benchmark.metrics.model_based import ModelSample

    def decode(it):
        return (decode_image(it["src"].read_bytes(), "source"), decode_image(it["out"].read_bytes(), "output"))

    def l2(args):
        (src, out), me = args
        return compute_sample(SampleArrays(source=src, output=out, edit_mask=me), ["l2_bg"])["l2_bg"]

    res: Dict[int, Tuple[float, float]] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i in range(0, len(items), batch):
            part = items[i:i + batch]
            t = time.perf_counter()
            dec = list(pool.map(decode, part))
            phases["decode_s"] = phases.get("decode_s", 0.0) + time.perf_counter() - t
            t = time.perf_counter()
            l2s = list(pool.map(l2, [(d, it["me"]) for d, it in zip(dec, part)]))
            phases["l2_s"] = phases.get("l2_s", 0.0) + time.perf_counter() - t
            t = time.perf_counter()
            vals = mm.compute([ModelSample(output=o, source=s_, edit_mask=it["me"]) for (s_, o), it in zip(dec, part)])
            phases["model_s"] = phases.get("model_s", 0.0) + time.perf_counter() - t
            for k, (v, l) in enumerate(zip(vals, l2s)):
                res[i + k] = (v["ap"], l)
    return res


def _baseline(items: List[Dict[str, Any]], model: Any, mlp: Any) -> Dict[int, Tuple[float, float]]:
    import torch
    from PIL import Image
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil()
    m32 = model.float()
    res: Dict[int, Tuple[float, float]] = {}
    for i, it in enumerate(items):
        out = Image.open(it["out"]).convert("RGB")
        with torch.no_grad():
            px = proc(images=out, return_tensors="pt")["pixel_values"].to(next(m32.parameters()).device)
            emb = m32(pixel_values=px).image_embeds.float().cpu().numpy()
        emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
        with torch.no_grad():
            ap = float(mlp(torch.from_numpy(emb)).reshape(-1)[0])
        a = np.asarray(out, dtype=np.float64) / 255
        b = np.asarray(Image.open(it["src"]).convert("RGB"), dtype=np.float64) / 255
        bg = ~it["me"]
        res[i] = (ap, float(np.mean((a[bg] - b[bg]) ** 2)))
    return res


def run(quick: bool = False) -> Dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and os.environ.get("REFCOCO_EDIT_PERF_CPU") != "1":
        # ViT-L/14 on a CPU runs at ~0.2 img/s: nothing to learn about the GPU goal, and it would
        # take ~1/3 of the whole `python -m perf` run; REFCOCO_EDIT_PERF_CPU=1 runs the CPU variant
        return {"name": "score_models", "skipped": "no CUDA (REFCOCO_EDIT_PERF_CPU=1 runs a small CPU variant)",
                "baseline": "per-image LAION-predictor loop (PIL processor, batch 1, fp32)"}
    threads = torch.get_num_threads()
    if not cuda:
        torch.set_num_threads(1)  # a shared CPU box: one thread gives stable figures
    try:
        return _run(quick, cuda)
    finally:
        torch.set_num_threads(threads)


def _run(quick: bool, cuda: bool) -> Dict[str, Any]:
    import torch

    from refcoco_edit.benchmark.metrics.aesthetic import AestheticPredictor, build_mlp
    from refcoco_edit.models import ClipEncoder
    from refcoco_edit.benchmark.metrics.model_based import ModelMetrics
    from perf.bench_score import dataset

    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.float16 if cuda else torch.float32
    n = (256 if quick else 1024) if cuda else (4 if quick else 8)
    batch = 256 if cuda else 8
    workers = min(16, os.cpu_count() or 2) if cuda else 2  # PNG decoding feeds the GPU: `score --workers N`
    root = dataset({"samples": 64, "seed": 0})
    meta = json.loads((root / "meta.json").read_text())
    items = _load(root, meta, n)

    t0 = time.perf_counter()
    model, proc = vit_l14(device, dtype)
    build_s = time.perf_counter() - t0
    torch.manual_seed(1)
    mlp = build_mlp(768).eval()
    enc = ClipEncoder(model, proc, None, device=device, dtype=dtype, batch_size=batch,
                      details={"spec": "random CLIP ViT-L/14 (vision + projection)"})
    mm = ModelMetrics(["ap"], {}, clip=enc, aesthetic=AestheticPredictor(mlp))
    # warm-up (CUDA kernels, cuDNN/SDPA choice, processor)
    warm = _load(root, meta, min(batch, 16 if cuda else 2))
    _ours(warm, mm, batch, {}, workers)
    if cuda:
        torch.cuda.synchronize()

    gc.collect()
    phases: Dict[str, float] = {}
    t = time.perf_counter()
    ours = _ours(items, mm, batch, phases, workers)
    if cuda:
        torch.cuda.synchronize()
    value = time.perf_counter() - t

    n_base = n if not cuda else min(n, 64)
    gc.collect()
    t = time.perf_counter()
    base = _baseline(items[:n_base], model, mlp)
    baseline = (time.perf_counter() - t) * n / n_base  # scaled to n samples
    if cuda:
        model.to(dtype)

    tol = 5e-2 if dtype == torch.float16 else 1e-3
    d_ap = max(abs(ours[i][0] - base[i][0]) for i in base)
    d_l2 = max(abs(ours[i][1] - base[i][1]) for i in base)
    res = {
        "name": "score_models",
        "baseline": "per-image LAION-predictor loop (PIL processor, batch 1, fp32)",
        "unit": f"s/{n} samples",
        "notes": (f"CLIP ViT-L/14 + AP + L2_bg end to end: {n / value:.1f} img/s"
                  + (f" on {torch.cuda.get_device_name(0)}" if cuda else " (CPU, small batch: the >=1000 img/s goal needs CUDA)")),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cpu_only_small_batch": not cuda,
        "dtype": str(dtype).replace("torch.", ""),
        "model": "CLIP ViT-L/14 vision tower + projection (random weights) + LAION aesthetic MLP(768) + L2_bg",
        "samples": n,
        "batch": batch,
        "decode_workers": workers,
        "image_size": "512x512 PNG (source + output decoded per sample)",
        "baseline_s": round(baseline, 4),
        "baseline_samples_measured": n_base,
        "value_s": round(value, 4),
        "ratio": round(value / baseline, 4),
        "speedup": round(baseline / value, 2),
        "img_per_s": round(n / value, 2),
        "baseline_img_per_s": round(n / baseline, 2),
        "model_img_per_s": round(n / phases["model_s"], 2),
        "phases_s": {k: round(v, 4) for k, v in sorted(phases.items())},
        "build_model_s": round(build_s, 2),
        "max_abs_diff_vs_baseline": {"ap": float(f"{d_ap:.3g}"), "l2_bg": float(f"{d_l2:.3g}")},
        "torch_threads": torch.get_num_threads(),
    }
    assert d_ap < tol and d_l2 < 1e-12, res["max_abs_diff_vs_baseline"]
    print(f"score_models ({res['device']}, {res['dtype']}): {n} samples end to end {value:.2f}s = {n / value:.2f} img/s "
          f"(model part {res['model_img_per_s']} img/s; decode {phases['decode_s']:.2f}s, L2 {phases['l2_s']:.2f}s, "
          f"CLIP+AP {phases['model_s']:.2f}s); per-image baseline {n / baseline:.2f} img/s")
    return res


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
