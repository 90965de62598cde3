"""Benchmark: ReferDiffusion training throughput (samples/s) vs a plain InstructPix2Pix fine-tune.

``run(quick=False) -> dict`` (``python -m perf --only train``). Both steps are measured in the same
run, on the same components and batches, interleaved round by round (so drift of a shared machine
hits both alike):

* ``baseline`` - a plain InstructPix2Pix fine-tune step: ``ReferDiffusion`` with ``use_rem=False``
  (``c = F_p``) and only the epsilon loss;
* ``value`` - the ReferDiffusion step: the Region-Embedder Module (mask filter, e_v, e_r, edit
  extractor, fusion) + every loss (eps, mask BCE+Dice, edit embedding, Region-Control Loss).

Each step is the trainer's (``refcoco_edit.benchmark.referdiffusion.train``): forward (VAE encode of source and
target, frozen text encoder, UNet), ``total_loss``, backward, grad-norm clipping, AdamW step,
under autocast (fp32 master weights, mixed precision as accelerate does; fp16 uses a GradScaler).
``rem_rcl_overhead_pct`` = (ReferDiffusion step time / plain step time - 1) x 100; issue #7 wants it
under 15%.

With CUDA: the full-size architecture with random weights built in code (nothing downloaded): the
SD 1.5 UNet configuration with 8 input channels (InstructPix2Pix), the SD VAE, the CLIP ViT-L/14
text encoder (12 layers, width 768), 480x480 images, batch 8 (4 with ``--quick``), for fp16 and
bf16. Without CUDA: a tiny variant (the tests' tiny UNet/VAE/text encoder, 64x64, batch 2, fp32,
one thread), marked ``device: "cpu"``, ``size: "tiny"``: it checks the code path, it says nothing
about the full-size overhead (that figure needs a GPU).
"""
from __future__ import annotations

import gc
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np


def _tokenizer(path: Path) -> Any:
    """A CLIP tokenizer with a byte-level vocabulary (no merges): no download; 77 tokens. The one
    the tests build (tests/support/tiny_models.py), as perf/bench_generate.py uses it."""
    import sys

    tests = str(Path(__file__).resolve().parents[1] / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from support.tiny_models import tiny_tokenizer

    return tiny_tokenizer(path)


def _components(full: bool, tok_dir: Path) -> Dict[str, Any]:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = _tokenizer(tok_dir)
    eos, bos = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|startoftext|>")
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                          clip_sample=False)
    if full:
        # SD 1.5 UNet (diffusers defaults = SD 1.x: 320/640/1280/1280, 2 layers, 8 heads, 768 cross-attention)
        unet = UNet2DConditionModel(sample_size=64, in_channels=8, out_channels=4, cross_attention_dim=768)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512],
                            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                            layers_per_block=2, sample_size=512, scaling_factor=0.18215)
        te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                          num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                                          bos_token_id=bos, eos_token_id=eos, pad_token_id=eos))
    else:
        unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=8,
                                    out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32)
        vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                            down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                            latent_channels=4, sample_size=64)
        te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=5,
                                          num_attention_heads=4, max_position_embeddings=77, bos_token_id=bos,
                                          eos_token_id=eos, pad_token_id=eos))
    return {"unet": unet, "vae": vae, "text_encoder": te, "tokenizer": tok, "scheduler": sched}


