"""ReferDiffusion losses: epsilon MSE, mask (BCE + Dice), edit embedding, Region-Control Loss.

``total_loss(out, batch, scheduler, weights)`` returns ``{"loss": total, "eps": ..., "mask": ...,
"mask_bce": ..., "mask_dice": ..., "edit": ..., "rcl": ...}`` (every term, for logging; a term whose
weight is 0 or whose inputs are missing is reported as 0 and not computed into the graph).

Region-Control Loss - our reading of the paper's Eq. 2
------------------------------------------------------
The paper writes the RCL as an L1 distance between "the predicted image" and the source "outside
the edited area" without fixing the space or the normaliser. We read it as

    x0_hat = (x_t - sqrt(1 - abar_t) * eps_hat) / sqrt(abar_t)              (the scheduler's abar)
    L_RC   = sum( (1 - M_e_down) * |x0_hat - sg(z_s)| ) / (C * sum(1 - M_e_down))

in the (scaled) VAE latent space: ``z_s`` is the source latent with stop-gradient, ``M_e_down`` the
edited-area mask brought to latent resolution by max pooling (``rcl_mask_downsample="max"``: a
latent cell touching the edit counts as inside, so the loss never fights the edit at its border;
"area" > 0.5 and "nearest" are the alternatives). The mean over outside cells keeps the weight
independent of the edit's size. ``rcl_weighting="alpha"`` multiplies each sample's term by
``abar_t`` (x0_hat is noisy at large t; off by default, the literal reading).

Mask loss: BCE-with-logits + soft Dice on sigmoid(M_hat) against the source mask brought to M_hat's
resolution by area interpolation (soft targets at object borders). Dice = 1 - (2 sum(p m) + s) /
(sum p + sum m + s), smooth ``s = 1``, per sample, averaged.

Edit-embedding loss: MSE (``edit_loss="mse"``) or 1 - cosine (``"cosine"``) between e_e and the mean
of the edit-phrase token features, over samples that have edit tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F


@dataclass
class LossWeights:
    """Weights and options of the loss terms (ablation: rem=False sets mask/edit to 0, etc.)."""

    eps: float = 1.0
    mask: float = 1.0
    mask_bce: float = 1.0   # relative weights inside the mask loss
    mask_dice: float = 1.0
    edit: float = 1.0
    rcl: float = 0.1
    edit_loss: str = "mse"          # "mse" | "cosine"
    rcl_mask_downsample: str = "max"  # "max" | "area" | "nearest"
    rcl_weighting: str = "none"       # "none" | "alpha"

    def __post_init__(self) -> None:
        if self.edit_loss not in ("mse", "cosine"):
            raise ValueError(f"edit_loss must be 'mse' or 'cosine', got {self.edit_loss!r}")
        if self.rcl_mask_downsample not in ("max", "area", "nearest"):
            raise ValueError(f"bad rcl_mask_downsample {self.rcl_mask_downsample!r}")
        if self.rcl_weighting not in ("none", "alpha"):
            raise ValueError(f"bad rcl_weighting {self.rcl_weighting!r}")


def eps_loss(noise_pred: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(noise_pred.float(), noise.float())


def resize_mask(mask: torch.Tensor, size, mode: str = "area") -> torch.Tensor:
    """(B, 1, H, W) or (B, H, W) mask in [0, 1] -> (B, 1, h, w); mode: area | max | nearest."""
    m = mask.float()
    if m.dim() == 3:
        m = m[:, None]
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    if mode == "max":
        return F.adaptive_max_pool2d(m, size)
    if mode == "nearest":
        return F.interpolate(m, size=size, mode="nearest")
    return F.adaptive_avg_pool2d(m, size)


def dice_loss(probs: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    p = probs.flatten(1).float()
    t = target.flatten(1).float()
    return (1 - (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)).mean()


def mask_loss(mask_logits: torch.Tensor, source_mask: torch.Tensor, w_bce: float = 1.0,
              w_dice: float = 1.0) -> Dict[str, torch.Tensor]:
    target = resize_mask(source_mask.to(mask_logits.device), mask_logits.shape[-2:], "area")
    bce = F.binary_cross_entropy_with_logits(mask_logits.float(), target)
    dice = dice_loss(torch.sigmoid(mask_logits.float()), target)
    return {"mask": w_bce * bce + w_dice * dice, "mask_bce": bce, "mask_dice": dice}


def edit_embedding_loss(e_e: torch.Tensor, target: torch.Tensor, valid: Optional[torch.Tensor] = None,
                        kind: str = "mse") -> torch.Tensor:
    if kind == "cosine":
        per = 1 - F.cosine_similarity(e_e.float(), target.float(), dim=-1)
    else:
        per = ((e_e.float() - target.float()) ** 2).mean(dim=-1)
    if valid is None:
        return per.mean()
    v = valid.float()
    return (per * v).sum() / v.sum().clamp_min(1.0)


def predicted_x0(noisy: torch.Tensor, noise_pred: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t) (epsilon parameterisation)."""
    a = alphas_cumprod.to(noisy.device, torch.float32)[timesteps].view(-1, 1, 1, 1)
    return (noisy.float() - (1 - a).sqrt() * noise_pred.float()) / a.sqrt()


