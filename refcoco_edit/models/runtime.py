"""How models run: the device, the dtype, the hub policy and the speed switches.

``DTYPES`` is the one list of ``--dtype`` / ``dtype=`` choices (build, score metrics, diffusion
editors, ReferDiffusion inference). torch is imported inside the functions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

from refcoco_edit.models.source import ModelError

__all__ = ["DTYPES", "resolve_device", "resolve_dtype", "Runtime", "dtype_kwargs"]

DTYPES = ("auto", "fp32", "fp16", "bf16")


def resolve_device(device: str = "auto") -> Any:
    """``auto`` -> cuda when available, else cpu; an unavailable device is a ``ModelError``."""
    import torch

    d = str(device or "auto").lower()
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(d)
    except (RuntimeError, ValueError) as e:
        raise ModelError(f"--device {device}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"--device {device}: CUDA is not available on this machine")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelError(f"--device {device}: MPS is not available on this machine")
    return dev


def resolve_dtype(dtype: str, device: Any) -> Any:
    """``auto`` -> float16 on CUDA, float32 elsewhere; else the named torch dtype."""
    import torch

    d = str(dtype or "auto").lower()
    if d not in DTYPES:
        raise ModelError(f"--dtype {dtype}: choose from {', '.join(DTYPES)}")
    if d == "auto":
        return torch.float16 if getattr(device, "type", str(device)) == "cuda" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[d]


@dataclass(frozen=True)
class Runtime:
    """How models run: device, dtype, hub policy and speed switches."""

    device: str = "auto"
    dtype: str = "auto"
    local_files_only: bool = True
    channels_last: bool = True
    compile: bool = False
    batch_size: int = 4

    def torch_device(self) -> Any:
        """The resolved torch device (``ModelError`` when unavailable)."""
        return resolve_device(self.device)

    def torch_dtype(self) -> Any:
        """The resolved torch dtype on this runtime's device."""
        return resolve_dtype(self.dtype, self.torch_device())


def dtype_kwargs(dtype: Any) -> Dict[str, Any]:
    """``from_pretrained``'s dtype argument: ``dtype=`` where diffusers/transformers take it (newer
    releases deprecate ``torch_dtype=``), ``torch_dtype=`` before."""
    import importlib

    try:
        mod = importlib.import_module("diffusers.utils.deprecation_utils")
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype} if hasattr(mod, "_resolve_dtype") else {"torch_dtype": dtype}
