"""FreeEdit (Tian et al. 2024): mask-free reference-based editing with a multi-modal instruction.

Pieces (``docs/freeedit.md`` has the whole data flow and every choice made where the paper is silent)
---------------------------------------------------------------------------------------------------
* **Backbone** - the InstructPix2Pix layout (``unet`` with 8 input channels: noisy latent ++ source
  latent, ``vae``, ``text_encoder`` + ``tokenizer``, ``scheduler``). An SD folder (4-channel U-Net)
  is widened to 8 input channels with zero weights for the new ones, as InstructPix2Pix does, so
  it starts out as the text-to-image U-Net on the noise latent.
* **Multi-modal instruction encoder** - ``c = [T ; P(V)]``: ``T`` the CLIP text encoder's last
  hidden state of the instruction (``L`` tokens), ``V`` image tokens of the reference from the
  image encoder (any ``transformers`` vision model; CLIP vision by default): the hidden state of
  layer ``image_encoder_layer`` (penultimate), its patch grid average-pooled to
  ``num_image_tokens`` tokens (a square; 0 = every token, class token included); ``P`` = Linear +
  LayerNorm into the text encoder's width (the learned projection). ``c`` is what the U-Net
  cross-attends to (``L + N`` tokens).
* **Detail extractor** - a copy of the denoising U-Net (same initial weights, trained separately)
  run once per forward on the clean reference latent (``[z_ref * s ; z_ref]`` in the 8 channels,
  timestep ``detail_timestep`` = 0, context = the null instruction by default); the hidden states
  entering each of its self-attentions are its fine-grained features of that layer.
* **DRRA** (``drra.py``) in every self-attention of the denoising U-Net: its own q/k/v/out
  projections (initialised from the self-attention beside it), query from the U-Net's hidden
  states, key/value from the extractor's feature of the same layer, added to the self-attention's
  output times a zero-initialised learnable scale.

Condition dropout (dual classifier-free guidance, as InstructPix2Pix; ``p`` =
``conditioning_dropout_prob``): with ``u ~ U(0, 1)`` per sample from the forward's generator,
``u < 2p`` drops the *multi-modal instruction* (text and reference: ``c`` becomes the null
instruction = the text encoding of "" followed by zero image tokens, and DRRA is off for that
sample) and ``p <= u < 3p`` drops the *image* (a zero source latent). So the instruction alone is
dropped with probability p, the image alone with p, both with p. ``edit`` combines three U-Net
passes: (instruction, image), (null instruction, image), (null instruction, no image).
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .drra import DRRALayer, ReferenceContext, attention_modules, install_capture, install_drra, module_key

PathLike = Union[str, Path]
FREEEDIT_CONFIG = "freeedit_config.json"
FREEEDIT_WEIGHTS = "freeedit_modules.pt"
DEFAULT_IMAGE_ENCODER = "openai/clip-vit-large-patch14"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MODULE_GROUPS = ("projection", "unet", "detail_extractor", "drra", "text_encoder", "image_encoder")


@dataclass
class FreeEditConfig:
    """Every architectural / conditioning choice of FreeEdit (see the module docstring)."""

    drra_scale_init: float = 0.0
    drra_init: str = "self_attention"  # "self_attention" (copy attn1's projections) | "random"
    conditioning_dropout_prob: float = 0.05
    num_image_tokens: int = 16  # a square (patch grid pooled to sqrt x sqrt); 0 = every token
    image_encoder_layer: int = -2  # which hidden state of the image encoder (-1 = last)
    image_encoder: Optional[str] = None  # path / hub id; None = the folder's image_encoder/ or CLIP ViT-L/14
    image_mean: List[float] = field(default_factory=lambda: list(CLIP_MEAN))
    image_std: List[float] = field(default_factory=lambda: list(CLIP_STD))
    reference_resolution: int = 256  # side of the square reference image the trainer/editor feed
    detail_context: str = "null"  # "null" (the null instruction) | "instruction" (the sample's c)
    detail_timestep: int = 0
    scale_source_latent: bool = False  # InstructPix2Pix's convention: the source latent unscaled
    sample_posterior: bool = False  # target latent: posterior mode (False) or a sample

    def __post_init__(self) -> None:
        if not 0.0 <= self.conditioning_dropout_prob <= 1.0 / 3.0:
            raise ValueError(f"conditioning_dropout_prob must be in [0, 1/3], got {self.conditioning_dropout_prob}")
        n = int(self.num_image_tokens)
        if n < 0 or math.isqrt(n) ** 2 != n:
            raise ValueError(f"num_image_tokens must be 0 or a square number (1, 4, 9, 16, ...), got {n}")
        if self.drra_init not in ("self_attention", "random"):
            raise ValueError(f"drra_init must be 'self_attention' or 'random', got {self.drra_init!r}")
        if self.detail_context not in ("null", "instruction"):
            raise ValueError(f"detail_context must be 'null' or 'instruction', got {self.detail_context!r}")
        if int(self.reference_resolution) < 8 or int(self.reference_resolution) % 8:
            raise ValueError(f"reference_resolution must be a positive multiple of 8, got {self.reference_resolution}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError("image_mean and image_std must have 3 values (RGB)")
        self.image_mean = [float(v) for v in self.image_mean]
        self.image_std = [float(v) for v in self.image_std]

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "FreeEditConfig":
        """A config from a dict (JSON / YAML); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown FreeEditConfig keys: {sorted(unknown)}")
        return cls(**d)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------

