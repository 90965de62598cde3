"""Stage-1 self-supervised data for ReferDiffusion (paper Sec. 4): from any RefCOCO(-Edit) sample.

For an image ``I``, the referred object's mask ``M`` and its referring expression:

1. expand ``M`` by dilation with an elliptic kernel of radius ``max(min_expand_px,
   round(expand_ratio * sqrt(area(M))))`` -> ``M_x``;
2. cover ``M_x`` with a random colour of :data:`refcoco_edit.vocab.COLOURS` -> the source image;
3. subject = the head noun of the expression matched against the COCO category vocabulary (+ a
   few synonyms, e.g. "man" for person): the expression is cut at its first preposition /
   relative word ("man *in* red shirt"), and the last vocabulary word of the head chunk is taken;
   else the first vocabulary word anywhere; else the sample's category name;
4. prompt ``"Paint {a|an} {subject} on the {colour} mask"`` (the article agrees with the subject);
   ``edit_span`` covers ``"{a} {subject}"`` (what is to be painted, like our templates' edit
   spans) and ``referring_span`` covers ``"the {colour} mask"``;
5. the same random crop (``crop_scale`` of each side) and horizontal flip (``flip_prob``) are
   applied to source, target and masks, then an optional resize to ``size`` (masks nearest);
6. the target is the original image; ``source_mask`` = ``edit_mask`` = ``M_x`` (everything outside
   it is unchanged, which is what the Region-Control Loss assumes).

All randomness comes from ``numpy.random.default_rng(seed)``: same inputs + seed -> same sample.

Optional LLM rephrase (``synth: {llm_rephrase: {model: M, base_url: URL, ...}}`` in a stage-1
config): each template prompt goes through the build's rephrasing stage, :mod:`refcoco_edit.pipelines.rephrase`
- the same ``openai`` client, request format, answer validation and SQLite cache
(:class:`~refcoco_edit.pipelines.rephrase.LLMRephraser`, :class:`~refcoco_edit.pipelines.rephrase.LLMCache`). A stage-1 prompt
depends only on (subject, colour), so one request is made per (subject, colour, variant) - the
trainer asks for all of them before training starts (:func:`prepare_llm_rephrase`) - and each
sample takes its variant from its own seed. The answer must keep the referring phrase's colour
word and "mask", and the edit phrase must name the subject (the validation of
``refcoco_edit.pipelines.rephrase`` with edit type ``replace`` and target = subject); the spans are found
again in the answer. A rejected answer (refusal, bad JSON, lost subject, ... after ``attempts``
tries) falls back to the template prompt, and the reason is recorded (``Stage1Sample.prompt_fallback``,
``Stage1Rephraser.records()``; the trainer writes them to ``output_dir/llm/stage1_prompts.json``).
A server that is down, times out or keeps answering 5xx is not a data decision: it raises
:class:`refcoco_edit.errors.RunError` (``refcoco-edit train`` exits 1 with one line) before
any step is trained, and a wrong key / unknown model raises ``InputError`` (exit 2). Answers are
cached (``cache``, default ``output_dir/llm/cache.sqlite``), so a re-run or resume makes no
request and gets the same prompts: given the cache, samples are a function of the seed.
"""
from __future__ import annotations

import io
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from refcoco_edit.prompts import Prompt, indefinite_article
from refcoco_edit.vocab import COCO_CATEGORIES, COLOURS

# Words for a category that referring expressions use instead of its name.
SYNONYMS: Dict[str, str] = {
    "man": "person", "woman": "person", "guy": "person", "lady": "person", "girl": "person",
    "boy": "person", "kid": "person", "child": "person", "player": "person", "people": "person",
    "men": "person", "women": "person", "baby": "person", "skier": "person", "batter": "person",
    "catcher": "person", "umpire": "person", "surfer": "person", "bike": "bicycle",
    "motorbike": "motorcycle", "plane": "airplane", "jet": "airplane", "ship": "boat",
    "sofa": "couch", "table": "dining table", "tv": "tv", "television": "tv", "monitor": "tv",
    "laptop": "laptop", "phone": "cell phone", "doughnut": "donut", "puppy": "dog", "kitten": "cat",
    "calf": "cow", "lamb": "sheep", "pony": "horse", "teddy": "teddy bear", "plant": "potted plant",
    "glass": "wine glass", "mug": "cup", "van": "truck", "suv": "car", "taxi": "car", "cab": "car",
}
# Words that end the head chunk of a referring expression.
_BREAK = {
    "in", "on", "at", "with", "near", "by", "behind", "beside", "next", "of", "under", "above", "below",
    "that", "who", "which", "wearing", "holding", "to", "from", "left", "right", "closest", "nearest",
    "between", "facing", "sitting", "standing", "looking", "without", "and", "far",
}
_WORD = re.compile(r"[a-z]+")


