"""Original-format (CompVis LDM) Stable Diffusion checkpoints as diffusers components, offline.

Some released editors ship one ``.ckpt`` / ``.safetensors`` file in the layout of the original
Stable Diffusion code instead of a diffusers folder — InstructDiffusion's
``v1-5-pruned-emaonly-adaption-task.ckpt``: ``model.diffusion_model.*`` (the UNet; 8 input channels
in the InstructPix2Pix layout), ``first_stage_model.*`` (the VAE), ``cond_stage_model.transformer.*``
(the CLIP text encoder), under a ``state_dict`` key. diffusers' ``from_single_file`` needs the
matching diffusers configs from the hub; here nothing is fetched:

1. ``read_checkpoint``: safetensors, or a torch pickle read with ``torch.load(weights_only=True)``
   (a pickle holding code is refused, never run); the ``state_dict`` wrapper is unwrapped.
2. ``original_config``: the LDM config — from the original YAML file when given (upstream's
   ``configs/instruct_diffusion.yaml``), else inferred from the tensor shapes
   (``infer_original_config``: UNet width, channel multipliers, residual blocks per level,
   attention levels, context width, input channels; VAE widths; SD's noise schedule
   0.00085-0.012 and ``scale_factor`` 0.18215; 8 attention heads as in SD 1.x).
3. ``convert_checkpoint``: the diffusers configs from diffusers' own
   ``create_unet_diffusers_config_from_ldm`` / ``create_vae_diffusers_config_from_ldm``, the weights
   renamed by its ``convert_ldm_unet_checkpoint`` / ``convert_ldm_vae_checkpoint`` /
   ``convert_ldm_clip_checkpoint`` and loaded strictly (a missing or misshapen tensor is a
   ``ModelError``); the CLIP text config is read from the shapes (head width 64, as CLIP's); the
   tokenizer (not in the file) comes from a local folder or a cached hub id.

torch, diffusers and transformers are imported inside the functions.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Optional, Union

from refcoco_edit.models.source import ModelError

__all__ = ["read_checkpoint", "infer_original_config", "read_original_config", "convert_checkpoint",
           "is_single_file", "SINGLE_FILE_SUFFIXES"]

SINGLE_FILE_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth", ".bin")
UNET = "model.diffusion_model."
VAE = "first_stage_model."


def is_single_file(spec: Union[str, Path]) -> bool:
    """True when ``spec`` is an existing file with a checkpoint suffix."""
    p = Path(str(spec)).expanduser()
    return p.is_file() and p.suffix.lower() in SINGLE_FILE_SUFFIXES


def read_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """The tensors of a single-file checkpoint (``state_dict`` unwrapped); ``ModelError`` when it
    cannot be read safely."""
    import pickle

    import torch

    p = Path(path).expanduser()
    try:
        if p.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(p))
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(f"{p}: cannot be read safely as a checkpoint: {first}") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not any(str(k).startswith(UNET) for k in sd):
        raise ModelError(f"{p}: not an original-format Stable Diffusion checkpoint (no {UNET}* tensors)")
    return sd


def _indices(sd: Dict[str, Any], prefix: str) -> list:
    rx = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in sd for m in [rx.match(k)] if m})


def infer_original_config(sd: Dict[str, Any]) -> Dict[str, Any]:
    """The LDM config of an SD-1.x-style checkpoint, read from its tensor shapes."""
    def shape(key: str) -> tuple:
        if key not in sd:
            raise ModelError(f"the checkpoint has no {key}: not a Stable Diffusion UNet/VAE of the known layout")
        return tuple(sd[key].shape)

    u = UNET
    mc, in_ch = shape(u + "input_blocks.0.0.weight")[:2]
    out_ch = shape(u + "out.2.weight")[0]
    blocks = _indices(sd, u + "input_blocks.")
    downs = [i for i in blocks if f"{u}input_blocks.{i}.0.op.weight" in sd]
    lpb = (downs[0] - 1) if downs else len(blocks) - 1
    levels = len(downs) + 1
    mult, attn = [], []
    for lev in range(levels):
        first = (lpb + 1) * lev + 1
        mult.append(shape(f"{u}input_blocks.{first}.0.out_layers.3.weight")[0] // mc)
        if f"{u}input_blocks.{first}.1.proj_in.weight" in sd:
            attn.append(2 ** lev)
    k_keys = [k for k in sd if k.startswith(u) and k.endswith("attn2.to_k.weight")]
    context = int(sd[k_keys[0]].shape[1]) if k_keys else None
    depth = 1
    proj_in = [k for k in sd if k.startswith(u) and k.endswith(".1.proj_in.weight")]
    if proj_in:
        stem = proj_in[0][: -len("proj_in.weight")]
        depth = len(_indices(sd, stem + "transformer_blocks."))
    linear = bool(proj_in) and len(sd[proj_in[0]].shape) == 2
    unet = {"in_channels": int(in_ch), "out_channels": int(out_ch), "model_channels": int(mc),
            "attention_resolutions": attn, "num_res_blocks": int(lpb), "channel_mult": mult, "num_heads": 8,
            "use_spatial_transformer": True, "transformer_depth": depth, "context_dim": context,
            "use_linear_in_transformer": linear, "legacy": False}
    v = VAE + "encoder."
    ch = shape(v + "conv_in.weight")[0]
    vlevels = _indices(sd, v + "down.")
    ddconfig = {"double_z": True, "z_channels": shape(v + "conv_out.weight")[0] // 2, "resolution": 256,
                "in_channels": shape(v + "conv_in.weight")[1], "out_ch": shape(VAE + "decoder.conv_out.weight")[0],
                "ch": int(ch), "ch_mult": [shape(f"{v}down.{i}.block.0.conv2.weight")[0] // ch for i in vlevels],
                "num_res_blocks": len(_indices(sd, v + "down.0.block.")), "attn_resolutions": [], "dropout": 0.0}
    return {"model": {"params": {
        "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "scale_factor": 0.18215,
        "unet_config": {"params": unet},
        "first_stage_config": {"params": {"embed_dim": shape(VAE + "quant_conv.weight")[0] // 2, "ddconfig": ddconfig}},
    }}}


def read_original_config(path: Union[str, Path]) -> Dict[str, Any]:
    """An original LDM YAML config (e.g. upstream's ``configs/instruct_diffusion.yaml``)."""
    import yaml

    try:
        cfg = yaml.safe_load(Path(path).expanduser().read_text(encoding="utf-8"))
        _ = cfg["model"]["params"]["unet_config"]["params"]
        _ = cfg["model"]["params"]["first_stage_config"]["params"]["ddconfig"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise ModelError(f"original_config {path}: not an LDM config with model.params.unet_config / "
                         f"first_stage_config ({type(e).__name__}: {e})") from None
    return cfg


def _load_strict(model: Any, state: Dict[str, Any], what: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("position_ids")]
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or wrong:
        detail = [f"{len(missing)} tensors missing (e.g. {missing[0]})"] if missing else []
        if wrong:
            detail.append(f"{wrong[0][0]} has shape {wrong[0][1]}, expected {wrong[0][2]}")
        raise ModelError(f"{what}: the checkpoint does not fit its inferred architecture: " + "; ".join(detail))
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)


def _text_encoder(sd: Dict[str, Any], tokenizer: Any) -> Any:
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    state = convert_ldm_clip_checkpoint(sd)
    # released files name the text model "text_model.*" (older files: no such level); normalise to it
    tm = "text_model."
    state = {(k if k.startswith(tm) else tm + k): v for k, v in state.items()}
    if tm + "embeddings.token_embedding.weight" not in state:
        raise ModelError("the checkpoint has no cond_stage_model.transformer.* CLIP text encoder")
    vocab, hidden = state[tm + "embeddings.token_embedding.weight"].shape
    layers = len(_indices(state, tm + "encoder.layers."))
    cfg = CLIPTextConfig(
        vocab_size=int(vocab), hidden_size=int(hidden), num_hidden_layers=layers,
        num_attention_heads=max(1, int(hidden) // 64), hidden_act="quick_gelu",
        intermediate_size=int(state[tm + "encoder.layers.0.mlp.fc1.weight"].shape[0]),
        max_position_embeddings=int(state[tm + "embeddings.position_embedding.weight"].shape[0]),
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    model = CLIPTextModel(cfg)
    if not any(k.startswith(tm) for k in model.state_dict()):  # transformers versions that flatten text_model
        state = {k[len(tm):]: v for k, v in state.items()}
    _load_strict(model, state, "cond_stage_model (CLIP text encoder)")
    return model.eval()


def load_tokenizer(spec: str, local_files_only: bool = True) -> Any:
    """A CLIP tokenizer from a folder (or its ``tokenizer/`` subfolder: a diffusers pipeline) or a
    cached hub id."""
    from transformers import CLIPTokenizer

    p = Path(str(spec)).expanduser()
    kw: Dict[str, Any] = {"local_files_only": local_files_only}
    if p.is_dir() and (p / "tokenizer").is_dir():
        kw["subfolder"] = "tokenizer"
    try:
        return CLIPTokenizer.from_pretrained(str(p) if p.exists() else str(spec), **kw)
    except (OSError, ValueError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(f"tokenizer {spec}: cannot load a CLIP tokenizer ({type(e).__name__}: {first}); give "
                         "--editor-arg tokenizer=FOLDER or a cached hub id (openai/clip-vit-large-patch14)") from None


def convert_checkpoint(sd: Dict[str, Any], original_config: Optional[Dict[str, Any]], tokenizer: Any) -> Dict[str, Any]:
    """``{unet, vae, text_encoder, tokenizer, config}`` (fp32, CPU) of an original-format checkpoint;
    ``config`` is the LDM config used (given or inferred)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint,
                                                     create_unet_diffusers_config_from_ldm,
                                                     create_vae_diffusers_config_from_ldm)

    cfg = original_config or infer_original_config(sd)
    params = cfg["model"]["params"]
    try:  # (only the configs' default sample_size depends on diffusers' guess of the model type)
        ucfg = create_unet_diffusers_config_from_ldm(cfg, sd)
        vcfg = create_vae_diffusers_config_from_ldm(cfg, sd, scaling_factor=params.get("scale_factor", 0.18215))
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"cannot build the diffusers configs from the LDM config: {type(e).__name__}: {e}") from None
    unet = UNet2DConditionModel(**ucfg)
    _load_strict(unet, convert_ldm_unet_checkpoint(sd, ucfg), "model.diffusion_model (UNet)")
    vae = AutoencoderKL(**vcfg)
    _load_strict(vae, convert_ldm_vae_checkpoint(sd, vcfg), "first_stage_model (VAE)")
    return {"unet": unet.eval(), "vae": vae.eval(), "text_encoder": _text_encoder(sd, tokenizer), "tokenizer": tokenizer,
            "config": cfg}
