"""Where a model comes from and whether it is the right kind, from its JSON configs alone.

A model is given as a local path or a Hugging Face hub id (``--pbe-model``, ``--sd-model``,
``--inpaint-model``, ``--clip-model``, ``--dino-model``; weight files such as
``--aesthetic-weights`` may also be ``owner/repo/path/in/repo.pth``). Steps, each cheap before the
next:

1. ``resolve_source``: a local path must exist; a hub id is looked up in the local hub cache when
   ``local_files_only`` (the default everywhere: nothing is ever downloaded unless asked for with
   ``--no-local-files-only``). Failures raise ``ModelError`` (``ModelUnavailable`` for a hub id
   that is not cached), one line each.
2. ``validate_kind``: the model's JSON configs (``model_index.json``, ``unet/config.json``,
   ``config.json``) are read — no torch, no weights — and checked against the kind asked for
   (Stable Diffusion text-to-image: a 4-channel UNet; SD inpainting and Paint-by-Example: a
   9-channel UNet; Paint-by-Example: an ``image_encoder``; CLIP: ``model_type == "clip"``).
   ``read_model_config`` does the same for any transformers ``model_type`` list.

Nothing here imports torch; ``huggingface_hub`` is imported only to look a hub id up.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

__all__ = ["ModelError", "ModelUnavailable", "ModelSource", "KINDS", "looks_like_path", "hub_file", "resolve_source",
           "read_json", "validate_kind", "check_model", "resolve_model_dir", "read_model_config",
           "resolve_weights_file"]

# kind -> (what it is, in words)
KINDS: Dict[str, str] = {
    "sd": "a Stable Diffusion text-to-image model (diffusers layout, 4-channel UNet)",
    "sd-inpaint": "a Stable Diffusion inpainting model (diffusers layout, 9-channel UNet)",
    "pbe": "a Paint-by-Example model (diffusers layout: image_encoder + 9-channel UNet)",
    "clip": "a CLIP model (transformers layout, model_type clip)",
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


class ModelError(ValueError):
    """A model cannot be used: missing, of the wrong kind, or unloadable. One-line message.

    The build and the score command turn it into ``InputError`` (exit 2) at their boundary."""


class ModelUnavailable(ModelError):
    """A hub id that is not in the local cache while ``local_files_only`` (optional models —
    CLIP for the filters — are then skipped with this message as the reason)."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model is: ``spec`` as given, ``local`` its folder/file when on disk (a local path or
    the cached snapshot of a hub id), ``hub_id`` when it names a hub repository."""

    spec: str
    local: Optional[Path]
    hub_id: Optional[str]

    @property
    def load_arg(self) -> str:
        """What to pass to ``from_pretrained``."""
        return str(self.local) if self.local is not None and self.hub_id is None else str(self.hub_id or self.spec)


def looks_like_path(spec: str) -> bool:
    """True when ``spec`` can only be a file-system path (absolute, ./, ~, a file suffix, or more
    than one slash); a hub id is ``name`` or ``namespace/name``."""
    s = str(spec)
    if s.startswith(("/", ".", "~")) or os.path.isabs(s) or "\\" in s:
        return True
    if s.endswith((".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".json")):
        return True
    return not _HUB_ID.match(s)


def hub_file(repo_id: str, filename: str, local_files_only: bool) -> Optional[Path]:
    """A file of a hub repository from the local cache (or downloaded, when allowed); None when
    it is not cached and ``local_files_only``."""
    from huggingface_hub import try_to_load_from_cache

    got = try_to_load_from_cache(repo_id, filename)
    if isinstance(got, str):
        return Path(got)
    if local_files_only:
        return None
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename))
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one line for the user
        raise ModelError(f"cannot fetch {filename} of {repo_id!r} from the hub: {type(e).__name__}: {e}") from None


def resolve_source(spec: Optional[str], what: str, local_files_only: bool = True,
                   index_file: str = "model_index.json") -> ModelSource:
    """Find model ``spec`` (a local path or hub id) for the option ``what`` (e.g. ``--sd-model``);
    a hub id is found by its ``index_file`` in the cache."""
    if spec is None or not str(spec).strip():
        raise ModelError(f"{what}: no model given")
    spec = str(spec).strip()
    p = Path(os.path.expanduser(spec))
    if p.exists():
        return ModelSource(spec, p, None)
    if looks_like_path(spec):
        raise ModelError(f"{what} {spec}: no such file or folder")
    got = hub_file(spec, index_file, local_files_only)
    if got is None:
        raise ModelUnavailable(
            f"{what} {spec}: not a local path and not in the local Hugging Face cache "
            f"(download it first, e.g. `hf download {spec}`, give a local folder, or pass --no-local-files-only)"
        )
    return ModelSource(spec, got.parent, spec)


def read_json(src: ModelSource, rel: str, local_files_only: bool) -> Optional[Dict[str, Any]]:
    """The JSON object at ``rel`` inside the model (None when absent; ``ModelError`` when broken)."""
    if src.hub_id is not None:
        path = hub_file(src.hub_id, rel, local_files_only)
    else:
        path = (src.local / rel) if src.local is not None else None
    if path is None or not Path(path).is_file():
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise ModelError(f"{src.spec}: {rel} is not valid JSON ({e})") from None
    return data if isinstance(data, dict) else None


def validate_kind(src: ModelSource, kind: str, what: str, local_files_only: bool = True) -> Dict[str, Any]:
    """Check from its JSON configs alone that ``src`` is a model of ``kind``; returns a summary
    (class name, UNet input channels, ...) or raises ``ModelError`` saying what it is instead."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(KINDS)}")
    if src.hub_id is None and src.local is not None and src.local.is_file():
        raise ModelError(f"{what} {src.spec}: is a file; expected {KINDS[kind]} (a folder)")
    if kind == "clip":
        cfg = read_json(src, "config.json", local_files_only)
        if cfg is None:
            raise ModelError(f"{what} {src.spec}: no config.json; expected {KINDS[kind]}")
        if cfg.get("model_type") != "clip":
            raise ModelError(f"{what} {src.spec}: model_type is {cfg.get('model_type')!r}; expected {KINDS[kind]}")
        return {"model_type": "clip", "architectures": cfg.get("architectures")}
    index = read_json(src, "model_index.json", local_files_only)
    if index is None:
        raise ModelError(f"{what} {src.spec}: no model_index.json; expected {KINDS[kind]}")
    cls = str(index.get("_class_name", "?"))
    unet_cfg = read_json(src, "unet/config.json", local_files_only) if "unet" in index else None
    if unet_cfg is None:
        raise ModelError(f"{what} {src.spec}: a {cls} without a UNet; expected {KINDS[kind]}")
    in_ch = int(unet_cfg.get("in_channels", -1))
    has = {k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v and v[0] is not None}
    summary = {"class_name": cls, "unet_in_channels": in_ch, "components": sorted(has)}
    want_ch = 4 if kind == "sd" else 9
    problems = []
    if in_ch != want_ch:
        problems.append(f"its UNet takes {in_ch} input channels, not {want_ch}")
    if kind == "pbe":
        if "image_encoder" not in has:
            problems.append("it has no image_encoder")
    else:
        if not {"text_encoder", "tokenizer"} <= has:
            problems.append("it has no text_encoder/tokenizer")
        if "image_encoder" in has and "PaintByExample" in cls:
            problems.append("it is a Paint-by-Example model")
    if not {"vae", "scheduler"} <= has:
        problems.append("it has no vae/scheduler")
    if problems:
        raise ModelError(f"{what} {src.spec}: a {cls} where {'; '.join(problems)}; expected {KINDS[kind]}")
    return summary


