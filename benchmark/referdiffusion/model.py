"""ReferDiffusion (paper Sec. 4): an InstructPix2Pix UNet conditioned through a Region-Embedder Module.

Pieces
------
* **Backbone** - InstructPix2Pix layout, loaded from a local folder (or hub id) with the
  subfolders ``unet`` (``UNet2DConditionModel``, ``in_channels=8``: noisy latent ++ source latent),
  ``vae`` (``AutoencoderKL``), ``text_encoder`` (``CLIPTextModel``) + ``tokenizer`` and
  ``scheduler`` (DDIM is used for sampling whatever the saved scheduler class is).
  ``F_p`` = last hidden state of the CLIP text encoder, ``(B, L, d)``.
* **Region-Embedder Module** (:class:`RegionEmbedder`)
  - *edit extractor*: pre-LN multi-head self-attention over ``F_p`` (residual), then global
    average pooling -> ``e_e`` (``d``). Supervised (``losses.edit_embedding_loss``) by the mean of
    ``F_p`` over the tokens of the edit phrase.
  - *referring extractor*: the same block with its own weights -> ``F_er`` (``d``).
    ``MLP_f(F_er)`` (``d -> C_s``) is a filter over the image features ``F_s`` (``B, C_s, h, w``):
    ``M_hat = sigmoid(F_s . MLP_f(F_er) / sqrt(C_s) + b)``, supervised by the source mask ``M``
    (``losses.mask_loss``); ``e_v = W_v (sum M_hat F_s / sum M_hat)`` (``C_s -> d``);
    ``e_r = MLP_r(F_er)`` (``d -> d``).
  - *fusion*: multi-head cross-attention, query ``F_p``, key/value ``[F_p; e_v; e_r; e_e]``
    (``L + 3`` tokens), residual: ``c = F_p + Attn(F_p, KV)``. ``c`` is the UNet's
    ``encoder_hidden_states``.

Choices where the paper is ambiguous (all in :class:`ReferDiffusionConfig`)
----------------------------------------------------------------------------
* ``F_s`` (``image_features``): ``"latent"`` (default) = a small trainable conv stack over the
  (frozen) VAE latent of the source, so ``M_hat`` lives at latent resolution (H/8 for SD) and
  costs almost nothing; ``"pixel"`` = a small strided conv encoder of the source pixels down to
  the same resolution. ``C_s`` = ``image_feature_dim``.
* Char -> token alignment of the edit span: the tokenizer's ``offset_mapping`` (fast
  tokenizers); a token belongs to the span when its character range overlaps ``[start, end)``.
  For slow tokenizers: prefix counting, token ``i`` of the prompt is in the span when
  ``n(text[:start]) <= i-1 < n(text[:end])`` with ``n`` the number of BPE tokens of a prefix (spans
  in our data are word-aligned, where both rules agree). BOS/EOS/padding are never in the span.
* GAP (``pool_valid_only``): mean over the non-padding tokens (BOS..EOS) by default; ``False``
  averages all ``L`` positions as SD's CLIP conditioning does.
* ``e_r`` and the filter use two separate MLPs (the paper writes ``MLP`` for both but they
  map to different spaces, ``d`` vs ``C_s``).
* The edit target (mean edit-token ``F_p``) is detached (``detach_edit_target``) so that the
  extractor learns to find the edit phrase, not the text encoder to collapse onto ``e_e``.
* ``zero_init_fusion`` (default True): the fusion's output projection starts at zero, so
  ``c == F_p`` at initialisation and a pretrained InstructPix2Pix starts exactly where it was.
  Gradients then reach the fusion's inner weights and ``e_r``/``e_v`` after the first update.
* Classifier-free guidance as InstructPix2Pix (``conditioning_dropout_prob`` = p): with
  ``u ~ U(0, 1)`` per sample, ``u < 2p`` drops the text condition and ``p <= u < 3p`` the image
  condition (both dropped for ``u < p``). The null text condition is the raw ``F_p`` of the empty
  prompt (no region tokens; the same tensor is used at inference); a dropped image is a zero
  source latent. Inference combines three UNet passes with ``guidance_scale`` (text) and
  ``image_guidance_scale`` exactly as diffusers' InstructPix2Pix pipeline.
* The source latent concatenated to the UNet input is *not* multiplied by the VAE scaling
  factor (InstructPix2Pix's convention, so its weights fit); the latent compared by the
  Region-Control Loss is the scaled one, in the same space as the denoised latent
  (``scale_source_latent`` switches the concatenated one to scaled).
* The VAE is frozen; the text encoder is frozen unless ``train_text_encoder``. Latents use the
  posterior mode (``sample_posterior`` samples the target latent instead).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

PathLike = Union[str, Path]
REM_WEIGHTS = "referdiffusion_rem.pt"
REM_CONFIG = "referdiffusion_config.json"


@dataclass
class ReferDiffusionConfig:
    """Every architectural / conditioning choice of ReferDiffusion (see the module docstring)."""

    num_heads: int = 8
    image_features: str = "latent"  # "latent" | "pixel"
    image_feature_dim: int = 64
    pool_valid_only: bool = True
    detach_edit_target: bool = True
    zero_init_fusion: bool = True
    conditioning_dropout_prob: float = 0.05
    scale_source_latent: bool = False
    sample_posterior: bool = False
    train_text_encoder: bool = False
    use_rem: bool = True  # False: plain InstructPix2Pix fine-tune (c = F_p), the ablation's first row

    def __post_init__(self) -> None:
        if self.image_features not in ("latent", "pixel"):
            raise ValueError(f"image_features must be 'latent' or 'pixel', got {self.image_features!r}")
        if not 0.0 <= self.conditioning_dropout_prob <= 1.0 / 3.0:
            raise ValueError("conditioning_dropout_prob must be in [0, 1/3]")

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ReferDiffusionConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ReferDiffusionConfig keys: {sorted(unknown)}")
        return cls(**d)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------

def load_components(path: PathLike, local_files_only: bool = True, torch_dtype=None) -> Dict[str, Any]:
    """The InstructPix2Pix components from ``path`` (a folder or hub id with the diffusers layout)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    p = str(path)
    kw = {"local_files_only": local_files_only}
    dt = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
    unet = UNet2DConditionModel.from_pretrained(p, subfolder="unet", **kw, **dt)
    if unet.config.in_channels != 8:
        raise ValueError(f"{p}: the UNet has in_channels={unet.config.in_channels}; InstructPix2Pix needs 8")
    return {
        "unet": unet,
        "vae": AutoencoderKL.from_pretrained(p, subfolder="vae", **kw, **dt),
        "text_encoder": CLIPTextModel.from_pretrained(p, subfolder="text_encoder", **kw, **dt),
        "tokenizer": AutoTokenizer.from_pretrained(p, subfolder="tokenizer", **kw),
        "scheduler": DDIMScheduler.from_pretrained(p, subfolder="scheduler", **kw),
    }


