"""The metrics that need model weights (CLIP, the LAION aesthetic head, DINO, LPIPS): their
declarations, where their models come from, and one batched pass over a chunk of samples.

Nothing here imports torch at module import time (``refcoco_edit.benchmark.metrics`` is imported by the CLI);
each family lives in its own file and loads its backbone lazily:

=================  ===============  =====================================================================
metric             file             definition
=================  ===============  =====================================================================
``ap``             aesthetic        LAION aesthetic predictor v2: its MLP on the L2-normalised CLIP
                                    image embedding of the whole output (``--clip-model`` ViT-L/14 +
                                    ``--aesthetic-weights``)
``clip_sim_fg``    clip_metrics     ``100 * cos(CLIP(crop of the output at bbox(M_e)), CLIP(target))``,
                                    the target being what the edit asks for (replace/add: the edit
                                    target, "giraffe"; attribute: target + category, "red car");
                                    NaN for ``remove`` (nothing to describe)
``clip_sim_fg_pr`` clip_metrics     the same crop against the referring phrase P_r, literally as the
                                    paper words it
``clip_whole``     clip_metrics     PIE-Bench: ``max(100 * cos(CLIP(output), CLIP(P)), 0)`` (torchmetrics
                                    CLIPScore), P the full prompt: RefCOCO-Edit has no target caption
``clip_edited``    clip_metrics     PIE-Bench: the same score of the output multiplied by M_e (pixels
                                    outside M_e set to 0, full frame, as PIE-Bench does) with the edit
                                    phrase P_e
``clip_i``         clip_metrics     MagicBrush: ``cos(CLIP(output), CLIP(reference))``
``clip_t``         clip_metrics     MagicBrush: ``cos(CLIP(output), CLIP(P))``
``dino``           dino             MagicBrush: ``cos(DINO(output), DINO(reference))``, the ViT CLS token
                                    (``--dino-model``: a transformers ViT/DINOv2 model)
``lpips_bg``       lpips            PIE-Bench: LPIPS(output, source), its spatial map (native resolution)
                                    averaged over the pixels outside M_e (``--lpips-weights``)
=================  ===============  =====================================================================

CLIP images go through the model's own image processor (``preprocessor_config.json``; for CLIP:
shortest side to 224 bicubic, center crop 224, CLIP mean/std), texts through its tokenizer
(truncated to the model's 77 positions). ``MODEL_RULES`` records these rules in results.json.

Each family takes its backbone as a callable (the torchmetrics ``clip_score`` habit), so the
tests inject tiny random models and the perf benchmark a full-size architecture with random
weights: ``ModelMetrics(names, models, clip=..., aesthetic=..., dino=..., lpips=...)``.

Models are given as a local path or a Hugging Face hub id; with ``local_files_only`` (the
default) a hub id must already be in the local cache. What was loaded (the spec, the hub
revision when known, a sha256 of the weight files, the architecture) goes to results.json
``config.model_details``.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .base import MetricSpec

__all__ = ["SPECS", "NAMES", "CLIP_NAMES", "ModelSample", "ModelMetrics", "MODEL_RULES", "target_text",
           "resolve_model_dir", "resolve_weights_file", "load_state_dict", "model_details"]

SPECS = (
    MetricSpec("ap", "paper", "AP", "LAION aesthetic predictor v2 score of the output (MLP on the L2-normalised "
               "CLIP ViT-L/14 image embedding)", True, needs=("clip_model", "aesthetic_weights")),
    MetricSpec("clip_sim_fg", "paper", "CLIP-Sim_fg (target)",
               "100 * cos(CLIP(output crop at bbox(M_e)), CLIP(edit target text)); NaN for remove edits",
               True, needs=("clip_model",)),
    MetricSpec("clip_sim_fg_pr", "paper", "CLIP-Sim_fg (P_r)",
               "100 * cos(CLIP(output crop at bbox(M_e)), CLIP(referring phrase P_r)), literally as the paper words it",
               True, needs=("clip_model",)),
    MetricSpec("lpips_bg", "pie", "LPIPS_bg x10^3", "LPIPS(output, source) spatial map averaged over background pixels",
               False, display_scale=1e3, needs=("lpips_weights",)),
    MetricSpec("clip_whole", "pie", "CLIP whole", "max(100 * cos(CLIP(output), CLIP(prompt P)), 0) (CLIPScore)",
               True, needs=("clip_model",)),
    MetricSpec("clip_edited", "pie", "CLIP edited",
               "max(100 * cos(CLIP(output x M_e, zeros outside), CLIP(edit phrase P_e)), 0) (CLIPScore)",
               True, needs=("clip_model",)),
    MetricSpec("clip_i", "magicbrush", "CLIP-I", "cos(CLIP(output), CLIP(reference))", True, needs=("clip_model",)),
    MetricSpec("dino", "magicbrush", "DINO", "cos(DINO CLS(output), DINO CLS(reference))", True, needs=("dino_model",)),
    MetricSpec("clip_t", "magicbrush", "CLIP-T", "cos(CLIP(output), CLIP(prompt P))", True, needs=("clip_model",)),
)
NAMES = tuple(s.name for s in SPECS)
CLIP_NAMES = ("ap", "clip_sim_fg", "clip_sim_fg_pr", "clip_whole", "clip_edited", "clip_i", "clip_t")

MODEL_RULES: Dict[str, str] = {
    "clip_preprocess": "the CLIP model's image processor (preprocessor_config.json; OpenAI CLIP: shortest side "
                       "-> 224 bicubic, center crop 224x224, CLIP mean/std), applied to uint8 RGB; texts: its "
                       "tokenizer, truncated to the model's max positions (77)",
    "clip_embedding": "vision_model pooler output -> visual_projection (= OpenAI CLIP encode_image); text: "
                      "text_model pooler output -> text_projection; cosines in float64 on the projections",
    "clip_sim_fg_crop": "output[y0:y1, x0:x1] at the tight box of M_e (x1, y1 exclusive, no margin), then the "
                        "processor (a long box loses its ends to the center crop); empty M_e -> NaN",
    "clip_sim_fg_text": "target: replace/add -> edit_target, attribute -> edit_target + ' ' + category, remove -> "
                        "NaN; P_r variant: prompt[referring_span]; raw text, no template",
    "clip_edited_view": "output * M_e (pixels outside M_e set to 0, full frame, as PIE-Bench's masked CLIP score), "
                        "text prompt[edit_span]; empty M_e -> NaN",
    "clip_whole_text": "the full prompt P (RefCOCO-Edit has no target caption); CLIP-T uses the same text",
    "clip_scale": "clip_sim_fg(_pr): 100*cos; clip_whole/clip_edited: max(100*cos, 0) as torchmetrics CLIPScore "
                  "(PIE-Bench); clip_i/clip_t/dino: cos in [-1, 1] (MagicBrush)",
    "aesthetic": "MLP(L2-normalised image embedding of the whole output), float32 on CPU; the MLP is the published "
                 "improved-aesthetic-predictor: Linear(d,1024)-Dropout-Linear(1024,128)-Dropout-Linear(128,64)-"
                 "Dropout-Linear(64,16)-Linear(16,1) (dropout inactive)",
    "dino": "the model's image processor, then last_hidden_state[:, 0] (the final-norm CLS token), cos",
    "lpips": "LPIPS v0.1 (lin layers on unit-normalised features, squared differences), spatial map upsampled "
             "bilinearly to the source resolution, inputs at native resolution in [-1, 1]; mean over pixels "
             "outside M_e; no background -> NaN",
    "dtype": "float16 on CUDA, float32 elsewhere, unless --dtype says otherwise; cosines in float64",
}


def target_text(edit_type: str, edit_target: str, category: str) -> str:
    """What the edited region should show, as CLIP-Sim_fg's text ('' when nothing: a removal)."""
    t = (edit_target or "").strip()
    if edit_type == "remove" or not t:
        return ""
    if edit_type == "attribute" and category:
        return f"{t} {category.strip()}".strip()
    return t


