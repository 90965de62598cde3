"""Benchmark: FreeEdit's cost against the U-Net / InstructPix2Pix step it is built on.

``run(quick=False) -> dict`` (``python -m perf --only freeedit``), or directly with the options:

    python -m perf.bench_freeedit [--size tiny|sd15] [--device auto|cpu|cuda] [--quick] [--dtype fp32|bf16|fp16]

Two figures, each measured against its baseline in the same run, on the same components (one
denoising U-Net shared by both sides), interleaved round by round with the order alternating (so
drift of a shared machine hits both alike); medians over rounds:

* **DRRA overhead** (``drra``): a denoising U-Net forward + backward with the detail extractor run on
  the reference and DRRA in every self-attention (scale 0.1, so gradients reach every DRRA
  projection and the extractor) against the same U-Net forward + backward without them (same
  latents, timesteps and multi-modal condition). No VAE, no encoders: the U-Net-level cost.
* **Training step** (the headline ``ratio``): a FreeEdit training step (VAE encodes of source,
  target and reference, text + image encoders, the projection, the detail extractor, the U-Net
  with DRRA, the loss, backward, grad-norm clipping, AdamW over projection + U-Net + detail
  extractor + DRRA, i.e. phase 2) against a plain InstructPix2Pix training step (ReferDiffusion
  with ``use_rem=False``: the same U-Net, text condition only, epsilon loss, AdamW over the U-Net).

Sizes, all random weights built in code (nothing downloaded):

* ``tiny`` (the default without CUDA): the tests' tiny U-Net / VAE / text encoder and a tiny CLIP
  vision tower, 64-px sources, 32-px references, batch 2, fp32, one CPU thread. It checks the code
  path and gives the relative cost at that size; it says nothing about full size.
* ``sd15`` (the default with CUDA): the SD 1.5 U-Net with 8 input channels, the SD VAE, the CLIP
  ViT-L/14 text encoder and vision tower (``openai/clip-vit-large-patch14``'s architecture), 512-px
  sources, 256-px references (FreeEdit's ``reference_resolution`` default), batch 4 (2 with
  ``--quick``; halved again on out-of-memory), bf16 autocast on CUDA with fp32 master weights.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

SIZES: Dict[str, Dict[str, int]] = {
    "tiny": {"resolution": 64, "reference": 32, "batch": 2},
    "sd15": {"resolution": 512, "reference": 256, "batch": 4},
}
DTYPES = ("fp32", "bf16", "fp16")
PROMPTS = ("put this hat on the man on the left", "replace the dog with this cat", "add this vase on the table",
           "turn the car in the back into this bus")


def _vision_encoder(size: str) -> Any:
    """A random CLIP vision tower: ViT-L/14 at 224 px (sd15) or the tests' tiny one (32 px)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    if size == "sd15":
        cfg = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                               image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
    else:
        cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                               image_size=32, patch_size=8, projection_dim=32)
    return CLIPVisionModel(cfg)


def _components(size: str, tok_dir: Path) -> Dict[str, Any]:
    """InstructPix2Pix components (``perf.bench_train``'s builder: SD 1.5 or tiny) + an image encoder."""
    from perf.bench_train import _components as ip2p_components

    comps = ip2p_components(size == "sd15", tok_dir)
    comps["image_encoder"] = _vision_encoder(size)
    return comps


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: Any, amp: Any) -> Any:
    import torch

    return torch.autocast(device.type, dtype=amp, enabled=amp is not None)


