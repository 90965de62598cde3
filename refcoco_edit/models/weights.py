"""Safe weight loading and what is recorded about a loaded model.

* ``load_state_dict``: ``.safetensors`` or a torch pickle read with ``weights_only=True`` — a
  pickle that holds code is refused, never run (``tests/test_security.py``).
* ``model_details``: the spec, the hub revision of a cached snapshot, a sha256 of the weight
  files; results.json ``config.model_details`` holds one per model.

torch is imported inside ``load_state_dict`` only.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from refcoco_edit.models.source import ModelError

__all__ = ["WEIGHT_SUFFIXES", "load_state_dict", "weights_sha256", "revision_of", "model_details"]

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HASH_CACHE: Dict[Tuple[str, int, int], str] = {}


def load_state_dict(path: Path, what: str) -> Dict[str, Any]:
    """A state dict from ``.safetensors`` or a torch pickle loaded with ``weights_only=True``
    (a Lightning-style ``{"state_dict": ...}`` is unwrapped); ``ModelError`` otherwise."""
    import torch

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - an unreadable file is one line for the user
        raise ModelError(f"{what} {path}: cannot be read as a state dict: {type(e).__name__}: "
                         f"{(str(e).strip().splitlines() or [''])[0]}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelError(f"{what} {path}: not a state dict of tensors")
    return sd


def revision_of(path: Path) -> Optional[str]:
    """The hub commit of a file or folder inside a Hugging Face cache snapshot (``.../snapshots/<sha>/...``)."""
    parts = Path(path).parts
    for i, p in enumerate(parts[:-1] if Path(path).is_file() else parts):
        if p == "snapshots" and i + 1 < len(parts) and _HEX40.match(parts[i + 1]):
            return parts[i + 1]
    return None


def _sha256_file(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    got = _HASH_CACHE.get(key)
    if got is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        got = _HASH_CACHE[key] = h.hexdigest()
    return got


def weights_sha256(path: Path) -> Optional[str]:
    """sha256 of a weight file, or of a folder's ``config.json`` + weight files (name and hash of each)."""
    path = Path(path)
    if path.is_file():
        return _sha256_file(path)
    if not path.is_dir():
        return None
    files = sorted(p for p in path.iterdir() if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name == "config.json"))
    if not files:
        return None
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{_sha256_file(p)}\n".encode())
    return h.hexdigest()


def model_details(spec: str, path: Path, hub_id: Optional[str], **extra: Any) -> Dict[str, Any]:
    """What results.json records about a loaded model."""
    return {"spec": str(spec), "hub_id": hub_id, "revision": revision_of(Path(path)),
            "weights_sha256": weights_sha256(Path(path)), **extra}