def widen_conv_in(unet: Any, in_channels: int = 8) -> Any:
    """``unet`` with ``conv_in`` widened to ``in_channels`` (new input channels with zero weights)."""
    old = unet.conv_in
    if old.in_channels == in_channels:
        return unet
    if old.in_channels > in_channels:
        raise ValueError(f"cannot narrow conv_in from {old.in_channels} to {in_channels} channels")
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels].copy_(old.weight)
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


def load_image_encoder(path: str, local_files_only: bool = True, torch_dtype: Any = None) -> Any:
    """A ``transformers`` vision encoder from ``path``: the vision tower of a CLIP / SigLIP
    checkpoint, or any model ``AutoModel`` loads that takes ``pixel_values``."""
    from transformers import AutoConfig, AutoModel

    kw: Dict[str, Any] = {"local_files_only": local_files_only}
    if torch_dtype is not None:
        kw["dtype"] = torch_dtype
    cfg = AutoConfig.from_pretrained(path, local_files_only=local_files_only)
    kind = getattr(cfg, "model_type", "")
    if kind in ("clip", "clip_vision_model"):
        from transformers import CLIPVisionModel

        return CLIPVisionModel.from_pretrained(path, **kw)
    if kind in ("siglip", "siglip_vision_model"):
        from transformers import SiglipVisionModel

        return SiglipVisionModel.from_pretrained(path, **kw)
    return AutoModel.from_pretrained(path, **kw)


def _vision_config(encoder: Any) -> Any:
    cfg = encoder.config
    return getattr(cfg, "vision_config", None) or cfg


def _read_processor_stats(path: str) -> Optional[Dict[str, List[float]]]:
    """``image_mean`` / ``image_std`` of a local encoder folder's ``preprocessor_config.json``."""
    f = Path(path) / "preprocessor_config.json"
    if not f.is_file():
        return None
    d = json.loads(f.read_text())
    if "image_mean" in d and "image_std" in d:
        return {"image_mean": list(d["image_mean"]), "image_std": list(d["image_std"])}
    return None