class _Sides:
    """The FreeEdit model and the plain InstructPix2Pix model on one shared U-Net."""

    def __init__(self, comps: Dict[str, Any], reference: int, device: Any, amp: Any):
        import torch

        from refcoco_edit.benchmark.freeedit.model import FreeEdit, FreeEditConfig
        from refcoco_edit.benchmark.referdiffusion.model import ReferDiffusion, ReferDiffusionConfig

        torch.manual_seed(0)
        enc = comps.pop("image_encoder")
        self.free = FreeEdit(**comps, image_encoder=enc,
                             config=FreeEditConfig(drra_scale_init=0.1, reference_resolution=reference)).to(device).train()
        self.plain = ReferDiffusion(**comps, config=ReferDiffusionConfig(use_rem=False)).to(device).train()
        self.device, self.amp = device, amp
        self.scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
        self.opts = {"free": torch.optim.AdamW(self.free.trainable_parameters(), lr=1e-5),
                     "plain": torch.optim.AdamW(self.plain.trainable_parameters(), lr=1e-5)}
        self.gens = {k: torch.Generator(device).manual_seed(0) for k in ("free", "plain")}

    # -- (a) the U-Net with and without the detail extractor + DRRA ------------------------------
    def unet_pass(self, inputs: Dict[str, Any], with_drra: bool) -> float:
        m = self.free
        with _autocast(self.device, self.amp):
            feats = m.detail_features(inputs["ref_latent"], inputs["null"]) if with_drra else None
            out = m.denoise(inputs["x"], inputs["t"], inputs["cond"], feats)
            loss = out.float().pow(2).mean()
        loss.backward()
        m.zero_grad(set_to_none=True)
        return float(loss.detach())

    # -- (b) a training step ---------------------------------------------------------------------
    def train_step(self, side: str, batch: Dict[str, Any]) -> float:
        import torch

        from refcoco_edit.benchmark.referdiffusion.losses import eps_loss

        model, opt = (self.free, self.opts["free"]) if side == "free" else (self.plain, self.opts["plain"])
        with _autocast(self.device, self.amp):
            if side == "free":
                o = model(batch["source"], batch["target"], batch["reference"], batch["input_ids"],
                          batch["attention_mask"], generator=self.gens[side])
                loss = model.loss(o)["loss"]
            else:
                o = model(batch["source"], batch["target"], batch["input_ids"], batch["attention_mask"],
                          generator=self.gens[side])
                loss = eps_loss(o.noise_pred, o.noise)
        params = model.trainable_parameters()
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            self.scaler.step(opt)
            self.scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())


