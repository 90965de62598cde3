"""Decoupled Residual ReferAttention (DRRA) and the detail extractor's feature capture.

Both are diffusers attention processors installed on the self-attention (``attn1``) of every
``BasicTransformerBlock`` of a ``UNet2DConditionModel``:

* :class:`CaptureProcessor` (on the detail extractor, a U-Net copy run on the reference): runs
  the original self-attention unchanged and records the hidden states entering it (the
  block's ``norm1`` output, ``(B, M, C)``) under the layer's name;
* :class:`DRRAProcessor` (on the denoising U-Net): ``out = SelfAttn(h) + scale * keep * DRRA(h, f)``
  where ``f`` is the detail extractor's feature of the same layer, ``DRRA`` a multi-head attention
  with its *own* q/k/v/out projections (query from ``h``, key/value from ``f``) and ``scale`` a
  learnable scalar (zero at init: the U-Net is exactly the one it was loaded as). The original
  self-attention and its weights are not touched ("decoupled"); the term is added to the
  self-attention's output, which the block adds to its residual stream ("residual").

What a forward needs reaches the processors through ``cross_attention_kwargs={"freeedit": ctx}``
(a :class:`ReferenceContext`), not through state kept on the modules, so gradient checkpointing's
recomputation sees the same inputs. Every other attention (``attn2``, cross-attention) gets a
:class:`PassProcessor` that drops the ``freeedit`` argument before calling the original processor.
The processors are plain objects (not ``nn.Module``), so the U-Net's ``state_dict`` and
``save_pretrained`` hold exactly the U-Net's own weights; the DRRA weights live in
:class:`DRRALayer` modules owned by the FreeEdit model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

SELF_ATTN_SUFFIX = ".attn1.processor"


def self_attention_layers(unet: Any) -> List[str]:
    """Names (``...attn1``) of every self-attention of a U-Net's transformer blocks, in order."""
    return [k[: -len(".processor")] for k in unet.attn_processors if k.endswith(SELF_ATTN_SUFFIX)]


def module_key(layer: str) -> str:
    """A layer name as an ``nn.ModuleDict`` key (no dots)."""
    return layer.replace(".", "__")


@dataclass
class ReferenceContext:
    """What one U-Net call's processors read and write.

    ``features``: layer -> the detail extractor's features ``(Bf, M, C)`` (DRRA reads them; a
    capture run writes them). ``keep``: ``(B,)`` 0/1 per sample of the U-Net batch (0 turns the
    DRRA term off for that sample: dropped instruction, CFG branches without the reference); the
    U-Net batch may be a multiple ``k * Bf`` of the features' batch (CFG), which are then tiled.
    """

    features: Dict[str, torch.Tensor] = field(default_factory=dict)
    keep: Optional[torch.Tensor] = None
    capture: bool = False


class DRRALayer(nn.Module):
    """One DRRA: its own q/k/v/out projections and a zero-initialised residual scale."""

    def __init__(self, dim: int, heads: int, scale_init: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"DRRA width {dim} is not divisible by {heads} heads")
        self.heads = int(heads)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.scale = nn.Parameter(torch.full((), float(scale_init)))

    def init_from(self, attn: Any) -> None:
        """Copy the projections of a diffusers ``Attention`` (the self-attention it sits beside)."""
        with torch.no_grad():
            for mine, theirs in ((self.to_q, attn.to_q), (self.to_k, attn.to_k), (self.to_v, attn.to_v),
                                 (self.to_out, attn.to_out[0])):
                mine.weight.copy_(theirs.weight)
                if mine.bias is not None:
                    if theirs.bias is not None:
                        mine.bias.copy_(theirs.bias)
                    else:
                        mine.bias.zero_()

    def forward(self, hidden: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Attention from ``hidden`` (B, N, C) to ``features`` (B, M, C), projected back to C."""
        B, N, C = hidden.shape
        h = self.heads
        q = self.to_q(hidden).view(B, N, h, C // h).transpose(1, 2)
        k = self.to_k(features).view(B, -1, h, C // h).transpose(1, 2)
        v = self.to_v(features).view(B, -1, h, C // h).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(a.transpose(1, 2).reshape(B, N, C))


class PassProcessor:
    """Any attention other than a DRRA/capture one: the original processor, ``freeedit`` dropped."""

    def __init__(self, base: Any):
        self.base = base

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None,
                 freeedit: Optional[ReferenceContext] = None) -> torch.Tensor:
        return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class CaptureProcessor(PassProcessor):
    """The detail extractor's self-attention: unchanged, recording its input under ``layer``."""

    def __init__(self, base: Any, layer: str):
        super().__init__(base)
        self.layer = layer

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None,
                 freeedit: Optional[ReferenceContext] = None) -> torch.Tensor:
        if freeedit is not None and freeedit.capture:
            freeedit.features[self.layer] = hidden_states
        return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class DRRAProcessor(PassProcessor):
    """The denoising U-Net's self-attention plus the residual DRRA term of its layer."""

    def __init__(self, base: Any, layer: str, drra: DRRALayer):
        super().__init__(base)
        self.layer = layer
        self.drra = drra

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None,
                 freeedit: Optional[ReferenceContext] = None) -> torch.Tensor:
        out = self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if freeedit is None or self.layer not in freeedit.features:
            return out
        f = freeedit.features[self.layer]
        B = hidden_states.shape[0]
        if f.shape[0] != B:
            if B % f.shape[0]:
                raise ValueError(f"DRRA {self.layer}: U-Net batch {B} is not a multiple of the reference batch {f.shape[0]}")
            f = f.repeat(B // f.shape[0], 1, 1)
        term = self.drra(hidden_states, f.to(hidden_states.dtype))
        if freeedit.keep is not None:
            term = term * freeedit.keep.to(term.dtype).view(B, 1, 1)
        return out + self.drra.scale.to(out.dtype) * term


def install_capture(unet: Any) -> List[str]:
    """Put capture processors on every self-attention of ``unet`` (the detail extractor)."""
    procs = {}
    for name, p in unet.attn_processors.items():
        base = p.base if isinstance(p, PassProcessor) else p
        procs[name] = CaptureProcessor(base, name[: -len(".processor")]) if name.endswith(SELF_ATTN_SUFFIX) \
            else PassProcessor(base)
    unet.set_attn_processor(procs)
    return self_attention_layers(unet)


def install_drra(unet: Any, layers: Dict[str, DRRALayer]) -> None:
    """Put DRRA processors on every self-attention of ``unet`` (``layers``: module_key -> DRRALayer)."""
    procs = {}
    for name, p in unet.attn_processors.items():
        base = p.base if isinstance(p, PassProcessor) else p
        if name.endswith(SELF_ATTN_SUFFIX):
            layer = name[: -len(".processor")]
            procs[name] = DRRAProcessor(base, layer, layers[module_key(layer)])
        else:
            procs[name] = PassProcessor(base)
    unet.set_attn_processor(procs)


def attention_modules(unet: Any) -> Dict[str, Any]:
    """layer name -> the diffusers ``Attention`` module of every self-attention of ``unet``."""
    wanted = set(self_attention_layers(unet))
    return {n: m for n, m in unet.named_modules() if n in wanted}
