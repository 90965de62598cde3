"""Tiny random models for the benchmark's model metrics and diffusion editors, built in code and
saved to disk (``save_pretrained`` / ``torch.save``), so the tests load them back through the
exact code path of ``--clip-model PATH``, ``--editor-arg model=PATH`` etc. Nothing is downloaded.

    python tests/support/tiny_bench_models.py OUT     # writes them all under OUT and prints the paths

* ``ip2p``: an InstructPix2Pix pipeline (``StableDiffusionInstructPix2PixPipeline``): the tiny
  SD components of ``tiny_models`` with an 8-channel UNet (noisy latents + source latents).
* ``clip``: ``tiny_models``' CLIP (projection 32, 32-px images).
* ``aesthetic``: the LAION aesthetic MLP (published hidden sizes) with input 32, ``layers.*`` keys.
* ``dino``: a tiny transformers ``ViTModel`` (hidden 32, 32-px images, patch 8) + processor.
* ``owlv2``, ``clipseg``, ``grounding-dino``: tiny random text-grounding models (transformers
  ``Owlv2ForObjectDetection`` / ``CLIPSegForImageSegmentation`` / ``GroundingDinoForObjectDetection``,
  32-64 px images) with their processors, for the ``grounded-*`` editors' ``grounder=PATH``.
* ``instructdiffusion``: a single original-format (LDM) checkpoint with the key layout of the
  released InstructDiffusion file (``model.diffusion_model.*`` with an 8-channel UNet,
  ``first_stage_model.*``, ``cond_stage_model.transformer.*``, under ``state_dict``), converted from
  the tiny InstructPix2Pix components, plus the tokenizer folder it needs.
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


def _clip_text_cfg(tok, max_pos: int) -> dict:
    eos, bos = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|startoftext|>")
    return dict(bos_token_id=bos, eos_token_id=eos, pad_token_id=eos, hidden_size=32, intermediate_size=37,
                num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tok), max_position_embeddings=max_pos)


_TINY_VISION = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=32,
                    patch_size=8)


def save_tiny_owlv2(path: PathLike, seed: int = 0) -> Path:
    """A tiny OWLv2 detector + ``Owlv2Processor`` (32-px images, 16-token queries); the box head's
    last layer is scaled down, so boxes start near OWLv2's patch-grid prior instead of saturating."""
    import torch
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    path = Path(path)
    torch.manual_seed(seed)
    tok = tiny_tokenizer(path / "_tok", max_length=16)
    cfg = Owlv2Config(text_config=_clip_text_cfg(tok, 16), vision_config=_TINY_VISION, projection_dim=32)
    model = Owlv2ForObjectDetection(cfg)
    with torch.no_grad():  # random box heads saturate (zero-width boxes): start them at the patch-grid prior
        model.box_head.dense2.weight.mul_(0.01)
        model.box_head.dense2.bias.zero_()
    model.save_pretrained(str(path))
    Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok).save_pretrained(str(path))
    shutil.rmtree(path / "_tok", ignore_errors=True)
    return path


def save_tiny_clipseg(path: PathLike, seed: int = 0) -> Path:
    """A tiny CLIPSeg + ``CLIPSegProcessor`` (32-px images)."""
    import torch
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, ViTImageProcessor

    path = Path(path)
    torch.manual_seed(seed)
    tok = tiny_tokenizer(path / "_tok")
    cfg = CLIPSegConfig(text_config=_clip_text_cfg(tok, 77), vision_config=_TINY_VISION, projection_dim=32, reduce_dim=16,
                        extract_layers=[1], decoder_num_attention_heads=2, decoder_intermediate_size=32)
    CLIPSegForImageSegmentation(cfg).save_pretrained(str(path))
    CLIPSegProcessor(image_processor=ViTImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok).save_pretrained(str(path))
    shutil.rmtree(path / "_tok", ignore_errors=True)
    return path


def save_tiny_grounding_dino(path: PathLike, seed: int = 0) -> Path:
    """A tiny Grounding DINO (Swin 2 stages, BERT 1 layer, d_model 32, 10 queries) + its processor
    (a small word-piece vocabulary)."""
    import string

    import torch
    from transformers import (BertConfig, BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessor, GroundingDinoProcessor, SwinConfig)

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + list(string.ascii_lowercase) + \
        "the a an cow dog cat man woman on left right in red with bowl ball".split()
    (path / "_vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    tok = BertTokenizer(str(path / "_vocab.txt"))
    torch.manual_seed(seed)
    cfg = GroundingDinoConfig(
        backbone_config=SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                                   window_size=4, out_features=["stage1", "stage2"]),
        text_config=BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=37, max_position_embeddings=64),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
        decoder_attention_heads=2, num_queries=10, num_feature_levels=2, encoder_n_points=2, decoder_n_points=2,
        max_text_len=32, use_timm_backbone=False)
    GroundingDinoForObjectDetection(cfg).save_pretrained(str(path))
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 32, "longest_edge": 64}),
                           tokenizer=tok).save_pretrained(str(path))
    (path / "_vocab.txt").unlink()
    return path


