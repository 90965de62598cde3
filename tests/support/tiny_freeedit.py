"""Tiny random bases for FreeEdit, built in code and saved to disk, so tests load them through the
user's path: ``FreeEdit.from_pretrained(p["ip2p"], image_encoder=p["image_encoder"])``.

* ``ip2p``: the tiny InstructPix2Pix pipeline of ``tiny_bench_models`` (8-channel U-Net, text width 32);
* ``sd``: the tiny Stable Diffusion pipeline of ``tiny_models`` (4-channel U-Net), for the widening path;
* ``image_encoder``: a tiny ``CLIPVisionModel`` (hidden 32, 2 layers, 32-px images, patch 8: a 4x4
  grid, 17 tokens with the class token) + its ``CLIPImageProcessor``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Union

from support import tiny_models  # noqa: F401  (offline hub before any import of it)
from support.tiny_bench_models import save_tiny_ip2p
from support.tiny_models import save_tiny_sd

PathLike = Union[str, Path]


def save_tiny_clip_vision(path: PathLike, seed: int = 0) -> Path:
    """A tiny ``CLIPVisionModel`` + ``CLIPImageProcessor`` (32-px images, patch 8)."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    path = Path(path)
    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                           image_size=32, patch_size=8, projection_dim=32)
    CLIPVisionModel(cfg).save_pretrained(str(path))
    CLIPImageProcessor(crop_size=32, size=32).save_pretrained(str(path))
    return path


def save_tiny_freeedit_base(path: PathLike, seed: int = 0, sd: bool = False) -> Dict[str, Path]:
    """``{"ip2p": folder, "image_encoder": folder}`` under ``path`` (plus ``"sd"`` with ``sd=True``)."""
    path = Path(path)
    out = {"ip2p": save_tiny_ip2p(path / "ip2p", seed=seed),
           "image_encoder": save_tiny_clip_vision(path / "image_encoder", seed=seed)}
    if sd:
        out["sd"] = save_tiny_sd(path / "sd", seed=seed)
    return out