def region_control_loss(x0_hat: torch.Tensor, source_latents: torch.Tensor, edit_mask: torch.Tensor,
                        downsample: str = "max", sample_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean L1 between x0_hat and stop-grad source latents over latent cells outside M_e."""
    m = resize_mask(edit_mask.to(x0_hat.device), x0_hat.shape[-2:], downsample)
    if downsample == "area":
        m = (m > 0.5).float()
    outside = 1 - m  # (B, 1, h, w)
    diff = (x0_hat - source_latents.detach().float()).abs() * outside
    C = x0_hat.shape[1]
    per = diff.flatten(1).sum(1) / (C * outside.flatten(1).sum(1)).clamp_min(1.0)
    if sample_weights is not None:
        per = per * sample_weights.to(per)
    return per.mean()


def total_loss(out: Any, batch: Dict[str, torch.Tensor], scheduler, weights: Optional[LossWeights] = None) -> Dict[str, torch.Tensor]:
    """Every term and the weighted total, from a ``ReferDiffusionOutput`` and its batch
    (``source_mask`` for the mask loss, ``edit_mask`` = M_e for the RCL)."""
    w = weights or LossWeights()
    zero = out.noise_pred.new_zeros((), dtype=torch.float32)
    terms: Dict[str, torch.Tensor] = {"eps": eps_loss(out.noise_pred, out.noise)}
    total = w.eps * terms["eps"]
    terms.update(mask=zero, mask_bce=zero, mask_dice=zero, edit=zero, rcl=zero)
    if w.mask and out.mask_logits is not None and batch.get("source_mask") is not None:
        terms.update(mask_loss(out.mask_logits, batch["source_mask"], w.mask_bce, w.mask_dice))
        total = total + w.mask * terms["mask"]
    if w.edit and out.e_e is not None and out.edit_target is not None:
        terms["edit"] = edit_embedding_loss(out.e_e, out.edit_target, out.edit_valid, w.edit_loss)
        total = total + w.edit * terms["edit"]
    if w.rcl and batch.get("edit_mask") is not None:
        x0 = predicted_x0(out.noisy_latents, out.noise_pred, out.timesteps, scheduler.alphas_cumprod)
        sw = None
        if w.rcl_weighting == "alpha":
            sw = scheduler.alphas_cumprod.to(x0.device)[out.timesteps].float()
        terms["rcl"] = region_control_loss(x0, out.source_latents, batch["edit_mask"], w.rcl_mask_downsample, sw)
        total = total + w.rcl * terms["rcl"]
    terms["loss"] = total
    return terms