# ----------------------------------------------------------------------------------------------
# Text: tokens and the edit-span alignment
# ----------------------------------------------------------------------------------------------

def span_token_mask(tokenizer, prompts: Sequence[str], spans: Sequence[Optional[Sequence[int]]],
                    max_length: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Tokenize ``prompts`` (padded to ``max_length``) and mark the tokens of each char span.

    Returns ``input_ids``, ``attention_mask`` and ``span_mask`` (``(B, L)`` float, 1 on the
    span's tokens). A ``None`` span gives an all-zero row.
    """
    L = max_length or tokenizer.model_max_length
    fast = bool(getattr(tokenizer, "is_fast", False))
    enc = tokenizer(list(prompts), padding="max_length", max_length=L, truncation=True,
                    return_offsets_mapping=fast, return_tensors="pt")
    special = set(tokenizer.all_special_ids)
    span_mask = torch.zeros(enc["input_ids"].shape, dtype=torch.float32)
    for i, (text, span) in enumerate(zip(prompts, spans)):
        if span is None:
            continue
        a, b = int(span[0]), int(span[1])
        ids = enc["input_ids"][i].tolist()
        if fast:
            for j, (s, e) in enumerate(enc["offset_mapping"][i].tolist()):
                if ids[j] not in special and e > s and s < b and e > a:
                    span_mask[i, j] = 1.0
        else:  # prefix counting (word-aligned spans)
            n_a = len(tokenizer.tokenize(text[:a]))
            n_b = len(tokenizer.tokenize(text[:b]))
            for j in range(1 + n_a, min(1 + n_b, L)):
                if ids[j] not in special:
                    span_mask[i, j] = 1.0
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "span_mask": span_mask}


def masked_mean(x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean of ``x`` (B, L, d) over the positions where ``mask`` (B, L) is 1 (all if None)."""
    if mask is None:
        return x.mean(dim=1)
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


# ----------------------------------------------------------------------------------------------
# The Region-Embedder Module
# ----------------------------------------------------------------------------------------------

class TokenExtractor(nn.Module):
    """Pre-LN self-attention over the token features (residual), then global average pooling."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def forward(self, tokens: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
        h = self.norm(tokens)
        pad = None if valid is None else valid == 0
        a, _ = self.attn(h, h, h, key_padding_mask=pad, need_weights=False)
        return masked_mean(tokens + a, valid)


def _mlp(d_in: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_in), nn.SiLU(), nn.Linear(d_in, d_out))


class ImageFeatureEncoder(nn.Module):
    """``F_s``: a small conv stack over the source latent ("latent") or pixels ("pixel")."""

    def __init__(self, mode: str, latent_channels: int, dim: int, downsample: int):
        super().__init__()
        self.mode = mode
        layers: List[nn.Module] = []
        if mode == "latent":
            layers += [nn.Conv2d(latent_channels, dim, 3, padding=1), nn.SiLU()]
        else:
            c = 3
            for _ in range(int(round(math.log2(max(downsample, 1))))):
                layers += [nn.Conv2d(c, dim, 3, stride=2, padding=1), nn.SiLU()]
                c = dim
            layers += [nn.Conv2d(c, dim, 3, padding=1), nn.SiLU()]
        layers += [nn.Conv2d(dim, dim, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, source_latent: torch.Tensor, source_pixels: torch.Tensor) -> torch.Tensor:
        return self.net(source_latent if self.mode == "latent" else source_pixels)


@dataclass
class RegionEmbedding:
    """What the REM computes for a batch."""

    condition: torch.Tensor       # c, (B, L, d)
    e_e: torch.Tensor             # (B, d)
    e_r: torch.Tensor             # (B, d)
    e_v: torch.Tensor             # (B, d)
    mask_logits: torch.Tensor     # (B, 1, h, w), pre-sigmoid M_hat


class RegionEmbedder(nn.Module):
    """Edit extractor, referring extractor (mask filter, e_v, e_r) and the fusion cross-attention."""

    def __init__(self, text_dim: int, latent_channels: int, vae_downsample: int, cfg: ReferDiffusionConfig):
        super().__init__()
        C = cfg.image_feature_dim
        self.pool_valid_only = cfg.pool_valid_only
        self.edit_extractor = TokenExtractor(text_dim, cfg.num_heads)
        self.refer_extractor = TokenExtractor(text_dim, cfg.num_heads)
        self.image_encoder = ImageFeatureEncoder(cfg.image_features, latent_channels, C, vae_downsample)
        self.filter_mlp = _mlp(text_dim, C)
        self.mask_bias = nn.Parameter(torch.zeros(()))
        self.refer_mlp = _mlp(text_dim, text_dim)
        self.visual_proj = nn.Linear(C, text_dim)
        self.fusion_norm = nn.LayerNorm(text_dim)
        self.fusion = nn.MultiheadAttention(text_dim, cfg.num_heads, batch_first=True)
        if cfg.zero_init_fusion:
            nn.init.zeros_(self.fusion.out_proj.weight)
            nn.init.zeros_(self.fusion.out_proj.bias)

    def parameter_groups(self) -> Dict[str, List[nn.Parameter]]:
        """The REM's parameters by branch (for tests and per-branch learning rates)."""
        return {
            "edit_extractor": list(self.edit_extractor.parameters()),
            "refer_extractor": list(self.refer_extractor.parameters()),
            "image_encoder": list(self.image_encoder.parameters()),
            "filter_mlp": list(self.filter_mlp.parameters()) + [self.mask_bias],
            "refer_mlp": list(self.refer_mlp.parameters()),
            "visual_proj": list(self.visual_proj.parameters()),
            "fusion": list(self.fusion_norm.parameters()) + list(self.fusion.parameters()),
        }

    def forward(self, text_features: torch.Tensor, attention_mask: Optional[torch.Tensor],
                source_latent: torch.Tensor, source_pixels: torch.Tensor) -> RegionEmbedding:
        valid = attention_mask if self.pool_valid_only else None
        e_e = self.edit_extractor(text_features, valid)
        f_er = self.refer_extractor(text_features, valid)
        f_s = self.image_encoder(source_latent, source_pixels)  # (B, C, h, w)
        filt = self.filter_mlp(f_er)  # (B, C)
        logits = torch.einsum("bchw,bc->bhw", f_s, filt) / math.sqrt(f_s.shape[1]) + self.mask_bias
        weights = torch.sigmoid(logits).unsqueeze(1)  # (B, 1, h, w)
        pooled = (f_s * weights).sum(dim=(2, 3)) / weights.sum(dim=(2, 3)).clamp_min(1e-6)
        e_v = self.visual_proj(pooled)
        e_r = self.refer_mlp(f_er)
        kv = torch.cat([text_features, e_v[:, None], e_r[:, None], e_e[:, None]], dim=1)
        q = self.fusion_norm(text_features)
        fused, _ = self.fusion(q, self.fusion_norm(kv), self.fusion_norm(kv), need_weights=False)
        return RegionEmbedding(text_features + fused, e_e, e_r, e_v, logits.unsqueeze(1))


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------

@dataclass
class ReferDiffusionOutput:
    """One training forward: everything ``losses.total_loss`` needs."""

    noise_pred: torch.Tensor
    noise: torch.Tensor
    noisy_latents: torch.Tensor
    timesteps: torch.Tensor
    target_latents: torch.Tensor
    source_latents: torch.Tensor      # scaled, the space of x0 (for the RCL)
    mask_logits: Optional[torch.Tensor]
    e_e: Optional[torch.Tensor]
    edit_target: Optional[torch.Tensor]
    edit_valid: Optional[torch.Tensor]  # (B,) 1 where the sample has edit tokens
    text_dropped: torch.Tensor
    image_dropped: torch.Tensor


class ReferDiffusion(nn.Module):
    """InstructPix2Pix UNet + Region-Embedder Module. Build with :meth:`from_pretrained`."""

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler, config: Optional[ReferDiffusionConfig] = None):
        super().__init__()
        self.config = config or ReferDiffusionConfig()
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.tokenizer, self.scheduler = tokenizer, scheduler
        self.vae.requires_grad_(False)
        self.text_encoder.requires_grad_(self.config.train_text_encoder)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        d = text_encoder.config.hidden_size
        if unet.config.cross_attention_dim != d:
            raise ValueError(f"UNet cross_attention_dim {unet.config.cross_attention_dim} != text hidden size {d}")
        self.rem = (RegionEmbedder(d, vae.config.latent_channels, self.vae_scale_factor, self.config)
                    if self.config.use_rem else None)

    # -- loading / saving -----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: PathLike, config: Optional[ReferDiffusionConfig] = None,
                        local_files_only: bool = True, torch_dtype=None) -> "ReferDiffusion":
        """Components from an InstructPix2Pix folder; the REM too when ``path`` holds one (a
        checkpoint written by :meth:`save_pretrained`), else a fresh REM."""
        path = Path(path) if Path(str(path)).exists() else path
        if config is None and isinstance(path, Path) and (path / REM_CONFIG).is_file():
            config = ReferDiffusionConfig.from_dict(json.loads((path / REM_CONFIG).read_text()))
        model = cls(**load_components(path, local_files_only, torch_dtype), config=config)
        if isinstance(path, Path) and (path / REM_WEIGHTS).is_file() and model.rem is not None:
            model.rem.load_state_dict(torch.load(path / REM_WEIGHTS, map_location="cpu", weights_only=True))
        return model

    def save_pretrained(self, path: PathLike) -> Path:
        """InstructPix2Pix layout + ``referdiffusion_rem.pt`` + ``referdiffusion_config.json``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(path / "unet")
        self.vae.save_pretrained(path / "vae")
        self.text_encoder.save_pretrained(path / "text_encoder")
        self.tokenizer.save_pretrained(path / "tokenizer")
        self.scheduler.save_pretrained(path / "scheduler")
        if self.rem is not None:
            torch.save(self.rem.state_dict(), path / REM_WEIGHTS)
        (path / REM_CONFIG).write_text(json.dumps(asdict(self.config), indent=2))
        return path

    def trainable_parameters(self) -> List[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # -- pieces ---------------------------------------------------------------------------------
    def tokenize(self, prompts: Sequence[str], edit_spans: Optional[Sequence[Optional[Sequence[int]]]] = None):
        spans = list(edit_spans) if edit_spans is not None else [None] * len(prompts)
        return span_token_mask(self.tokenizer, prompts, spans)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        dev = next(self.text_encoder.parameters()).device
        return self.text_encoder(input_ids.to(dev))[0]

    def null_text(self, batch: int) -> torch.Tensor:
        ids = self.tokenizer([""], padding="max_length", max_length=self.tokenizer.model_max_length,
                             return_tensors="pt")["input_ids"]
        return self.encode_text(ids).expand(batch, -1, -1)

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
        """Unscaled VAE latent of ``pixels`` in [-1, 1]."""
        dist = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
        return dist.sample(generator) if sample else dist.mode()

    def condition(self, text_features, attention_mask, source_latent_scaled, source_pixels) -> Tuple[torch.Tensor, Optional[RegionEmbedding]]:
        if self.rem is None:
            return text_features, None
        r = self.rem(text_features, attention_mask, source_latent_scaled, source_pixels)
        return r.condition, r

    def _unet_source(self, raw_latent: torch.Tensor) -> torch.Tensor:
        return raw_latent * self.vae.config.scaling_factor if self.config.scale_source_latent else raw_latent

    # -- training -------------------------------------------------------------------------------
    def forward(self, source_pixels: torch.Tensor, target_pixels: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, edit_token_mask: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None, timesteps: Optional[torch.Tensor] = None,
                noise: Optional[torch.Tensor] = None, **_: Any) -> ReferDiffusionOutput:
        """One training forward (noise, timesteps and condition dropout drawn from ``generator``)."""
        cfg = self.config
        B = source_pixels.shape[0]
        dev = source_pixels.device
        sf = self.vae.config.scaling_factor
        src_raw = self.encode_image(source_pixels)
        tgt = self.encode_image(target_pixels, sample=cfg.sample_posterior, generator=generator) * sf
        src_scaled = src_raw * sf
        if noise is None:
            noise = torch.randn(tgt.shape, generator=generator, device=dev, dtype=tgt.dtype)
        if timesteps is None:
            timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (B,), generator=generator, device=dev)
        noisy = self.scheduler.add_noise(tgt, noise, timesteps)

        text = self.encode_text(input_ids)
        attention_mask = attention_mask.to(dev)
        cond, region = self.condition(text, attention_mask, src_scaled, source_pixels)

        p = cfg.conditioning_dropout_prob if self.training else 0.0
        u = torch.rand(B, generator=generator, device=dev)
        text_drop = u < 2 * p
        image_drop = (u >= p) & (u < 3 * p)
        if text_drop.any():
            cond = torch.where(text_drop[:, None, None], self.null_text(B).to(cond.dtype), cond)
        src_in = self._unet_source(src_raw) * (~image_drop).to(src_raw.dtype)[:, None, None, None]
        noise_pred = self.unet(torch.cat([noisy, src_in], dim=1), timesteps, encoder_hidden_states=cond).sample

        edit_target = edit_valid = None
        if region is not None and edit_token_mask is not None:
            etm = edit_token_mask.to(dev)
            edit_target = masked_mean(text, etm)
            if cfg.detach_edit_target:
                edit_target = edit_target.detach()
            edit_valid = (etm.sum(dim=1) > 0).to(text.dtype)
        return ReferDiffusionOutput(
            noise_pred=noise_pred, noise=noise, noisy_latents=noisy, timesteps=timesteps, target_latents=tgt,
            source_latents=src_scaled.detach(), mask_logits=None if region is None else region.mask_logits,
            e_e=None if region is None else region.e_e, edit_target=edit_target, edit_valid=edit_valid,
            text_dropped=text_drop, image_dropped=image_drop)

    # -- inference ------------------------------------------------------------------------------
    @torch.no_grad()
    def edit(self, source_pixels: torch.Tensor, prompts: Sequence[str], num_inference_steps: int = 50,
             guidance_scale: float = 7.5, image_guidance_scale: float = 1.5,
             generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
        """Edit a batch (pixels in [-1, 1], H and W multiples of the VAE factor).

        Returns ``images`` (B, 3, H, W) in [0, 1] and ``mask`` (B, 1, H, W): M_hat upsampled (ones
        without a REM).
        """
        from diffusers import DDIMScheduler
        from diffusers.utils.torch_utils import randn_tensor

        B, _, H, W = source_pixels.shape
        if len(prompts) != B:
            raise ValueError(f"{len(prompts)} prompts for {B} images")
        if H % self.vae_scale_factor or W % self.vae_scale_factor:
            raise ValueError(f"image size {H}x{W} is not a multiple of {self.vae_scale_factor}")
        dev = source_pixels.device
        sched = DDIMScheduler.from_config(self.scheduler.config)
        sched.set_timesteps(num_inference_steps, device=dev)
        src_raw = self.encode_image(source_pixels)
        tok = self.tokenize(prompts)
        text = self.encode_text(tok["input_ids"])
        cond, region = self.condition(text, tok["attention_mask"].to(dev), src_raw * self.vae.config.scaling_factor,
                                      source_pixels)
        null = self.null_text(B).to(cond.dtype)
        enc = torch.cat([cond, null, null])
        src_in = self._unet_source(src_raw)
        img = torch.cat([src_in, src_in, torch.zeros_like(src_in)])
        latents = randn_tensor(src_raw.shape, generator=generator, device=dev, dtype=src_raw.dtype) * sched.init_noise_sigma
        for t in sched.timesteps:
            x = sched.scale_model_input(torch.cat([latents] * 3), t)
            e_text, e_img, e_unc = self.unet(torch.cat([x, img], dim=1), t, encoder_hidden_states=enc).sample.chunk(3)
            eps = e_unc + guidance_scale * (e_text - e_img) + image_guidance_scale * (e_img - e_unc)
            latents = sched.step(eps, t, latents).prev_sample
        images = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        images = (images / 2 + 0.5).clamp(0, 1)
        if region is not None:
            mask = F.interpolate(torch.sigmoid(region.mask_logits), size=(H, W), mode="bilinear", align_corners=False)
        else:
            mask = torch.ones(B, 1, H, W, device=dev)
        return {"images": images, "mask": mask}