def _singular(w: str) -> str:
    for suf, rep in (("ies", "y"), ("ches", "ch"), ("shes", "sh"), ("xes", "x"), ("s", "")):
        if w.endswith(suf) and len(w) > len(suf) + 2 and not w.endswith("ss"):
            return w[: -len(suf)] + rep
    return w


def _vocabulary() -> Dict[str, str]:
    """surface word(s) -> category name: category names (1-2 words) and the synonyms."""
    v = {name: name for name in COCO_CATEGORIES.values()}
    v.update(SYNONYMS)
    return v


_VOCAB = _vocabulary()


def _match_at(words: Sequence[str], i: int) -> Optional[Tuple[str, int]]:
    """The vocabulary phrase (as written, singular) starting at ``words[i]`` and its length."""
    if i + 1 < len(words):
        two = f"{words[i]} {_singular(words[i + 1])}"
        if two in _VOCAB:
            return two, 2
    one = _singular(words[i])
    if one in _VOCAB:
        return one, 1
    if words[i] in _VOCAB:
        return words[i], 1
    return None


def extract_subject(expression: str, category: Optional[str] = None) -> str:
    """The head noun of a referring expression, matched against the category vocabulary."""
    words = _WORD.findall(expression.lower())
    head_end = next((i for i, w in enumerate(words) if w in _BREAK and i > 0), len(words))
    last = None
    i = 0
    while i < head_end:
        m = _match_at(words, i)
        if m is not None:
            last = m[0]
            i += m[1]
        else:
            i += 1
    if last is not None:
        return last
    for i in range(len(words)):
        m = _match_at(words, i)
        if m is not None:
            return m[0]
    if category:
        return category
    raise ValueError(f"no subject found in {expression!r} and no category given")


def stage1_prompt(subject: str, colour: str) -> Prompt:
    """``Paint a {subject} on the {colour} mask`` with exact spans."""
    edit = f"{indefinite_article(subject)} {subject}"
    ref = f"the {colour} mask"
    text = f"Paint {edit} on {ref}"
    a = len("Paint ")
    r = text.rindex(ref)
    p = Prompt(text=text, referring_span=(r, r + len(ref)), edit_span=(a, a + len(edit)), source="template",
               template_id="stage1-paint")
    p.validate()
    return p


def expand_mask(mask: np.ndarray, expand_ratio: float = 0.05, min_expand_px: int = 2) -> np.ndarray:
    """Dilate a bool mask with an ellipse of radius ``max(min_px, ratio * sqrt(area))``."""
    import cv2

    m = np.asarray(mask, dtype=bool)
    r = max(int(min_expand_px), int(round(expand_ratio * float(np.sqrt(m.sum())))))
    if r <= 0:
        return m.copy()
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.dilate(m.astype(np.uint8), k).astype(bool)


@dataclass
class Stage1Sample:
    source: np.ndarray       # HxWx3 uint8: the image with the expanded mask covered
    target: np.ndarray       # HxWx3 uint8: the original image (same crop/flip)
    source_mask: np.ndarray  # HxW bool: the covered region (M for the mask loss)
    edit_mask: np.ndarray    # HxW bool: the region allowed to change (M_e for the RCL)
    prompt: Prompt
    subject: str
    colour: str
    prompt_fallback: Optional[str] = None  # LLM rephrase rejected: "reason: message" (the template is used)