@dataclass
class ModelSample:
    """What the model metrics read of one scored sample (arrays at the source's resolution)."""

    output: np.ndarray
    source: np.ndarray
    edit_mask: np.ndarray
    reference: Optional[np.ndarray] = None
    prompt: str = ""
    edit_phrase: str = ""
    referring_phrase: str = ""
    target_text: str = ""


# ----------------------------------------------------------------------------------------------
# where models come from
# ----------------------------------------------------------------------------------------------

_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")
_HASH_CACHE: Dict[Tuple[str, int, int], str] = {}


def _input_error(msg: str) -> Exception:
    from refcoco_edit.errors import InputError

    return InputError(msg)


def _revision_of(path: Path) -> Optional[str]:
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
    files = sorted(p for p in path.iterdir() if p.is_file() and (p.suffix in _WEIGHT_SUFFIXES or p.name == "config.json"))
    if not files:
        return None
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{_sha256_file(p)}\n".encode())
    return h.hexdigest()


def resolve_model_dir(spec: str, what: str, local_files_only: bool = True) -> Tuple[str, Path, Optional[str]]:
    """A transformers model from a local folder or a hub id -> (what to pass to ``from_pretrained``,
    its folder, hub_id or None). A hub id must be in the local cache when ``local_files_only``."""
    from refcoco_edit.pipelines.models import ModelError, resolve_source

    try:
        src = resolve_source(spec, what, local_files_only, "config.json")
    except ModelError as e:
        raise _input_error(str(e)) from None
    assert src.local is not None
    if not src.local.is_dir():
        raise _input_error(f"{what} {spec}: is a file; expected a model folder (config.json + weights)")
    return src.load_arg, src.local, src.hub_id


