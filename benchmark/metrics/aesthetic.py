"""AP: the LAION aesthetic predictor v2 ("improved-aesthetic-predictor", sac+logos+ava1-l14-linearMSE).

Its published MLP, on the L2-normalised CLIP ViT-L/14 image embedding (768-d)::

    layers = Sequential(Linear(768, 1024), Dropout(0.2), Linear(1024, 128), Dropout(0.2),
                        Linear(128, 64), Dropout(0.1), Linear(64, 16), Linear(16, 1))

(no activations: the ReLUs are commented out in the original), so a checkpoint's state-dict keys
are ``layers.0``, ``layers.2``, ``layers.4``, ``layers.6``, ``layers.7`` (``.weight``/``.bias``).
``--aesthetic-weights`` is that file (``.pth``, or ``.safetensors``; a local path or
``owner/repo/file`` in the Hugging Face cache). The input size is read from ``layers.0.weight``,
so tests use a tiny CLIP with projection ``d`` and an MLP with input ``d``; every other shape is
checked against the published architecture.

The MLP runs in float32 on the CPU (it is ~1M multiply-adds per image): the embedding is
normalised in float64 by the caller and cast to float32, as the original script feeds a float
tensor.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

__all__ = ["HIDDEN", "build_mlp", "AestheticPredictor"]

HIDDEN = (1024, 128, 64, 16)
LINEAR_KEYS = ("layers.0", "layers.2", "layers.4", "layers.6", "layers.7")


def build_mlp(input_size: int) -> Any:
    """The published architecture, randomly initialised (torch)."""
    from torch import nn

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.Sequential(
                nn.Linear(input_size, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

        def forward(self, x: Any) -> Any:
            return self.layers(x)

    return MLP()


class AestheticPredictor:
    """``(n, d) L2-normalised embeddings -> (n,) scores``."""

    def __init__(self, mlp: Any, details: Optional[Dict[str, Any]] = None) -> None:
        self.mlp = mlp.eval().float()
        self.input_dim = int(mlp.layers[0].in_features)
        self.details = dict(details or {})

    @classmethod
    def load(cls, spec: str, local_files_only: bool = True) -> "AestheticPredictor":
        """The MLP from ``--aesthetic-weights``, checked against the published architecture;
        ``ModelError`` when unusable."""
        from refcoco_edit.models import ModelError, load_state_dict, model_details, resolve_weights_file

        what = "--aesthetic-weights"
        path, hub_id = resolve_weights_file(spec, what, local_files_only)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in (".pth", ".pt", ".safetensors", ".bin"))
            if len(found) != 1:
                raise ModelError(f"{what} {spec}: a folder must hold exactly one .pth/.safetensors file, found "
                                   f"{[p.name for p in found]}")
            path = found[0]
        sd = load_state_dict(path, what)
        sd = {k[len("model."):] if k.startswith("model.") else k: v for k, v in sd.items()}  # Lightning prefixes
        expected = {f"{k}.{p}" for k in LINEAR_KEYS for p in ("weight", "bias")}
        if set(sd) != expected:
            raise ModelError(f"{what} {spec}: not a LAION aesthetic predictor v2 state dict: expected the keys "
                               f"{sorted(expected)}, got {sorted(sd)[:12]}")
        d = int(sd["layers.0.weight"].shape[1])
        mlp = build_mlp(d)
        try:
            mlp.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
        except RuntimeError as e:
            raise ModelError(f"{what} {spec}: shapes differ from the published MLP (input {d}, hidden "
                               f"{HIDDEN}): {(str(e).strip().splitlines() or [''])[-1].strip()}") from None
        return cls(mlp, model_details(spec, Path(path), hub_id, input_dim=d, architecture=
                                      f"Linear({d},1024)-Dropout(0.2)-Linear(1024,128)-Dropout(0.2)-Linear(128,64)-"
                                      "Dropout(0.1)-Linear(64,16)-Linear(16,1)", device="cpu", dtype="float32"))

    def describe(self) -> Dict[str, Any]:
        return dict(self.details)

    def __call__(self, normalized: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(normalized, dtype=np.float32))
        with torch.inference_mode():
            return self.mlp(x).reshape(-1).double().numpy()