def synthesize(image: np.ndarray, mask: np.ndarray, expression: str, category: Optional[str] = None,
               seed: int = 0, expand_ratio: float = 0.05, min_expand_px: int = 2,
               crop_scale: Tuple[float, float] = (0.8, 1.0), flip_prob: float = 0.5,
               size: Optional[Tuple[int, int]] = None, colours: Optional[Sequence[str]] = None,
               llm_rephrase: Optional[Union["Stage1Rephraser", Dict[str, Any]]] = None) -> Stage1Sample:
    """One stage-1 sample (see the module docstring). ``size`` is (H, W) of the output.
    ``llm_rephrase``: a :class:`Stage1Rephraser` (or its options, see :func:`get_rephraser`)."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be HxWx3 uint8, got {img.shape} {img.dtype}")
    m = np.asarray(mask, dtype=bool)
    if m.shape != img.shape[:2]:
        raise ValueError(f"mask {m.shape} does not match image {img.shape[:2]}")
    if not m.any():
        raise ValueError("empty object mask")
    if not (0 < crop_scale[0] <= crop_scale[1] <= 1):
        raise ValueError(f"bad crop_scale {crop_scale}")
    rng = np.random.default_rng(seed)
    names = list(colours or COLOURS)
    colour = names[int(rng.integers(len(names)))]
    mx = expand_mask(m, expand_ratio, min_expand_px)
    src = img.copy()
    src[mx] = np.array(COLOURS[colour], dtype=np.uint8)
    subject = extract_subject(expression, category)

    H, W = m.shape
    s = rng.uniform(*crop_scale)
    ch, cw = max(1, int(round(H * s))), max(1, int(round(W * s)))
    y0 = int(rng.integers(0, H - ch + 1))
    x0 = int(rng.integers(0, W - cw + 1))
    flip = bool(rng.random() < flip_prob)

    def aug(a: np.ndarray, nearest: bool) -> np.ndarray:
        a = a[y0:y0 + ch, x0:x0 + cw]
        if flip:
            a = a[:, ::-1]
        if size is not None and a.shape[:2] != tuple(size):
            import cv2

            interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
            a = cv2.resize(a.astype(np.uint8), (int(size[1]), int(size[0])), interpolation=interp)
        return np.ascontiguousarray(a)

    mask_out = aug(mx.astype(np.uint8), True).astype(bool)
    prompt, fallback = stage1_prompt(subject, colour), None
    if llm_rephrase is not None:
        rp = llm_rephrase if isinstance(llm_rephrase, Stage1Rephraser) else get_rephraser(llm_rephrase)
        # drawn last, and only with the LLM on: template-only samples stay those of earlier versions
        variant = int(rng.integers(rp.variants)) if rp.variants > 1 else 0
        prompt, fallback = rp.prompt(subject, colour, variant)
    return Stage1Sample(source=aug(src, False), target=aug(img, False), source_mask=mask_out,
                        edit_mask=mask_out.copy(), prompt=prompt, subject=subject, colour=colour,
                        prompt_fallback=fallback)


def synthesize_record(row: Dict[str, Any], seed: int = 0, **kw: Any) -> Stage1Sample:
    """A stage-1 sample from a RefCOCO-Edit row (``source_image`` {bytes, path}, ``source_mask``
    RLE, ``referring_expression``, ``category``)."""
    from PIL import Image

    from refcoco_edit import rle

    im = row["source_image"]
    if isinstance(im, dict):
        im = Image.open(io.BytesIO(im["bytes"])) if im.get("bytes") else Image.open(im["path"])
    image = np.asarray(im.convert("RGB") if hasattr(im, "convert") else im, dtype=np.uint8)
    mask = rle.decode(row["source_mask"])
    return synthesize(image, mask, row["referring_expression"], row.get("category"), seed=seed, **kw)


# ----------------------------------------------------------------------------------------------
# optional LLM rephrase of the stage-1 prompts (through refcoco_edit.pipelines.rephrase)
# ----------------------------------------------------------------------------------------------

# options of ``synth.llm_rephrase`` -> refcoco_edit.pipelines.rephrase.RephraseConfig fields (the build's --llm-* settings)
_RP_KEYS = ("model", "base_url", "api_key_env", "temperature", "max_tokens", "json_mode", "attempts", "timeout",
            "max_retries", "concurrency", "max_chars")
_OWN_KEYS = ("cache", "variants")


class Stage1Rephraser:
    """Rephrases ``Paint {a} {subject} on the {colour} mask`` prompts with an LLM, once per
    (subject, colour, variant), through :class:`refcoco_edit.pipelines.rephrase.LLMRephraser` (its client,
    validation, retries and cache). :meth:`prompt` returns (Prompt, None) for an accepted answer
    (``source == "llm:<model>"``) and (template Prompt, "reason: message") for a rejected one.
    Service failures raise (``RunError`` / ``InputError``)."""

    def __init__(self, options: Dict[str, Any], cache: Optional[Union[str, Path]] = None, client: Any = None):
        from refcoco_edit.pipelines.rephrase import LLMCache, LLMRephraser, RephraseConfig

        opts = dict(options or {})
        unknown = sorted(set(opts) - set(_RP_KEYS) - set(_OWN_KEYS))
        if unknown:
            raise ValueError(f"synth.llm_rephrase: unknown option(s) {unknown}; known: {', '.join(_RP_KEYS + _OWN_KEYS)}")
        if not opts.get("model"):
            raise ValueError("synth.llm_rephrase needs a model (synth.llm_rephrase.model: NAME)")
        cache = opts.pop("cache", None) or cache
        if not cache:
            raise ValueError("synth.llm_rephrase needs a cache file (synth.llm_rephrase.cache: PATH)")
        self.variants = int(opts.pop("variants", 1))
        if self.variants < 1:
            raise ValueError(f"synth.llm_rephrase.variants must be >= 1, got {self.variants}")
        self.options = dict(options)
        self.config = RephraseConfig(mode="rephrase", **opts)
        self.cache_path = Path(cache)
        self.rephraser = LLMRephraser(self.config, LLMCache(self.cache_path), client=client)
        self._done: Dict[Tuple[str, str, int], Tuple[Prompt, Optional[str]]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def item(subject: str, colour: str, variant: int) -> Dict[str, Any]:
        """The rephrasing stage's item for one template prompt (edit = paint the subject)."""
        p = stage1_prompt(subject, colour)
        return {"sample_id": f"stage1/{subject}/{colour}/{variant}", "edit_type": "replace", "edit_target": subject,
                "referring_expression": p.referring_phrase, "category": "", "prompt": p, "seed": variant}

    def prefetch(self, pairs: Iterable[Tuple[str, str]]) -> None:
        """Resolve every (subject, colour) x variant not resolved yet (requests run concurrently,
        cached answers are reused)."""
        keys = []
        for subject, colour in pairs:
            for v in range(self.variants):
                k = (subject, colour, v)
                if k not in self._done and k not in keys:
                    keys.append(k)
        if not keys:
            return
        results = self.rephraser.write([self.item(*k) for k in keys])  # RunError / InputError propagate
        with self._lock:
            for k, r in zip(keys, results):
                if isinstance(r, Prompt):
                    self._done[k] = (r, None)
                else:
                    reason = getattr(r, "reason", type(r).__name__)
                    self._done[k] = (stage1_prompt(k[0], k[1]), f"{reason}: {r}")

    def prompt(self, subject: str, colour: str, variant: int = 0) -> Tuple[Prompt, Optional[str]]:
        k = (subject, colour, int(variant) % self.variants)
        if k not in self._done:
            self.prefetch([(subject, colour)])
        return self._done[k]

    @property
    def requests(self) -> int:
        """Requests sent to the server by this process (cache hits are not requests)."""
        return self.rephraser.calls

    @property
    def cache_hits(self) -> int:
        return self.rephraser.cache_hits

    def records(self) -> List[Dict[str, Any]]:
        """One record per resolved (subject, colour, variant): the prompt used and, for a
        fallback, why."""
        out = []
        for (subject, colour, v), (p, why) in sorted(self._done.items()):
            out.append({"subject": subject, "colour": colour, "variant": v, "prompt": p.text,
                        "referring_span": list(p.referring_span), "edit_span": list(p.edit_span),
                        "prompt_source": p.source, "fallback": why})
        return out

    def summary(self) -> Dict[str, Any]:
        recs = self.records()
        reasons: Dict[str, int] = {}
        for r in recs:
            if r["fallback"]:
                code = r["fallback"].split(":", 1)[0]
                reasons[code] = reasons.get(code, 0) + 1
        return {"model": self.config.model, "base_url": self.config.base_url, "cache": str(self.cache_path),
                "prompts": len(recs), "llm": sum(1 for r in recs if not r["fallback"]),
                "fallback": sum(1 for r in recs if r["fallback"]), "fallback_reasons": reasons,
                "requests": self.requests, "cache_hits": self.cache_hits}