def read_model_config(folder: Path, spec: str, what: str, model_types: Sequence[str], expected: str) -> Dict[str, Any]:
    """The ``config.json`` of a transformers model folder, checked to be one of ``model_types``
    (``expected`` says in words what should have been given)."""
    import json

    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise _input_error(f"{what} {spec}: unreadable config.json ({e})") from None
    if cfg.get("model_type") not in model_types:
        raise _input_error(f"{what} {spec}: model_type is {cfg.get('model_type')!r}; expected {expected}")
    return cfg


def resolve_weights_file(spec: str, what: str, local_files_only: bool = True) -> Tuple[Path, Optional[str]]:
    """A weights file or folder from a local path, or a hub file ``owner/repo/path/in/repo.pth``
    (looked up in the local cache; downloaded only without ``local_files_only``)."""
    s = str(spec).strip()
    p = Path(os.path.expanduser(s))
    if p.exists():
        return p, None
    parts = s.split("/")
    if s.startswith(("/", ".", "~")) or len(parts) < 3 or not all(parts):
        raise _input_error(f"{what} {spec}: no such file or folder (give a local path, or owner/repo/file for a "
                           "file of a Hugging Face hub repository)")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    from huggingface_hub import try_to_load_from_cache

    got = try_to_load_from_cache(repo, filename)
    if isinstance(got, str):
        return Path(got), repo
    if local_files_only:
        raise _input_error(f"{what} {spec}: not a local path and {filename} of {repo} is not in the local Hugging "
                           f"Face cache (download it first, or pass --no-local-files-only)")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename)), repo
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one line for the user
        raise _input_error(f"{what} {spec}: cannot download: {type(e).__name__}: {e}") from None