def _inputs(sides: _Sides, batch: int, res: int, ref: int, seed: int = 0) -> Dict[str, Any]:
    """One fixed batch: pixels for the training step, latents + condition for the U-Net pass."""
    import torch

    g = torch.Generator().manual_seed(seed)
    dev = sides.device
    m = sides.free
    pix = {k: (torch.rand(batch, 3, s, s, generator=g) * 2 - 1).to(dev)
           for k, s in (("source", res), ("target", res), ("reference", ref))}
    tok = m.tokenize([PROMPTS[i % len(PROMPTS)] for i in range(batch)])
    f = m.vae_scale_factor
    with torch.no_grad():
        cond = m.instruction(tok["input_ids"], pix["reference"])
        null = m.null_instruction(batch)
    return {**pix, "input_ids": tok["input_ids"].to(dev), "attention_mask": tok["attention_mask"].to(dev),
            "x": torch.randn(batch, 8, res // f, res // f, generator=g).to(dev),
            "t": torch.randint(0, 1000, (batch,), generator=g).to(dev),
            "ref_latent": torch.randn(batch, 4, ref // f, ref // f, generator=g).to(dev),
            "cond": cond.detach(), "null": null.detach().contiguous()}


def _timed(device: Any, fn: Any, steps: int) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / steps


def _measure(size: str, device: Any, amp: Any, batch: int, res: int, ref: int, warmup: int, rounds: int, steps: int,
             parts: List[str], tok_dir: Path) -> Dict[str, Any]:
    import math

    sides = _Sides(_components(size, tok_dir), ref, device, amp)
    data = _inputs(sides, batch, res, ref)
    times: Dict[str, List[float]] = {k: [] for k in ("unet", "unet_drra", "plain", "free")}
    losses: List[float] = []
    jobs = {
        "unet": lambda: losses.append(sides.unet_pass(data, False)),
        "unet_drra": lambda: losses.append(sides.unet_pass(data, True)),
        "plain": lambda: losses.append(sides.train_step("plain", data)),
        "free": lambda: losses.append(sides.train_step("free", data)),
    }
    pairs = ([("unet", "unet_drra")] if "drra" in parts else []) + ([("plain", "free")] if "train" in parts else [])
    for a, b in pairs:
        for _ in range(warmup):
            jobs[a]()
            jobs[b]()
    for r in range(rounds):
        for a, b in pairs:
            for name in ((a, b) if r % 2 == 0 else (b, a)):
                times[name].append(_timed(device, jobs[name], steps))
    m = sides.free
    res_d: Dict[str, Any] = {
        "losses_finite": all(math.isfinite(v) for v in losses),
        "unet_params_m": round(sum(p.numel() for p in m.unet.parameters()) / 1e6, 1),
        "detail_extractor_params_m": round(sum(p.numel() for p in m.detail_extractor.parameters()) / 1e6, 1),
        "drra_params_m": round(sum(p.numel() for p in m.drra.parameters()) / 1e6, 2),
        "drra_layers": len(m.drra),
        "projection_params_m": round(sum(p.numel() for p in m.projection.parameters()) / 1e6, 3),
        "image_tokens": m.num_image_tokens(),
        "rounds": rounds, "steps_per_round": steps,
    }
    for k, v in times.items():
        if v:
            res_d[f"{k}_s"] = statistics.median(v)
    if "drra" in parts:
        res_d["drra_ratio"] = res_d["unet_drra_s"] / res_d["unet_s"]
    if "train" in parts:
        res_d["train_ratio"] = res_d["free_s"] / res_d["plain_s"]
    if device.type == "cuda":
        import torch

        res_d["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
    del sides, data
    return res_d


def run(quick: bool = False, size: Optional[str] = None, device: str = "auto", dtype: Optional[str] = None,
        batch: Optional[int] = None, resolution: Optional[int] = None, reference: Optional[int] = None,
        rounds: Optional[int] = None, parts: str = "all") -> Dict[str, Any]:
    """Both figures (see the module docstring); ``python -m perf`` calls it with ``quick`` only."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device here")
    dev = torch.device(device)
    size = size or ("sd15" if dev.type == "cuda" else "tiny")
    if size not in SIZES:
        raise ValueError(f"--size must be one of {', '.join(SIZES)}, got {size!r}")
    dtype = dtype or ("bf16" if dev.type == "cuda" else "fp32")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    spec = dict(SIZES[size])
    res = int(resolution or spec["resolution"])
    ref = int(reference or spec["reference"])
    b = int(batch or (max(1, spec["batch"] // 2) if quick else spec["batch"]))
    warmup, n_rounds, steps = (1, 3, 1) if quick else (2, 7, 2)
    if dev.type == "cuda":
        warmup, n_rounds, steps = (2, 3, 2) if quick else (3, 7, 3)
    n_rounds = int(rounds or n_rounds)
    which = ["drra", "train"] if parts == "all" else [parts]
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(1)  # 2 shared busy cores: 2 threads thrash
    tmp = Path(tempfile.mkdtemp(prefix="bench_freeedit_"))
    try:
        while True:
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(dev)
            try:
                r = _measure(size, dev, amp, b, res, ref, warmup, n_rounds, steps, which, tmp / "tok")
                break
            except torch.cuda.OutOfMemoryError:
                if b == 1:
                    raise
                b //= 2  # halve and retry (recorded)
    finally:
        torch.set_num_threads(threads)
    out: Dict[str, Any] = {
        "name": "freeedit",
        "unit": "s/step",
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "size": size, "dtype": dtype, "resolution": res, "reference_resolution": ref, "batch": b, **r,
    }
    if "train" in which:
        out.update(baseline="plain InstructPix2Pix training step (same U-Net, text only, eps loss, AdamW over the U-Net)",
                   baseline_s=r["plain_s"], value_s=r["free_s"], ratio=r["train_ratio"])
    else:
        out.update(baseline="the same U-Net forward+backward without the detail extractor and DRRA",
                   baseline_s=r["unet_s"], value_s=r["unet_drra_s"], ratio=r["drra_ratio"])
    notes = []
    if "drra" in which:
        notes.append(f"DRRA + detail extractor: U-Net fwd+bwd x{r['drra_ratio']:.2f}")
    if "train" in which:
        notes.append(f"FreeEdit phase-2 step x{r['train_ratio']:.2f} of a plain InstructPix2Pix step")
    notes.append(f"{size}, {res}px/{ref}px ref, batch {b}, {dtype}"
                 + ("; tiny CPU models: a code-path check, not the full-size cost" if size == "tiny" else ""))
    out["notes"] = "; ".join(notes)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf.bench_freeedit", description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default=None, help="tiny (default on CPU) | sd15 (default on CUDA)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    ap.add_argument("--dtype", choices=DTYPES, default=None, help="autocast dtype (default bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--quick", action="store_true", help="half the batch, fewer rounds")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--resolution", type=int, default=None, help="source/target side in px")
    ap.add_argument("--reference-resolution", type=int, default=None, help="reference side in px")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--part", choices=("all", "drra", "train"), default="all")
    ap.add_argument("--out", type=Path, default=None, help="also write the result as JSON here")
    a = ap.parse_args(argv)
    try:
        r = run(quick=a.quick, size=a.size, device=a.device, dtype=a.dtype, batch=a.batch, resolution=a.resolution,
                reference=a.reference_resolution, rounds=a.rounds, parts=a.part)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(r, indent=2, default=str)
    print(text)
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
