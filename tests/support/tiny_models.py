"""Tiny random models for the diffusion tests, built in code (diffusers' ``get_dummy_components``
pattern), saved with ``save_pretrained`` / ``torch.save`` and loaded back by the tests through the
exact code path a user's ``--pbe-model PATH`` / ``--sam-checkpoint FILE`` takes.

    python tests/support/tiny_models.py OUT      # writes OUT/{sd,sd-inpaint,pbe,clip,sam} and prints them

Each diffusers pipeline is about 8 MB and loads in a fraction of a second; nothing is downloaded.

* UNet2DConditionModel: block_out_channels (32, 64), 2 layers per block, cross-attention dim 32;
  ``in_channels`` 4 (text-to-image) or 9 (inpainting, Paint-by-Example).
* AutoencoderKL: [32, 64] channels, 4 latent channels (a VAE scale factor of 2, not SD's 8).
* CLIPTextModel: hidden 32, 5 layers, with a real ``CLIPTokenizer`` over a made-up byte-level
  vocabulary (every byte, alone and word-final, no merges): 514 tokens.
* PaintByExampleImageEncoder: a 32-px CLIP vision tower, projection 32.
* SAM: segment-anything's modules at img_size 128, embed 32 (``refcoco_edit.pipelines.masks.build_sam``), its
  architecture in a JSON file beside the checkpoint.
* CLIP (filters): a tiny ``CLIPModel`` + ``CLIPProcessor``.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict, Optional, Union

# No test reaches the network: the hub client is offline before anything imports it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

PathLike = Union[str, Path]

# The architecture of the tiny SAM (pipelines.masks.sam_arch reads it from the JSON file).
TINY_SAM_ARCH = {
    "img_size": 128, "patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2, "global_attn_indexes": [1],
    "window_size": 4, "prompt_embed_dim": 32, "decoder_depth": 2, "decoder_mlp_dim": 64, "decoder_heads": 2,
    "iou_head_hidden_dim": 32, "mask_in_chans": 4,
}


def _bytes_to_unicode() -> Dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def tiny_tokenizer(path: PathLike, max_length: int = 77):
    """A ``CLIPTokenizer`` with a byte-level vocabulary (no merges), saved into ``path``."""
    from transformers import CLIPTokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tok = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=max_length)
    return tok


def _text_encoder(vocab_size: int, eos: int, bos: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=eos, hidden_size=32, intermediate_size=37,
                         layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=5, vocab_size=vocab_size,
                         max_position_embeddings=77, projection_dim=32)
    return CLIPTextModel(cfg)


def _unet(in_channels: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=in_channels, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                         latent_channels=4, sample_size=64)


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def save_tiny_sd(path: PathLike, inpaint: bool = False, seed: int = 0) -> Path:
    """A tiny Stable Diffusion text-to-image (or, with ``inpaint``, 9-channel inpainting) pipeline."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    path = Path(path)
    torch.manual_seed(seed)
    tok = tiny_tokenizer(path / "_tok")
    unet = _unet(9 if inpaint else 4)
    vae = _vae()
    te = _text_encoder(len(tok), tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|startoftext|>"))
    cls = StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline
    pipe = cls(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=_scheduler(), safety_checker=None,
               feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(path))
    shutil.rmtree(path / "_tok", ignore_errors=True)
    return path


def save_tiny_pbe(path: PathLike, seed: int = 0) -> Path:
    """A tiny Paint-by-Example pipeline (the deprecated-module alias installed first, so that the
    image encoder is written as ``["paint_by_example", ...]`` exactly as in the hub repository)."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig

    from refcoco_edit.models import install_pbe_alias

    mod = install_pbe_alias()
    torch.manual_seed(seed)
    enc = mod.PaintByExampleImageEncoder(
        CLIPVisionConfig(hidden_size=32, projection_dim=32, intermediate_size=37, num_attention_heads=4,
                         num_hidden_layers=5, image_size=32, patch_size=4), proj_size=32)
    pipe = mod.PaintByExamplePipeline(vae=_vae(), image_encoder=enc, unet=_unet(9), scheduler=_scheduler(),
                                      safety_checker=None, feature_extractor=CLIPImageProcessor(crop_size=32, size=32),
                                      requires_safety_checker=False)
    pipe.save_pretrained(str(path))
    return Path(path)


def save_tiny_clip(path: PathLike, seed: int = 0) -> Path:
    """A tiny ``CLIPModel`` + ``CLIPProcessor`` (32-px images, the byte-level tokenizer)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    path = Path(path)
    torch.manual_seed(seed)
    tok = tiny_tokenizer(path / "_tok")
    eos, bos = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|startoftext|>")
    cfg = CLIPConfig(
        text_config=dict(bos_token_id=bos, eos_token_id=eos, pad_token_id=eos, hidden_size=32, intermediate_size=37,
                         num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tok), max_position_embeddings=77),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                           image_size=32, patch_size=4),
        projection_dim=32,
    )
    model = CLIPModel(cfg)
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(crop_size=32, size=32), tokenizer=tok)
    model.save_pretrained(str(path))
    proc.save_pretrained(str(path))
    shutil.rmtree(path / "_tok", ignore_errors=True)
    return path


def save_tiny_sam(path: PathLike, seed: int = 0) -> Path:
    """A tiny SAM state dict (``torch.save``) plus its architecture JSON beside it."""
    import torch

    from refcoco_edit.pipelines.masks import build_sam, sam_arch_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    sam = build_sam(TINY_SAM_ARCH)
    torch.save(sam.state_dict(), str(path))
    sam_arch_file(path).write_text(json.dumps({"sam_arch": TINY_SAM_ARCH}, indent=2))
    return path


def save_all(root: PathLike) -> Dict[str, Path]:
    """Every tiny model under ``root``: sd, sd-inpaint, pbe, clip (folders) and sam (a .pth)."""
    root = Path(root)
    return {
        "sd": save_tiny_sd(root / "sd"),
        "sd-inpaint": save_tiny_sd(root / "sd-inpaint", inpaint=True),
        "pbe": save_tiny_pbe(root / "pbe"),
        "clip": save_tiny_clip(root / "clip"),
        "sam": save_tiny_sam(root / "sam" / "sam_tiny.pth"),
    }


_BUILDERS = {
    "sd": lambda root: save_tiny_sd(root / "sd"),
    "sd-inpaint": lambda root: save_tiny_sd(root / "sd-inpaint", inpaint=True),
    "pbe": lambda root: save_tiny_pbe(root / "pbe"),
    "clip": lambda root: save_tiny_clip(root / "clip"),
    "sam": lambda root: save_tiny_sam(root / "sam" / "sam_tiny.pth"),
}
_ROOT: Optional[Path] = None
_MADE: Dict[str, Path] = {}


def tiny(kind: str) -> Path:
    """The saved tiny model of ``kind`` for this test process (built on first use, shared by every
    test file, removed at exit)."""
    global _ROOT
    if kind not in _MADE:
        if _ROOT is None:
            _ROOT = Path(tempfile.mkdtemp(prefix="refcoco-edit-tiny-"))
            atexit.register(shutil.rmtree, str(_ROOT), True)
        _MADE[kind] = _BUILDERS[kind](_ROOT)
    return _MADE[kind]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    print(json.dumps({k: str(v) for k, v in save_all(sys.argv[1]).items()}, indent=2))