def load_state_dict(path: Path, what: str) -> Dict[str, Any]:
    """A state dict from ``.safetensors`` or a torch pickle loaded with ``weights_only=True``
    (a Lightning-style ``{"state_dict": ...}`` is unwrapped)."""
    import torch

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - an unreadable file is one line for the user
        raise _input_error(f"{what} {path}: cannot be read as a state dict: {type(e).__name__}: "
                           f"{(str(e).strip().splitlines() or [''])[0]}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise _input_error(f"{what} {path}: not a state dict of tensors")
    return sd


def model_details(spec: str, path: Path, hub_id: Optional[str], **extra: Any) -> Dict[str, Any]:
    """What results.json records about a loaded model."""
    return {"spec": str(spec), "hub_id": hub_id, "revision": _revision_of(Path(path)),
            "weights_sha256": weights_sha256(Path(path)), **extra}


# ----------------------------------------------------------------------------------------------
# the batched pass
# ----------------------------------------------------------------------------------------------

def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(_normalize(a) * _normalize(b), axis=-1)


class ModelMetrics:
    """The model-based metrics ``names`` over chunks of samples, with lazily loaded backbones.

    ``clip``: an object with ``images(list of HxWx3 uint8) -> (n, d)`` and ``texts(list of str) ->
    (n, d)`` (unnormalised projections); ``aesthetic``: ``(n, d) L2-normalised -> (n,)``;
    ``dino``: ``images(list) -> (n, d)``; ``lpips``: ``maps(list of (a, b) uint8 pairs) -> list of
    HxW float arrays``. Each may be injected; the rest load from ``models`` (the ``--clip-model``
    etc. specs) on ``load()``. Each may also have ``describe() -> dict`` for results.json.
    """

    def __init__(self, names: Sequence[str], models: Mapping[str, Optional[str]], device: str = "auto",
                 dtype: str = "auto", batch_size: int = 32, local_files_only: bool = True,
                 clip: Any = None, aesthetic: Any = None, dino: Any = None, lpips: Any = None) -> None:
        unknown = sorted(set(names) - set(NAMES))
        if unknown:
            raise ValueError(f"not model-based metrics: {unknown}")
        if int(batch_size) < 1:
            raise _input_error("--metric-batch-size must be >= 1")
        self.names = [n for n in NAMES if n in set(names)]
        self.models = dict(models)
        self.device = str(device or "auto")
        self.dtype = str(dtype or "auto")
        self.batch_size = int(batch_size)
        self.local_files_only = bool(local_files_only)
        self.clip, self.aesthetic, self.dino, self.lpips = clip, aesthetic, dino, lpips
        self._loaded = False

    # -- what is needed ------------------------------------------------------------------------
    @property
    def needs_clip(self) -> bool:
        return any(n in CLIP_NAMES for n in self.names)

    def _runtime(self) -> Tuple[Any, Any]:
        from refcoco_edit.pipelines.models import ModelError, resolve_device, resolve_dtype

        try:
            dev = resolve_device(self.device)
            return dev, resolve_dtype(self.dtype, dev)
        except ModelError as e:
            raise _input_error(str(e)) from None

    def load(self) -> "ModelMetrics":
        """Load every backbone that is needed and was not injected (``InputError`` when one cannot be)."""
        if self._loaded:
            return self
        if self.needs_clip and self.clip is None:
            from .clip_metrics import ClipEncoder

            dev, dt = self._runtime()
            self.clip = ClipEncoder.load(self.models["clip_model"], device=dev, dtype=dt, batch_size=self.batch_size,
                                         local_files_only=self.local_files_only)
        if "ap" in self.names and self.aesthetic is None:
            from .aesthetic import AestheticPredictor

            self.aesthetic = AestheticPredictor.load(self.models["aesthetic_weights"], local_files_only=self.local_files_only)
        if "ap" in self.names:
            dim_a = getattr(self.aesthetic, "input_dim", None)
            dim_c = getattr(self.clip, "embed_dim", None)
            if dim_a is not None and dim_c is not None and int(dim_a) != int(dim_c):
                raise _input_error(f"--aesthetic-weights expects {dim_a}-d image embeddings but --clip-model "
                                   f"{self.models.get('clip_model')} gives {dim_c}-d ones (AP is defined on CLIP "
                                   "ViT-L/14: 768-d)")
        if "dino" in self.names and self.dino is None:
            from .dino import DinoEncoder

            dev, dt = self._runtime()
            self.dino = DinoEncoder.load(self.models["dino_model"], device=dev, dtype=dt, batch_size=self.batch_size,
                                         local_files_only=self.local_files_only)
        if "lpips_bg" in self.names and self.lpips is None:
            from .lpips import LPIPS

            dev, _ = self._runtime()
            self.lpips = LPIPS.load(self.models["lpips_weights"], device=dev, local_files_only=self.local_files_only)
        self._loaded = True
        return self

    def describe(self) -> Dict[str, Any]:
        """results.json ``config.model_details``: one entry per model option in use."""
        out: Dict[str, Any] = {}
        for key, obj, used in (("clip_model", self.clip, self.needs_clip),
                               ("aesthetic_weights", self.aesthetic, "ap" in self.names),
                               ("dino_model", self.dino, "dino" in self.names),
                               ("lpips_weights", self.lpips, "lpips_bg" in self.names)):
            if used and obj is not None:
                d = obj.describe() if hasattr(obj, "describe") else {"spec": self.models.get(key), "injected": True}
                out[key] = d
        return out

    def settings(self) -> Dict[str, Any]:
        """results.json ``config.model_metrics``."""
        return {"metrics": list(self.names), "device": self.device, "dtype": self.dtype,
                "batch_size": self.batch_size, "local_files_only": self.local_files_only, "rules": dict(MODEL_RULES)}

    # -- compute ---------------------------------------------------------------------------------
    def compute(self, samples: Sequence[ModelSample]) -> List[Dict[str, float]]:
        """The model metrics of each sample (NaN where a metric does not apply)."""
        self.load()
        res: List[Dict[str, float]] = [{} for _ in samples]
        if not samples:
            return res
        if self.needs_clip:
            self._clip(samples, res)
        if "dino" in self.names:
            self._dino(samples, res)
        if "lpips_bg" in self.names:
            self._lpips(samples, res)
        return [{n: float(r.get(n, math.nan)) for n in self.names} for r in res]

    def _clip(self, samples: Sequence[ModelSample], res: List[Dict[str, float]]) -> None:
        from .clip_metrics import bbox_crop, masked_image

        names = set(self.names)
        views: List[np.ndarray] = []
        index: Dict[Tuple[str, int], int] = {}

        def add(kind: str, i: int, img: Optional[np.ndarray]) -> None:
            if img is not None:
                index[(kind, i)] = len(views)
                views.append(img)

        whole = bool(names & {"ap", "clip_whole", "clip_t", "clip_i"})
        fg = bool(names & {"clip_sim_fg", "clip_sim_fg_pr"})
        for i, s in enumerate(samples):
            if whole:
                add("out", i, s.output)
            if "clip_i" in names and s.reference is not None:
                add("ref", i, s.reference)
            if fg:
                add("fg", i, bbox_crop(s.output, s.edit_mask))
            if "clip_edited" in names and s.edit_mask.any() and s.edit_phrase.strip():
                add("masked", i, masked_image(s.output, s.edit_mask))
        emb = np.asarray(self.clip.images(views), dtype=np.float64) if views else np.zeros((0, 1))
        texts: Dict[str, int] = {}
        wanted_text = {"clip_sim_fg": "target_text", "clip_sim_fg_pr": "referring_phrase",
                       "clip_whole": "prompt", "clip_t": "prompt", "clip_edited": "edit_phrase"}
        for s in samples:
            for n, attr in wanted_text.items():
                t = getattr(s, attr).strip()
                if n in names and t and t not in texts:
                    texts[t] = len(texts)
        temb = np.asarray(self.clip.texts(list(texts)), dtype=np.float64) if texts else np.zeros((0, 1))

        def img_text(kind: str, i: int, text: str) -> float:
            k = index.get((kind, i))
            t = text.strip()
            if k is None or not t:
                return math.nan
            return float(_cos(emb[k], temb[texts[t]]))

        for i, s in enumerate(samples):
            r = res[i]
            if "clip_sim_fg" in names:
                r["clip_sim_fg"] = 100.0 * img_text("fg", i, s.target_text)
            if "clip_sim_fg_pr" in names:
                r["clip_sim_fg_pr"] = 100.0 * img_text("fg", i, s.referring_phrase)
            if "clip_whole" in names:
                r["clip_whole"] = _clip_score(img_text("out", i, s.prompt))
            if "clip_edited" in names:
                r["clip_edited"] = _clip_score(img_text("masked", i, s.edit_phrase))
            if "clip_t" in names:
                r["clip_t"] = img_text("out", i, s.prompt)
            if "clip_i" in names:
                ko, kr = index.get(("out", i)), index.get(("ref", i))
                r["clip_i"] = float(_cos(emb[ko], emb[kr])) if ko is not None and kr is not None else math.nan
        if "ap" in names:
            rows = [index[("out", i)] for i in range(len(samples))]
            scores = np.asarray(self.aesthetic(_normalize(emb[rows])), dtype=np.float64).reshape(-1)
            for i, v in enumerate(scores):
                res[i]["ap"] = float(v)

    def _dino(self, samples: Sequence[ModelSample], res: List[Dict[str, float]]) -> None:
        pairs = [i for i, s in enumerate(samples) if s.reference is not None]
        views = [samples[i].output for i in pairs] + [samples[i].reference for i in pairs]
        emb = np.asarray(self.dino.images(views), dtype=np.float64) if views else np.zeros((0, 1))
        n = len(pairs)
        for i in range(len(samples)):
            res[i]["dino"] = math.nan
        for k, i in enumerate(pairs):
            res[i]["dino"] = float(_cos(emb[k], emb[n + k]))

    def _lpips(self, samples: Sequence[ModelSample], res: List[Dict[str, float]]) -> None:
        from .lpips import mean_over

        todo = [i for i, s in enumerate(samples) if not s.edit_mask.all()]
        maps = self.lpips.maps([(samples[i].output, samples[i].source) for i in todo]) if todo else []
        for i in range(len(samples)):
            res[i]["lpips_bg"] = math.nan
        for i, m in zip(todo, maps):
            res[i]["lpips_bg"] = mean_over(m, ~samples[i].edit_mask)


def _clip_score(cos_value: float) -> float:
    """torchmetrics' CLIPScore of one pair: max(100 * cos, 0) (NaN stays NaN)."""
    if math.isnan(cos_value):
        return math.nan
    return max(100.0 * cos_value, 0.0)