def check_model(spec: Optional[str], kind: str, what: str,
                local_files_only: bool = True) -> Tuple[ModelSource, Dict[str, Any]]:
    """``resolve_source`` + ``validate_kind`` (no torch): the up-front check of a build."""
    src = resolve_source(spec, what, local_files_only, "config.json" if kind == "clip" else "model_index.json")
    return src, validate_kind(src, kind, what, local_files_only)


# ----------------------------------------------------------------------------------------------
# transformers model folders and single weight files (the score command's backbones)
# ----------------------------------------------------------------------------------------------

def resolve_model_dir(spec: str, what: str, local_files_only: bool = True) -> Tuple[str, Path, Optional[str]]:
    """A transformers model from a local folder or a hub id -> (what to pass to ``from_pretrained``,
    its folder, hub_id or None). A hub id must be in the local cache when ``local_files_only``."""
    src = resolve_source(spec, what, local_files_only, "config.json")
    assert src.local is not None
    if not src.local.is_dir():
        raise ModelError(f"{what} {spec}: is a file; expected a model folder (config.json + weights)")
    return src.load_arg, src.local, src.hub_id


def read_model_config(folder: Path, spec: str, what: str, model_types: Sequence[str], expected: str) -> Dict[str, Any]:
    """The ``config.json`` of a transformers model folder, checked to be one of ``model_types``
    (``expected`` says in words what should have been given)."""
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{what} {spec}: unreadable config.json ({e})") from None
    if not isinstance(cfg, dict) or cfg.get("model_type") not in model_types:
        got = cfg.get("model_type") if isinstance(cfg, dict) else None
        raise ModelError(f"{what} {spec}: model_type is {got!r}; expected {expected}")
    return cfg


def resolve_weights_file(spec: str, what: str, local_files_only: bool = True) -> Tuple[Path, Optional[str]]:
    """A weights file or folder from a local path, or a hub file ``owner/repo/path/in/repo.pth``
    (looked up in the local cache; downloaded only without ``local_files_only``) -> (path,
    hub repo or None)."""
    s = str(spec).strip()
    p = Path(os.path.expanduser(s))
    if p.exists():
        return p, None
    parts = s.split("/")
    if s.startswith(("/", ".", "~")) or len(parts) < 3 or not all(parts):
        raise ModelError(f"{what} {spec}: no such file or folder (give a local path, or owner/repo/file for a "
                         "file of a Hugging Face hub repository)")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    from huggingface_hub import try_to_load_from_cache

    got = try_to_load_from_cache(repo, filename)
    if isinstance(got, str):
        return Path(got), repo
    if local_files_only:
        raise ModelUnavailable(f"{what} {spec}: not a local path and {filename} of {repo} is not in the local Hugging "
                               f"Face cache (download it first, or pass --no-local-files-only)")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename)), repo
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one line for the user
        raise ModelError(f"{what} {spec}: cannot download: {type(e).__name__}: {e}") from None
