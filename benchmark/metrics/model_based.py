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
``lpips_bg``       lpips            PIE-Bench: LPIPS(output with M_e from the source, source), its spatial map (native resolution)
                                    averaged over the pixels outside M_e (``--lpips-weights``)
``ref_dino``,      identity         the reference-based track: DINO / CLIP-I between the edited object's
``ref_clip_i``,                     view and the exemplar object's view, CLIP-T between the output and
``ref_clip_t``,                     the edit phrase; ``obj_*``: the output against the after
``obj_dino``,                       photo, both in M_e (views and rules: ``identity``)
``obj_clip_i``
=================  ===============  =====================================================================

CLIP images go through the model's own image processor (``preprocessor_config.json``; for CLIP:
shortest side to 224 bicubic, center crop 224, CLIP mean/std), texts through its tokenizer
(truncated to the model's 77 positions). ``MODEL_RULES`` records these rules in results.json.

Each family takes its backbone as a callable (the torchmetrics ``clip_score`` habit), so the
tests inject tiny random models and the perf benchmark a full-size architecture with random
weights: ``ModelMetrics(names, models, clip=..., aesthetic=..., dino=..., lpips=...)``.

Models are given as a local path or a Hugging Face hub id; with ``local_files_only`` (the
default) a hub id must already be in the local cache. Resolving, checking and loading them is the
model layer's (``refcoco_edit.models``: ``ClipEncoder``, ``resolve_model_dir``,
``resolve_weights_file``, ``load_state_dict``); its ``ModelError`` becomes ``InputError`` (exit 2)
in ``ModelMetrics.load``. What was loaded (the spec, the hub revision when known, a sha256 of the
weight files, the architecture) goes to results.json ``config.model_details``.

Imports go one way: this module -> ``aesthetic``, ``clip_metrics``, ``dino``, ``identity``, ``lpips`` ->
``refcoco_edit.models``; none of them imports this module.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from refcoco_edit.errors import InputError

from . import identity
from .base import MetricSpec

__all__ = ["SPECS", "NAMES", "CLIP_NAMES", "ACCEPTED", "ModelSample", "ModelMetrics", "MODEL_RULES", "target_text"]

SPECS = (
    MetricSpec("ap", "paper", "AP", "LAION aesthetic predictor v2 score of the output (MLP on the L2-normalised "
               "CLIP ViT-L/14 image embedding)", True, needs=("clip_model", "aesthetic_weights")),
    MetricSpec("clip_sim_fg", "paper", "CLIP-Sim_fg (target)",
               "100 * cos(CLIP(output crop at bbox(M_e)), CLIP(edit target text)); NaN for remove edits",
               True, needs=("clip_model",)),
    MetricSpec("clip_sim_fg_pr", "paper", "CLIP-Sim_fg (P_r)",
               "100 * cos(CLIP(output crop at bbox(M_e)), CLIP(referring phrase P_r)), literally as the paper words it",
               True, needs=("clip_model",)),
    MetricSpec("lpips_bg", "pie", "LPIPS_bg x10^3", "LPIPS(output with the source inside M_e, source) spatial map averaged over "
               "background pixels (an exact background scores 0)",
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
ACCEPTED = NAMES + identity.NAMES
"""every metric ``ModelMetrics`` computes: this module's and the identity family's"""

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
    **identity.RULES,
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
    exemplar: Optional[np.ndarray] = None
    """reference-based track: the exemplar (its own size) and the object's mask in it"""
    exemplar_mask: Optional[np.ndarray] = None
    pred_mask: Optional[np.ndarray] = None
    """the editor's returned mask (uint8 levels round(255 * p) as cached, bool or float in [0, 1])"""


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
        unknown = sorted(set(names) - set(ACCEPTED))
        if unknown:
            raise ValueError(f"not model-based metrics: {unknown}")
        if int(batch_size) < 1:
            raise InputError("--metric-batch-size must be >= 1")
        self.names = [n for n in ACCEPTED if n in set(names)]
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
        return any(n in CLIP_NAMES or n in identity.CLIP_NAMES for n in self.names)

    @property
    def needs_dino(self) -> bool:
        return any(n == "dino" or n in identity.DINO_NAMES for n in self.names)

    def _runtime(self) -> Tuple[Any, Any]:
        from refcoco_edit.models import resolve_device, resolve_dtype

        dev = resolve_device(self.device)
        return dev, resolve_dtype(self.dtype, dev)

    def load(self) -> "ModelMetrics":
        """Load every backbone that is needed and was not injected (``InputError`` when one cannot be)."""
        from refcoco_edit.models import ModelError

        if self._loaded:
            return self
        try:
            self._load_backbones()
        except ModelError as e:
            raise InputError(str(e)) from None
        self._loaded = True
        return self

    def _load_backbones(self) -> None:
        if self.needs_clip and self.clip is None:
            from refcoco_edit.models import ClipEncoder

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
                raise InputError(f"--aesthetic-weights expects {dim_a}-d image embeddings but --clip-model "
                                 f"{self.models.get('clip_model')} gives {dim_c}-d ones (AP is defined on CLIP "
                                 "ViT-L/14: 768-d)")
        if self.needs_dino and self.dino is None:
            from .dino import DinoEncoder

            dev, dt = self._runtime()
            self.dino = DinoEncoder.load(self.models["dino_model"], device=dev, dtype=dt, batch_size=self.batch_size,
                                         local_files_only=self.local_files_only)
        if "lpips_bg" in self.names and self.lpips is None:
            from .lpips import LPIPS

            dev, _ = self._runtime()
            self.lpips = LPIPS.load(self.models["lpips_weights"], device=dev, local_files_only=self.local_files_only)

    def describe(self) -> Dict[str, Any]:
        """results.json ``config.model_details``: one entry per model option in use."""
        out: Dict[str, Any] = {}
        for key, obj, used in (("clip_model", self.clip, self.needs_clip),
                               ("aesthetic_weights", self.aesthetic, "ap" in self.names),
                               ("dino_model", self.dino, self.needs_dino),
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
        if any(n in CLIP_NAMES for n in self.names):
            self._clip(samples, res)
        if "dino" in self.names:
            self._dino(samples, res)
        if "lpips_bg" in self.names:
            self._lpips(samples, res)
        ids = [n for n in self.names if n in identity.NAMES]
        if ids:
            inputs = [identity.IdentityInputs(output=s.output, edit_mask=s.edit_mask, exemplar=s.exemplar,
                                              exemplar_mask=s.exemplar_mask, pred_mask=s.pred_mask,
                                              edit_phrase=s.edit_phrase, after=s.reference) for s in samples]
            for r, v in zip(res, identity.compute(inputs, ids, clip=self.clip, dino=self.dino)):
                r.update(v)
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
        from .base import source_inside
        from .lpips import mean_over

        todo = [i for i, s in enumerate(samples) if not s.edit_mask.all()]
        maps = self.lpips.maps([(source_inside(samples[i].output, samples[i].source, samples[i].edit_mask),
                                 samples[i].source) for i in todo]) if todo else []
        for i in range(len(samples)):
            res[i]["lpips_bg"] = math.nan
        for i, m in zip(todo, maps):
            res[i]["lpips_bg"] = mean_over(m, ~samples[i].edit_mask)


def _clip_score(cos_value: float) -> float:
    """torchmetrics' CLIPScore of one pair: max(100 * cos, 0) (NaN stays NaN)."""
    if math.isnan(cos_value):
        return math.nan
    return max(100.0 * cos_value, 0.0)