def _ldm_unet_keys(unet) -> Dict[str, str]:
    """diffusers UNet2DConditionModel parameter name -> its name in the original LDM layout (the
    inverse of diffusers' ``convert_ldm_unet_checkpoint``, as in diffusers'
    ``scripts/convert_diffusers_to_original_stable_diffusion.py``, for any number of levels)."""
    cfg = unet.config
    lpb, levels = int(cfg.layers_per_block), len(cfg.block_out_channels)
    prefix = [("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
              ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2.")]
    for i in range(levels):
        for j in range(lpb):
            prefix.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{(lpb + 1) * i + j + 1}.0."))
            prefix.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{(lpb + 1) * i + j + 1}.1."))
        for j in range(lpb + 1):
            prefix.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{(lpb + 1) * i + j}.0."))
            prefix.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{(lpb + 1) * i + j}.1."))
        if i < levels - 1:
            prefix.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(lpb + 1) * (i + 1)}.0.op."))
            has_attn = "CrossAttn" in cfg.up_block_types[i]
            prefix.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{(lpb + 1) * i + lpb}.{2 if has_attn else 1}."))
    prefix += [("mid_block.attentions.0.", "middle_block.1."), ("mid_block.resnets.0.", "middle_block.0."),
               ("mid_block.resnets.1.", "middle_block.2.")]
    resnet = [("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("norm2.", "out_layers.0."),
              ("conv2.", "out_layers.3."), ("time_emb_proj.", "emb_layers.1."), ("conv_shortcut.", "skip_connection.")]
    out = {}
    for name in unet.state_dict():
        new = name
        for d, o in prefix:
            if name.startswith(d):
                new = o + name[len(d):]
                if ".resnets." in d:
                    for rd, ro in resnet:
                        new = new.replace("." + rd, "." + ro, 1) if new[len(o):].startswith(rd) else new
                break
        out[name] = new
    return out


def _ldm_vae_keys(vae) -> Dict[str, str]:
    """diffusers AutoencoderKL parameter name -> its LDM ``first_stage_model`` name."""
    levels = len(vae.config.block_out_channels)
    pairs = [("conv_norm_out.", "norm_out."), ("mid_block.attentions.0.", "mid.attn_1."),
             ("mid_block.resnets.0.", "mid.block_1."), ("mid_block.resnets.1.", "mid.block_2.")]
    for i in range(levels):
        pairs.append((f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block."))
        pairs.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
        pairs.append((f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{levels - 1 - i}.block."))
        pairs.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{levels - 1 - i}.upsample."))
    attn = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")]
    out = {}
    for name in vae.state_dict():
        new = name.replace("conv_shortcut.", "nin_shortcut.")
        for d, o in pairs:
            new = new.replace(d, o)
        if ".attn_1." in new:
            for d, o in attn:
                new = new.replace(".attn_1." + d, ".attn_1." + o)
        out[name] = new
    return out


def save_tiny_instructdiffusion(path: PathLike, seed: int = 0, safetensors: bool = False) -> Path:
    """``path/instructdiffusion-tiny.ckpt`` (or ``.safetensors``): the tiny InstructPix2Pix components in
    the released InstructDiffusion file's layout (``{"state_dict": {model.diffusion_model.*,
    first_stage_model.*, cond_stage_model.transformer.text_model.*}}``), plus ``path/tokenizer``
    and ``path/diffusers`` (the same weights as a diffusers folder). Returns the checkpoint file."""
    import torch
    from diffusers import StableDiffusionInstructPix2PixPipeline

    path = Path(path)
    folder = save_tiny_ip2p(path / "diffusers", seed=seed)
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(str(folder), safety_checker=None,
                                                                   requires_safety_checker=False)
    sd = {}
    for name, ldm in _ldm_unet_keys(pipe.unet).items():
        sd["model.diffusion_model." + ldm] = pipe.unet.state_dict()[name].clone()
    for name, ldm in _ldm_vae_keys(pipe.vae).items():
        t = pipe.vae.state_dict()[name].clone()
        if ".attn_1." in ldm and ldm.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")):
            t = t[:, :, None, None]  # the LDM VAE's attention projections are 1x1 convolutions
        sd["first_stage_model." + ldm] = t
    for name, t in pipe.text_encoder.state_dict().items():  # the released file's "text_model." level
        sd["cond_stage_model.transformer." + (name if name.startswith("text_model.") else "text_model." + name)] = t.clone()
    sd["model_ema.decay"] = torch.tensor(0.9999)  # as in LDM training checkpoints (not a weight of any component)
    pipe.tokenizer.save_pretrained(str(path / "tokenizer"))
    if safetensors:
        from safetensors.torch import save_file

        out = path / "instructdiffusion-tiny.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(out))
    else:
        out = path / "instructdiffusion-tiny.ckpt"
        torch.save({"state_dict": sd, "global_step": 0}, str(out))
    return out


_BUILDERS = {
    "instructdiffusion": lambda root: save_tiny_instructdiffusion(root / "instructdiffusion"),
    "owlv2": lambda root: save_tiny_owlv2(root / "owlv2"),
    "clipseg": lambda root: save_tiny_clipseg(root / "clipseg"),
    "grounding-dino": lambda root: save_tiny_grounding_dino(root / "grounding-dino"),
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
    if kind in ("sd", "sd-inpaint", "pbe", "sam"):
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