_REGISTRY: Dict[str, Stage1Rephraser] = {}
_REGISTRY_LOCK = threading.Lock()


def get_rephraser(options: Dict[str, Any], cache: Optional[Union[str, Path]] = None) -> Stage1Rephraser:
    """The process's :class:`Stage1Rephraser` for these options (one per distinct options, so a
    config dict given to every :func:`synthesize` call shares one cache connection)."""
    key = json.dumps({"options": options, "cache": str(cache) if cache else None}, sort_keys=True, default=str)
    with _REGISTRY_LOCK:
        if key not in _REGISTRY:
            _REGISTRY[key] = Stage1Rephraser(options, cache)
        return _REGISTRY[key]


def prepare_llm_rephrase(options: Dict[str, Any], samples: Sequence[Any], output_dir: Union[str, Path],
                         colours: Optional[Sequence[str]] = None) -> Stage1Rephraser:
    """For the trainer: the rephraser of ``synth.llm_rephrase`` (cache default
    ``output_dir/llm/cache.sqlite``) with every (subject, colour) of ``samples`` (BenchSamples:
    the subject of the referring phrase) resolved before training, and the prompts written to
    ``output_dir/llm/stage1_prompts.json``."""
    from refcoco_edit.workspace import atomic_write_json

    out = Path(output_dir)
    rp = get_rephraser(options, out / "llm" / "cache.sqlite")
    subjects: List[str] = []
    for s in samples:
        a, b = s.referring_span
        subj = extract_subject(s.prompt[a:b], getattr(s, "category", None))
        if subj not in subjects:
            subjects.append(subj)
    names = list(colours or COLOURS)
    rp.prefetch([(subj, c) for subj in subjects for c in names])
    atomic_write_json(out / "llm" / "stage1_prompts.json", {"summary": rp.summary(), "prompts": rp.records()})
    return rp