def load_base(path: PathLike, local_files_only: bool = True, torch_dtype: Any = None) -> Dict[str, Any]:
    """The U-Net (widened to 8 channels when it has 4), VAE, text encoder, tokenizer and scheduler."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    p = str(path)
    kw = {"local_files_only": local_files_only}
    dt = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
    unet = UNet2DConditionModel.from_pretrained(p, subfolder="unet", **kw, **dt)
    if unet.config.in_channels == 4:
        unet = widen_conv_in(unet, 8)
    elif unet.config.in_channels != 8:
        raise ValueError(f"{p}: the U-Net has in_channels={unet.config.in_channels}; FreeEdit starts from an "
                         "InstructPix2Pix (8) or Stable Diffusion (4) U-Net")
    tdt = {} if torch_dtype is None else {"dtype": torch_dtype}
    return {
        "unet": unet,
        "vae": AutoencoderKL.from_pretrained(p, subfolder="vae", **kw, **dt),
        "text_encoder": CLIPTextModel.from_pretrained(p, subfolder="text_encoder", **kw, **tdt),
        "tokenizer": AutoTokenizer.from_pretrained(p, subfolder="tokenizer", **kw),
        "scheduler": DDIMScheduler.from_pretrained(p, subfolder="scheduler", **kw),
    }


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------

@dataclass
class FreeEditOutput:
    """One training forward: what :meth:`FreeEdit.loss` needs, and the draws for logging."""

    noise_pred: torch.Tensor
    noise: torch.Tensor
    noisy_latents: torch.Tensor
    timesteps: torch.Tensor
    target_latents: torch.Tensor
    instruction_dropped: torch.Tensor  # (B,) bool: text + reference replaced by the null instruction
    image_dropped: torch.Tensor        # (B,) bool: zero source latent


class FreeEdit(nn.Module):
    """Multi-modal instruction encoder + 8-channel U-Net + detail extractor + DRRA.

    Build with :meth:`from_pretrained`. The VAE is always frozen; at construction the projection,
    U-Net, detail extractor and DRRA train and the text and image encoders are frozen (the trainer
    sets ``requires_grad`` per phase from :meth:`module_groups`).
    """

    def __init__(self, unet: Any, vae: Any, text_encoder: Any, tokenizer: Any, scheduler: Any, image_encoder: Any,
                 config: Optional[FreeEditConfig] = None, detail_extractor: Any = None):
        super().__init__()
        self.config = config or FreeEditConfig()
        cfg = self.config
        self.unet, self.vae, self.text_encoder, self.image_encoder = unet, vae, text_encoder, image_encoder
        self.tokenizer, self.scheduler = tokenizer, scheduler
        d = text_encoder.config.hidden_size
        if unet.config.cross_attention_dim != d:
            raise ValueError(f"U-Net cross_attention_dim {unet.config.cross_attention_dim} != text hidden size {d}")
        if unet.config.in_channels != 8:
            raise ValueError(f"the denoising U-Net must have 8 input channels, has {unet.config.in_channels}")
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        vcfg = _vision_config(image_encoder)
        self.image_size = int(vcfg.image_size)
        patches = (self.image_size // int(vcfg.patch_size)) ** 2
        if cfg.num_image_tokens > patches:
            raise ValueError(f"num_image_tokens={cfg.num_image_tokens} > the image encoder's {patches} patches")
        self._all_tokens: Optional[int] = None
        self.projection = nn.Sequential(nn.Linear(int(vcfg.hidden_size), d), nn.LayerNorm(d))
        self.detail_extractor = detail_extractor if detail_extractor is not None else copy.deepcopy(unet)
        self.layers = install_capture(self.detail_extractor)
        attns = attention_modules(unet)
        if sorted(attns) != sorted(self.layers):
            raise ValueError("the detail extractor's self-attention layers do not match the U-Net's")
        self.drra = nn.ModuleDict()
        for name in self.layers:
            a = attns[name]
            layer = DRRALayer(a.to_q.in_features, a.heads, cfg.drra_scale_init)
            if cfg.drra_init == "self_attention":
                layer.init_from(a)
            self.drra[module_key(name)] = layer.to(device=a.to_q.weight.device, dtype=a.to_q.weight.dtype)
        install_drra(self.unet, dict(self.drra.items()))
        self.register_buffer("_mean", torch.tensor(cfg.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(cfg.image_std).view(1, 3, 1, 1), persistent=False)
        self.vae.requires_grad_(False)
        self.text_encoder.requires_grad_(False)
        self.image_encoder.requires_grad_(False)

    # -- loading / saving -----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: PathLike, config: Optional[FreeEditConfig] = None, local_files_only: bool = True,
                        image_encoder: Optional[str] = None, torch_dtype: Any = None) -> "FreeEdit":
        """From an InstructPix2Pix folder, an SD folder (U-Net widened to 8 channels) or a FreeEdit
        folder written by :meth:`save_pretrained` (everything loads back, trained modules included).

        The image encoder: ``image_encoder`` if given, else the folder's ``image_encoder/``, else
        ``config.image_encoder``, else CLIP ViT-L/14 (``openai/clip-vit-large-patch14``).
        """
        local = Path(str(path)).expanduser()
        folder = local if local.is_dir() else None
        saved = folder is not None and (folder / FREEEDIT_CONFIG).is_file()
        if config is None:
            config = (FreeEditConfig.from_dict(json.loads((folder / FREEEDIT_CONFIG).read_text())) if saved
                      else FreeEditConfig())
        else:
            config = FreeEditConfig.from_dict(asdict(config))  # a copy: the recorded encoder may change
        comps = load_base(folder if folder is not None else path, local_files_only, torch_dtype)
        if image_encoder is not None:
            enc_path = str(image_encoder)
        elif folder is not None and (folder / "image_encoder").is_dir():
            enc_path = str(folder / "image_encoder")
        else:
            enc_path = config.image_encoder or DEFAULT_IMAGE_ENCODER
        if not saved:
            stats = _read_processor_stats(enc_path)
            if stats is not None:
                config.image_mean, config.image_std = stats["image_mean"], stats["image_std"]
            if config.image_encoder is None or image_encoder is not None:
                config.image_encoder = enc_path
        comps["image_encoder"] = load_image_encoder(enc_path, local_files_only, torch_dtype)
        if saved:
            from diffusers import UNet2DConditionModel

            dt = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
            comps["detail_extractor"] = UNet2DConditionModel.from_pretrained(
                str(folder), subfolder="detail_extractor", local_files_only=local_files_only, **dt)
        model = cls(**comps, config=config)
        if saved:
            state = torch.load(folder / FREEEDIT_WEIGHTS, map_location="cpu", weights_only=True)
            model.projection.load_state_dict(state["projection"])
            model.drra.load_state_dict(state["drra"])
        return model

    def save_pretrained(self, path: PathLike) -> Path:
        """InstructPix2Pix layout + ``detail_extractor/``, ``image_encoder/``, ``freeedit_modules.pt``
        (projection + DRRA) and ``freeedit_config.json``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(path / "unet")
        self.detail_extractor.save_pretrained(path / "detail_extractor")
        self.vae.save_pretrained(path / "vae")
        self.text_encoder.save_pretrained(path / "text_encoder")
        self.tokenizer.save_pretrained(path / "tokenizer")
        self.scheduler.save_pretrained(path / "scheduler")
        self.image_encoder.save_pretrained(path / "image_encoder")
        torch.save({"projection": self.projection.state_dict(), "drra": self.drra.state_dict()}, path / FREEEDIT_WEIGHTS)
        (path / FREEEDIT_CONFIG).write_text(json.dumps(asdict(self.config), indent=2))
        return path

    def module_groups(self) -> Dict[str, List[nn.Parameter]]:
        """Every parameter outside the VAE, by module (disjoint): the trainer's phase units."""
        return {
            "projection": list(self.projection.parameters()),
            "unet": list(self.unet.parameters()),
            "detail_extractor": list(self.detail_extractor.parameters()),
            "drra": list(self.drra.parameters()),
            "text_encoder": list(self.text_encoder.parameters()),
            "image_encoder": list(self.image_encoder.parameters()),
        }

    def trainable_parameters(self) -> List[nn.Parameter]:
        """The parameters that currently require a gradient."""
        return [p for p in self.parameters() if p.requires_grad]

    def enable_gradient_checkpointing(self) -> None:
        """Gradient checkpointing in both U-Nets (DRRA inputs travel as arguments, so recomputation is exact)."""
        self.unet.enable_gradient_checkpointing()
        self.detail_extractor.enable_gradient_checkpointing()

    # -- the multi-modal instruction ------------------------------------------------------------
    def tokenize(self, prompts: Sequence[str]) -> Dict[str, torch.Tensor]:
        """``input_ids`` / ``attention_mask`` (padded to the tokenizer's max length)."""
        enc = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def _device(self) -> torch.device:
        return self.unet.conv_in.weight.device

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``T``: the text encoder's last hidden state (B, L, d)."""
        return self.text_encoder(input_ids.to(self._device()))[0]

    def image_tokens(self, reference_pixels: torch.Tensor) -> torch.Tensor:
        """``P(V)``: the reference's image tokens in the text encoder's width (B, N, d)."""
        x = (reference_pixels.float() + 1.0) / 2.0
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False,
                              antialias=True).clamp(0, 1)
        x = (x - self._mean.float()) / self._std.float()
        dt = next(self.image_encoder.parameters()).dtype
        out = self.image_encoder(pixel_values=x.to(dt), output_hidden_states=True)
        h = out.hidden_states[self.config.image_encoder_layer]
        n = self.config.num_image_tokens
        if n:
            side = self.image_size // int(_vision_config(self.image_encoder).patch_size)
            grid = h[:, h.shape[1] - side * side:]  # the patch tokens (class / register tokens lead)
            grid = grid.transpose(1, 2).reshape(h.shape[0], h.shape[2], side, side)
            k = math.isqrt(n)
            h = F.adaptive_avg_pool2d(grid.float(), (k, k)).to(h.dtype).flatten(2).transpose(1, 2)
        proj_dt = self.projection[0].weight.dtype
        return self.projection(h.to(proj_dt))

    def instruction(self, input_ids: torch.Tensor, reference_pixels: torch.Tensor) -> torch.Tensor:
        """``c = [T ; P(V)]`` (B, L + N, d): what the U-Net cross-attends to."""
        text = self.encode_text(input_ids)
        img = self.image_tokens(reference_pixels.to(self._device()))
        return torch.cat([text, img.to(text.dtype)], dim=1)

    def null_instruction(self, batch: int) -> torch.Tensor:
        """The dropped instruction: the encoding of "" followed by zero image tokens (B, L + N, d)."""
        ids = self.tokenize([""])["input_ids"]
        text = self.encode_text(ids)
        zeros = text.new_zeros(1, self.num_image_tokens(), text.shape[-1])
        return torch.cat([text, zeros], dim=1).expand(batch, -1, -1)

    def num_image_tokens(self) -> int:
        """``N``: the image tokens per reference (``num_image_tokens``, or every token the encoder gives)."""
        if self.config.num_image_tokens:
            return int(self.config.num_image_tokens)
        if self._all_tokens is None:
            with torch.no_grad():
                x = torch.zeros(1, 3, self.image_size, self.image_size, device=self._device(),
                                dtype=next(self.image_encoder.parameters()).dtype)
                h = self.image_encoder(pixel_values=x, output_hidden_states=True).hidden_states[-1]
            self._all_tokens = int(h.shape[1])
        return self._all_tokens

    # -- latents and the two U-Nets -------------------------------------------------------------
    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor, sample: bool = False, generator: Any = None) -> torch.Tensor:
        """Unscaled VAE latent of ``pixels`` in [-1, 1]."""
        dist = self.vae.encode(pixels.to(device=self._device(), dtype=self.vae.dtype)).latent_dist
        return dist.sample(generator) if sample else dist.mode()

    def _unet_source(self, raw_latent: torch.Tensor) -> torch.Tensor:
        return raw_latent * self.vae.config.scaling_factor if self.config.scale_source_latent else raw_latent

    def detail_features(self, reference_latent: torch.Tensor, context: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The detail extractor's feature of every self-attention layer for an unscaled reference latent."""
        x = torch.cat([reference_latent * self.vae.config.scaling_factor, self._unet_source(reference_latent)], dim=1)
        x = x.to(self.detail_extractor.dtype)
        t = torch.full((x.shape[0],), int(self.config.detail_timestep), device=x.device, dtype=torch.long)
        ctx = ReferenceContext(capture=True)
        self.detail_extractor(x, t, encoder_hidden_states=context.to(x.dtype), cross_attention_kwargs={"freeedit": ctx})
        return ctx.features

    def denoise(self, latent_input: torch.Tensor, timesteps: Any, condition: torch.Tensor,
                features: Optional[Dict[str, torch.Tensor]] = None, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The denoising U-Net's prediction; DRRA reads ``features`` (none: the plain U-Net)."""
        ctx = ReferenceContext(features=dict(features or {}), keep=keep)
        return self.unet(latent_input, timesteps, encoder_hidden_states=condition,
                         cross_attention_kwargs={"freeedit": ctx}).sample

    # -- training -------------------------------------------------------------------------------
    def forward(self, source_pixels: torch.Tensor, target_pixels: torch.Tensor, reference_pixels: torch.Tensor,
                input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None, timesteps: Optional[torch.Tensor] = None,
                noise: Optional[torch.Tensor] = None, **_: Any) -> FreeEditOutput:
        """One training forward. Pixels in [-1, 1]; noise, timesteps and condition dropout are drawn
        from ``generator`` only (in that order: [posterior sample], noise, timesteps, dropout)."""
        cfg = self.config
        B = source_pixels.shape[0]
        if target_pixels.shape[0] != B or reference_pixels.shape[0] != B or input_ids.shape[0] != B:
            raise ValueError("source, target, reference and input_ids must have the same batch size")
        dev = self._device()
        sf = self.vae.config.scaling_factor
        src_raw = self.encode_image(source_pixels)
        tgt = self.encode_image(target_pixels, sample=cfg.sample_posterior, generator=generator) * sf
        ref_raw = self.encode_image(reference_pixels)
        if noise is None:
            noise = torch.randn(tgt.shape, generator=generator, device=dev, dtype=tgt.dtype)
        if timesteps is None:
            timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (B,), generator=generator, device=dev)
        noise, timesteps = noise.to(dev), timesteps.to(dev)
        p = cfg.conditioning_dropout_prob if self.training else 0.0
        u = torch.rand(B, generator=generator, device=dev)
        instr_drop = u < 2 * p
        image_drop = (u >= p) & (u < 3 * p)
        noisy = self.scheduler.add_noise(tgt, noise, timesteps)

        cond = self.instruction(input_ids, reference_pixels)
        null = self.null_instruction(B).to(cond.dtype)
        if instr_drop.any():
            cond = torch.where(instr_drop[:, None, None], null, cond)
        features = self.detail_features(ref_raw, cond if cfg.detail_context == "instruction" else null)
        src_in = self._unet_source(src_raw) * (~image_drop).to(src_raw.dtype)[:, None, None, None]
        x = torch.cat([noisy, src_in], dim=1).to(self.unet.dtype)
        pred = self.denoise(x, timesteps, cond.to(self.unet.dtype), features, keep=(~instr_drop))
        return FreeEditOutput(noise_pred=pred, noise=noise, noisy_latents=noisy, timesteps=timesteps,
                              target_latents=tgt, instruction_dropped=instr_drop, image_dropped=image_drop)

    def loss(self, output: FreeEditOutput) -> Dict[str, torch.Tensor]:
        """``{"loss", "eps"}``: the MSE between the U-Net's prediction and the scheduler's target
        (noise for ``epsilon``, velocity for ``v_prediction``, the clean latent for ``sample``);
        ``"eps"`` names the denoising term whatever the prediction type."""
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            target = output.noise
        elif kind == "v_prediction":
            target = self.scheduler.get_velocity(output.target_latents, output.noise, output.timesteps)
        elif kind == "sample":
            target = output.target_latents
        else:
            raise ValueError(f"unsupported prediction_type {kind!r} (epsilon | v_prediction | sample)")
        mse = F.mse_loss(output.noise_pred.float(), target.float())
        return {"loss": mse, "eps": mse.detach()}

    # -- inference ------------------------------------------------------------------------------
    @torch.no_grad()
    def edit(self, source_pixels: torch.Tensor, reference_pixels: torch.Tensor, prompts: Sequence[str],
             num_inference_steps: int = 50, guidance_scale: float = 7.5, image_guidance_scale: float = 1.5,
             generator: Any = None) -> Dict[str, torch.Tensor]:
        """Edit a batch with dual classifier-free guidance (DDIM). Pixels in [-1, 1]; the source's H
        and W multiples of the VAE factor, the reference square (B, 3, R, R). Returns ``images``
        (B, 3, H, W) in [0, 1]."""
        from diffusers import DDIMScheduler
        from diffusers.utils.torch_utils import randn_tensor

        B, _, H, W = source_pixels.shape
        if len(prompts) != B:
            raise ValueError(f"{len(prompts)} prompts for {B} images")
        if reference_pixels.shape[0] != B:
            raise ValueError(f"{reference_pixels.shape[0]} reference images for {B} images")
        f = self.vae_scale_factor
        if H % f or W % f:
            raise ValueError(f"image size {H}x{W} is not a multiple of {f}")
        if reference_pixels.shape[-1] % f or reference_pixels.shape[-2] % f:
            raise ValueError(f"reference size {tuple(reference_pixels.shape[-2:])} is not a multiple of {f}")
        dev = self._device()
        sched = DDIMScheduler.from_config(self.scheduler.config)
        sched.set_timesteps(num_inference_steps, device=dev)
        src_raw = self.encode_image(source_pixels)
        ref_raw = self.encode_image(reference_pixels)
        cond = self.instruction(self.tokenize(prompts)["input_ids"], reference_pixels).to(self.unet.dtype)
        null = self.null_instruction(B).to(cond.dtype)
        features = self.detail_features(ref_raw, cond if self.config.detail_context == "instruction" else null)
        enc = torch.cat([cond, null, null])
        keep = torch.cat([torch.ones(B, device=dev), torch.zeros(2 * B, device=dev)])
        src_in = self._unet_source(src_raw).to(self.unet.dtype)
        img = torch.cat([src_in, src_in, torch.zeros_like(src_in)])
        latents = randn_tensor(src_raw.shape, generator=generator, device=dev, dtype=self.unet.dtype) * sched.init_noise_sigma
        for t in sched.timesteps:
            x = sched.scale_model_input(torch.cat([latents] * 3), t)
            e_full, e_img, e_unc = self.denoise(torch.cat([x, img], dim=1), t, enc, features, keep).chunk(3)
            eps = e_unc + guidance_scale * (e_full - e_img) + image_guidance_scale * (e_img - e_unc)
            latents = sched.step(eps, t, latents).prev_sample
        images = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return {"images": (images.float() / 2 + 0.5).clamp(0, 1)}