def _batches(model: Any, n: int, batch: int, size: int, seed: int = 0) -> List[Dict[str, Any]]:
    """``n`` synthetic batches: smooth sources, a rectangle object M, target = source recoloured in M_e."""
    import torch

    rng = np.random.default_rng(seed)
    prompts = ["Paint a cat on the red mask", "turn the man on the left into a statue", "make the second car blue",
               "remove the dog next to the bench"]
    spans = [(8, 11), (28, 42), (19, 25), (0, 6)]
    out = []
    for _ in range(n):
        src = rng.uniform(-1, 1, (batch, 3, size, size)).astype(np.float32)
        src = np.repeat(np.repeat(src[:, :, ::8, ::8], 8, 2), 8, 3)
        m = np.zeros((batch, 1, size, size), np.float32)
        for b in range(batch):
            y, x = rng.integers(0, size // 2, 2)
            m[b, :, y:y + size // 3, x:x + size // 3] = 1
        tgt = np.where(m > 0, rng.uniform(-1, 1, (batch, 3, 1, 1)).astype(np.float32), src)
        ps = [prompts[(b + len(out)) % len(prompts)] for b in range(batch)]
        ss = [spans[(b + len(out)) % len(spans)] for b in range(batch)]
        tok = model.tokenize(ps, ss)
        out.append({"source_pixels": torch.from_numpy(src), "target_pixels": torch.from_numpy(tgt),
                    "input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"],
                    "edit_token_mask": tok["span_mask"], "source_mask": torch.from_numpy(m),
                    "edit_mask": torch.from_numpy(m.copy())})
    return out


class _Trainer:
    """One model + optimizer + its step (the trainer's order of operations)."""

    def __init__(self, comps: Dict[str, Any], rem: bool, device: Any, amp: Any, seed: int):
        import torch

        from refcoco_edit.benchmark.referdiffusion.losses import LossWeights
        from refcoco_edit.benchmark.referdiffusion.model import ReferDiffusion, ReferDiffusionConfig

        torch.manual_seed(seed)
        self.model = ReferDiffusion(**comps, config=ReferDiffusionConfig(use_rem=rem)).to(device).train()
        self.weights = LossWeights() if rem else LossWeights(mask=0.0, edit=0.0, rcl=0.0)
        self.opt = torch.optim.AdamW(self.model.trainable_parameters(), lr=1e-5)
        self.device, self.amp = device, amp
        self.scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
        self.gen = torch.Generator(device).manual_seed(seed)

    def step(self, batch: Dict[str, Any]) -> float:
        import torch

        from refcoco_edit.benchmark.referdiffusion.losses import total_loss

        b = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            o = self.model(**b, generator=self.gen)
            terms = total_loss(o, b, self.model.scheduler, self.weights)
        loss = terms["loss"]
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.model.trainable_parameters(), 1.0)
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.trainable_parameters(), 1.0)
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(comps_fn, device: Any, amp: Any, batch: int, size: int, warmup: int, rounds: int, steps: int
             ) -> Dict[str, Any]:
    """Both trainers built on the same components (one UNet, so the full-size run holds one set of
    weights and grads, two AdamW states); ``rounds`` x (``steps`` plain, ``steps`` REM) timed."""
    import torch

    comps = comps_fn()
    plain = _Trainer(comps, False, device, amp, 0)
    refer = _Trainer(comps, True, device, amp, 0)
    data = _batches(refer.model, 4, batch, size)
    times: Dict[str, List[float]] = {"plain": [], "refer": []}
    losses: Dict[str, float] = {}
    for name, t in (("plain", plain), ("refer", refer)):
        for i in range(warmup):
            t.step(data[i % len(data)])
    _sync(device)
    for r in range(rounds):
        order = (("plain", plain), ("refer", refer)) if r % 2 == 0 else (("refer", refer), ("plain", plain))
        for name, t in order:
            _sync(device)
            t0 = time.perf_counter()
            for i in range(steps):
                losses[name] = t.step(data[i % len(data)])
            _sync(device)
            times[name].append((time.perf_counter() - t0) / steps)
    res = {
        "plain_step_s": statistics.median(times["plain"]), "refer_step_s": statistics.median(times["refer"]),
        "losses_finite": all(np.isfinite(v) for v in losses.values()),
        "rem_params_m": round(sum(p.numel() for p in refer.model.rem.parameters()) / 1e6, 3),
        "unet_params_m": round(sum(p.numel() for p in refer.model.unet.parameters()) / 1e6, 1),
    }
    res["plain_samples_per_s"] = batch / res["plain_step_s"]
    res["refer_samples_per_s"] = batch / res["refer_step_s"]
    res["rem_rcl_overhead_pct"] = (res["refer_step_s"] / res["plain_step_s"] - 1.0) * 100.0
    if device.type == "cuda":
        res["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
    del plain, refer, comps, data
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    return res


def run(quick: bool = False) -> Dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    if cuda:
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        size, batch = 480, (4 if quick else 8)
        warmup, rounds, steps = (2, 2, 3) if quick else (3, 4, 5)
        amps: List[Tuple[str, Any]] = [("fp16", torch.float16), ("bf16", torch.bfloat16)]
        full = True
    else:
        device = torch.device("cpu")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        size, batch = 64, 2
        warmup, rounds, steps = (1, 2, 2) if quick else (2, 3, 4)
        amps = [("fp32", None)]
        full = False
    per: Dict[str, Any] = {}
    try:
        for label, amp in amps:
            while True:
                if cuda:
                    gc.collect()
                    torch.cuda.empty_cache()
                torch.manual_seed(0)
                try:
                    per[label] = _measure(lambda: _components(full, tmp / "tok"), device, amp, batch, size, warmup,
                                          rounds, steps)
                    per[label]["batch"] = batch
                    break
                except torch.cuda.OutOfMemoryError:
                    if batch == 1:
                        raise
                    batch //= 2  # halve and retry (recorded per dtype)
    finally:
        if not cuda:
            torch.set_num_threads(threads)
    main = per[amps[0][0]]
    out: Dict[str, Any] = {
        "name": "train",
        "baseline": "plain InstructPix2Pix fine-tune step (no REM, eps loss only)",
        "unit": "s/step",
        "notes": (f"ReferDiffusion step (REM + all losses): overhead {main['rem_rcl_overhead_pct']:.1f}%"
                  + ("" if cuda else "; tiny CPU models (the <15% goal is about full size on a GPU)")),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "size": "full (SD 1.5 UNet in=8, SD VAE, CLIP-L text)" if full else "tiny (CPU code-path check; full size needs a GPU)",
        "resolution": size, "batch": main["batch"],
        "baseline_s": main["plain_step_s"], "value_s": main["refer_step_s"],
        "ratio": main["refer_step_s"] / main["plain_step_s"],
        "rem_rcl_overhead_pct": round(main["rem_rcl_overhead_pct"], 2),
        "samples_per_s": {k: {"plain": round(v["plain_samples_per_s"], 3), "referdiffusion": round(v["refer_samples_per_s"], 3)}
                          for k, v in per.items()},
        "per_dtype": per,
    }
    if cuda:
        out["overhead_under_15pct"] = all(v["rem_rcl_overhead_pct"] < 15.0 for v in per.values())
    return out


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(run(quick=True), indent=2, default=str))
