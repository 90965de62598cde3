"""Declarations of the metrics that need model weights (CLIP, the LAION aesthetic head, DINO, LPIPS).

This version declares them, so every report lists them with the reason they were not computed
("needs --clip-model", or "not implemented in this version" when weights were given); the
computations (torch, loaded lazily from a local path or hub id with ``local_files_only``) come
with the model-based part of the benchmark. Nothing here imports torch.

How each will be defined (fixed now, so the reports' columns do not move):

* ``ap`` (paper): LAION aesthetic predictor v2, an MLP on the L2-normalised CLIP ViT-L/14 image
  embedding of the output (``--clip-model``, ``--aesthetic-weights``).
* ``clip_sim_fg`` (paper): ``100 * cos(CLIP(crop of the output at bbox(M_e)), CLIP(text))``, the text
  being the edit phrase's target description.
* ``lpips_bg`` (PIE-Bench): LPIPS between output and source, its spatial map averaged over the
  background pixels only (``--lpips-weights``).
* ``clip_whole`` / ``clip_edited`` (PIE-Bench): CLIP similarity of the target text with the whole
  output / with the output's edited area (bbox of M_e).
* ``clip_i``, ``dino`` (MagicBrush): cosine similarity of output and reference image embeddings
  (CLIP, DINO ViT-S/16); ``clip_t``: CLIP similarity of the output with the target caption.
"""
from __future__ import annotations

from .base import MetricSpec

SPECS = (
    MetricSpec("ap", "paper", "AP", "LAION aesthetic predictor v2 score of the output (CLIP ViT-L/14)",
               True, needs=("clip_model", "aesthetic_weights"), implemented=False),
    MetricSpec("clip_sim_fg", "paper", "CLIP-Sim_fg", "100 * cos(CLIP(output crop at bbox(M_e)), CLIP(edit text))",
               True, needs=("clip_model",), implemented=False),
    MetricSpec("lpips_bg", "pie", "LPIPS_bg x10^3", "LPIPS(output, source) averaged over background pixels",
               False, display_scale=1e3, needs=("lpips_weights",), implemented=False),
    MetricSpec("clip_whole", "pie", "CLIP whole", "CLIP similarity of the whole output with the target text",
               True, needs=("clip_model",), implemented=False),
    MetricSpec("clip_edited", "pie", "CLIP edited", "CLIP similarity of the edited area with the target text",
               True, needs=("clip_model",), implemented=False),
    MetricSpec("clip_i", "magicbrush", "CLIP-I", "cos(CLIP(output), CLIP(reference))",
               True, needs=("clip_model",), implemented=False),
    MetricSpec("dino", "magicbrush", "DINO", "cos(DINO(output), DINO(reference))",
               True, needs=("dino_model",), implemented=False),
    MetricSpec("clip_t", "magicbrush", "CLIP-T", "CLIP similarity of the output with the target caption",
               True, needs=("clip_model",), implemented=False),
)
