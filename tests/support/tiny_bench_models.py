"""Tiny random models for the benchmark's model metrics and diffusion editors, built in code and
saved to disk (``save_pretrained`` / ``torch.save``), so the tests load them back through the
exact code path of ``--clip-model PATH``, ``--editor-arg model=PATH`` etc. Nothing is downloaded.

    python tests/support/tiny_bench_models.py OUT     # writes them all under OUT and prints the paths

* ``ip2p``: an InstructPix2Pix pipeline (``StableDiffusionInstructPix2PixPipeline``): the tiny
  SD components of ``tiny_models`` with an 8-channel UNet (noisy latents + source latents).
* ``clip``: ``tiny_models``' CLIP (projection 32, 32-px images).
* ``aesthetic``: the LAION aesthetic MLP (published hidden sizes) with input 32, ``layers.*`` keys.
* ``dino``: a tiny transformers ``ViTModel`` (hidden 32, 32-px images, patch 8) + processor.
* ``lpips``: LPIPS-alex with random (seeded) weights, as a folder in the ``lpips`` package +
  torchvision layout (``alex.pth`` linear layers + ``alexnet-random.pth`` ``features.*``) and as a
  single full state-dict file (``lpips_alex_full.pth``).
"""
from __future__ import annotations

import atexit
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict, Optional, Union

from support import tiny_models  # noqa: F401  (sets HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE before any hub import)
from support.tiny_models import _scheduler, _text_encoder, _unet, _vae, save_tiny_clip, tiny_tokenizer

PathLike = Union[str, Path]


def save_tiny_ip2p(path: PathLike, seed: int = 0) -> Path:
    """A tiny InstructPix2Pix pipeline (8-channel UNet)."""
    import torch
    from diffusers import StableDiffusionInstructPix2PixPipeline

    path = Path(path)
    torch.manual_seed(seed)
    tok = tiny_tokenizer(path / "_tok")
    te = _text_encoder(len(tok), tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|startoftext|>"))
    pipe = StableDiffusionInstructPix2PixPipeline(vae=_vae(), text_encoder=te, tokenizer=tok, unet=_unet(8),
                                                  scheduler=_scheduler(), safety_checker=None, feature_extractor=None,
                                                  requires_safety_checker=False)
    pipe.save_pretrained(str(path))
    shutil.rmtree(path / "_tok", ignore_errors=True)
    return path


def save_tiny_aesthetic(path: PathLike, input_dim: int = 32, seed: int = 0) -> Path:
    """The aesthetic MLP's state dict (``layers.0.weight`` ...), random, input ``input_dim``."""
    import torch

    from refcoco_edit.benchmark.metrics.aesthetic import build_mlp

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    mlp = build_mlp(input_dim)
    torch.save(mlp.state_dict(), str(path))
    return path


def save_tiny_dino(path: PathLike, seed: int = 0) -> Path:
    """A tiny ViT (DINO layout) + its image processor."""
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    path = Path(path)
    torch.manual_seed(seed)
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=32,
                    patch_size=8)
    ViTModel(cfg, add_pooling_layer=False).save_pretrained(str(path))
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(str(path))
    return path


def save_tiny_lpips(path: PathLike, seed: int = 0) -> Path:
    """LPIPS-alex with random weights: a folder (lin layers + torchvision backbone files) and, inside
    it, ``full/lpips_alex_full.pth`` with the whole state dict. Returns the folder."""
    import torch
    from torch import nn

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    # torchvision's AlexNet.features, layer for layer (its classifier is not needed: 58M parameters)
    alex = nn.Module()
    alex.features = nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
    torch.save(alex.state_dict(), str(path / "alexnet-random.pth"))
    chns = (64, 192, 384, 256, 256)
    lin = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) * 0.1 for k, c in enumerate(chns)}  # LPIPS lins are >= 0
    torch.save(lin, str(path / "alex.pth"))
    full = {}
    slices = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12))
    for key, v in alex.state_dict().items():
        if key.startswith("features."):
            i = int(key.split(".")[1])
            k = next(s for s, (a, b) in enumerate(slices, start=1) if a <= i < b)
            full[f"net.slice{k}.{i}.{key.split('.', 2)[2]}"] = v
    full.update(lin)
    full.update({f"lins.{k}.model.1.weight": lin[f"lin{k}.model.1.weight"] for k in range(5)})  # as lpips.LPIPS saves
    full["scaling_layer.shift"] = torch.tensor([-.030, -.088, -.188]).view(1, 3, 1, 1)
    full["scaling_layer.scale"] = torch.tensor([.458, .448, .450]).view(1, 3, 1, 1)
    (path / "full").mkdir(exist_ok=True)
    torch.save(full, str(path / "full" / "lpips_alex_full.pth"))
    return path


_BUILDERS = {
    "ip2p": lambda root: save_tiny_ip2p(root / "ip2p"),
    "clip": lambda root: save_tiny_clip(root / "clip"),
    "aesthetic": lambda root: save_tiny_aesthetic(root / "aesthetic" / "tiny-aesthetic.pth"),
    "dino": lambda root: save_tiny_dino(root / "dino"),
    "lpips": lambda root: save_tiny_lpips(root / "lpips"),
}
_ROOT: Optional[Path] = None
_MADE: Dict[str, Path] = {}


def tiny_bench(kind: str) -> Path:
    """The saved tiny model of ``kind`` for this test process (built on first use, removed at exit).
    The tiny SD / SD-inpainting pipelines come from ``tiny_models.tiny``."""
    global _ROOT
    if kind in ("sd", "sd-inpaint"):
        return tiny_models.tiny(kind)
    if kind not in _MADE:
        if _ROOT is None:
            _ROOT = Path(tempfile.mkdtemp(prefix="refcoco-edit-tiny-bench-"))
            atexit.register(shutil.rmtree, str(_ROOT), True)
        _MADE[kind] = _BUILDERS[kind](_ROOT)
    return _MADE[kind]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    out = Path(sys.argv[1])
    print(json.dumps({k: str(b(out)) for k, b in _BUILDERS.items()}, indent=2))
