"""What the rephrasing stage asks an LLM and what it accepts back: :class:`RephraseConfig`, the
request bodies (:func:`build_request`) and the validation of an answer (:func:`parse_answer`,
:func:`validate`), each rejection a :class:`RephraseRejected` with an ``llm_*`` reason.

Request bodies and rejection messages are part of the LLM cache's keys (a rejected answer's
message is the next request's feedback): change them only with :data:`REPHRASE_VERSION`.
The stage itself is :mod:`refcoco_edit.pipelines.rephrase`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from refcoco_edit.errors import SampleError
from refcoco_edit.prompts import TEMPLATE_VERSION, Prompt, find_span
from refcoco_edit.vocab import COLOURS, MATERIALS

REPHRASE_VERSION = "1"  # bump when the instructions to the model change (part of cache keys)
MODES = ("rephrase", "propose")

SPATIAL_WORDS = frozenset(
    "left right middle center centre top bottom front back behind near far closest farthest furthest "
    "nearest upper lower leftmost rightmost first second third last corner edge side above below "
    "beside background foreground".split()
)
COLOUR_WORDS = frozenset(list(COLOURS) + ["grey", "gold", "silver", "beige", "tan", "dark", "light"])
REMOVAL_VERBS = ("remove", "removed", "erase", "erased", "delete", "deleted", "take out", "taken out",
                 "get rid of", "eliminate", "eliminated", "clear away", "cut out", "wipe out", "gone")
_REFUSAL = re.compile(r"^\s*(i'?m sorry|i am sorry|sorry,|i can(?:'|no)t|i cannot|i won'?t|as an ai\b|i'm unable|i am unable)",
                      re.IGNORECASE)
_STOP = frozenset("the a an of in on with at to by from and that which who is are this one".split())


class RephraseRejected(SampleError):
    """An LLM answer failed validation (``reason``: an ``llm_*`` code)."""


@dataclass
class RephraseConfig:
    """How the LLM is asked. ``model`` is the model name as the server knows it."""

    model: str
    base_url: Optional[str] = None
    api_key_env: str = "OPENAI_API_KEY"
    mode: str = "rephrase"
    temperature: float = 0.7
    max_tokens: int = 300
    json_mode: bool = True  # response_format={"type": "json_object"}
    attempts: int = 3  # answers asked for per sample before quarantine
    timeout: float = 60.0
    max_retries: int = 4  # the openai client's own retries (429 / 5xx / connection)
    concurrency: int = 4
    max_wait: float = 600.0  # longest total wait for Retry-After beyond the client's own
    max_chars: int = 240
    seed: int = 0

    def params(self) -> Dict[str, Any]:
        """What goes into cache keys besides the messages."""
        return {"temperature": self.temperature, "max_tokens": self.max_tokens, "json_mode": self.json_mode,
                "mode": self.mode, "version": REPHRASE_VERSION, "template_version": TEMPLATE_VERSION}


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------

def _words(text: str) -> List[str]:
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())


def _has_word(words: Sequence[str], w: str) -> bool:
    return any(x == w or x == w + "s" or x == w + "es" or (len(w) > 3 and x.rstrip("s") == w.rstrip("s")) for x in words)


def head_noun(expression: str, category: str = "") -> Optional[str]:
    """The word of ``expression`` naming the object: a category name or synonym when one occurs,
    else the last content word before the first preposition ("guy in red" -> "guy")."""
    from refcoco_edit.prompts import _CATEGORY_SYNONYMS  # one synonym table for the whole project

    words = _words(expression)
    names = []
    if category:
        names = [category] + list(_CATEGORY_SYNONYMS.get(category, ()))
    for name in names:
        last = _words(name)[-1] if _words(name) else ""
        if last and _has_word(words, last):
            return last
    head = None
    for w in words:
        if w in ("in", "on", "with", "at", "near", "next", "by", "behind", "holding", "wearing", "that", "who", "of"):
            if head:
                break
            continue
        if w in _STOP or w in SPATIAL_WORDS or w in COLOUR_WORDS or w.isdigit():
            continue
        head = w
    return head


def key_words(expression: str, category: str = "") -> List[str]:
    """Words the referring phrase must keep: the head noun and every spatial/colour word."""
    words = _words(expression)
    keep = [w for w in words if w in SPATIAL_WORDS or w in COLOUR_WORDS]
    head = head_noun(expression, category)
    if head:
        keep.append(head)
    out: List[str] = []
    for w in keep:
        if w not in out:
            out.append(w)
    return out


def target_words(edit_type: str, edit_target: str) -> List[Tuple[str, ...]]:
    """For each required concept of the edit, the words that may express it."""
    if edit_type == "remove":
        return [REMOVAL_VERBS]
    if edit_type == "attribute":
        if edit_target in MATERIALS:
            stems = {"wooden": ("wooden", "wood"), "metallic": ("metallic", "metal"), "golden": ("golden", "gold"),
                     "marble": ("marble",), "glass": ("glass",), "stone": ("stone",)}
            return [stems.get(edit_target, (edit_target,))]
        return [(edit_target,) + (("grey",) if edit_target == "gray" else ())]
    from refcoco_edit.prompts import _CATEGORY_SYNONYMS

    words = [w for w in _words(edit_target) if w not in ("a", "an", "the")]
    if not words:
        return []
    synonyms = tuple(_words(s)[-1] for s in _CATEGORY_SYNONYMS.get(edit_target, ()))
    return [(words[-1],) + synonyms]


def _contains_phrase(text: str, phrase: str) -> bool:
    return re.search(r"(?<![a-z])" + re.escape(phrase) + r"(?![a-z])", text.lower()) is not None


def parse_answer(content: Optional[str], refusal: Optional[str]) -> Dict[str, Any]:
    """The JSON object of an answer (code fences tolerated), or RephraseRejected."""
    if refusal:
        raise RephraseRejected("llm_refusal", f"the model refused: {refusal[:200]}")
    text = (content or "").strip()
    if not text:
        raise RephraseRejected("llm_empty", "the model returned no text")
    if _REFUSAL.match(text):
        raise RephraseRejected("llm_refusal", f"the model refused: {text[:200]}")
    fenced = re.match(r"^```(?:json)?\s*(.*?)\s*```$", text, re.DOTALL)
    if fenced:
        text = fenced.group(1)
    try:
        obj = json.loads(text)
    except ValueError:
        raise RephraseRejected("llm_bad_json", f"not valid JSON: {text[:200]!r}") from None
    if not isinstance(obj, dict):
        raise RephraseRejected("llm_bad_json", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def validate(obj: Dict[str, Any], item: Dict[str, Any], cfg: RephraseConfig) -> Prompt:
    """Check a parsed answer against the sample it is for; return the Prompt with spans."""
    need = ["prompt", "referring_phrase", "edit_phrase"] + (["edit_target"] if cfg.mode == "propose" else [])
    missing = [k for k in need if not isinstance(obj.get(k), str)]
    if missing:
        raise RephraseRejected("llm_bad_json", f"the answer misses field(s) {missing}")
    text = obj["prompt"].strip()
    if not text:
        raise RephraseRejected("llm_empty", "the rewritten prompt is empty")
    if _REFUSAL.match(text):
        raise RephraseRejected("llm_refusal", f"the model refused: {text[:200]}")
    if len(text) > cfg.max_chars or "\n" in text or len(re.findall(r"[.!?](?:\s+[A-Z]|$)", text)) > 1:
        raise RephraseRejected("llm_too_long", f"not one sentence of at most {cfg.max_chars} characters: {text[:120]!r}...")
    ref_phrase, edit_phrase = obj["referring_phrase"].strip(), obj["edit_phrase"].strip()
    rs, es = find_span(text, ref_phrase), find_span(text, edit_phrase)
    if rs is None or es is None:
        which = "referring_phrase" if rs is None else "edit_phrase"
        raise RephraseRejected("llm_span_missing", f"{which} {obj[which]!r} is not in the prompt verbatim")
    spans = _disjoint_spans(text, ref_phrase, edit_phrase)
    if spans is None:
        raise RephraseRejected("llm_span_missing", "the referring and edit phrases overlap")
    rs, es = spans
    ref_words = _words(ref_phrase)
    lost = [w for w in key_words(item["referring_expression"], item.get("category", "")) if not _has_word(ref_words, w)]
    if lost:
        raise RephraseRejected("llm_lost_referent", f"the referring phrase {ref_phrase!r} lost {lost}")
    edit_type = item["edit_type"]
    target = obj["edit_target"].strip() if cfg.mode == "propose" else item["edit_target"]
    if cfg.mode == "propose":
        _check_proposed_target(edit_type, target, item)
    edit_words = _words(edit_phrase)
    for options in target_words(edit_type, target):
        ok = any(_contains_phrase(edit_phrase, o) if " " in o else _has_word(edit_words, o) for o in options)
        if not ok:
            raise RephraseRejected("llm_target_changed", f"the edit phrase {edit_phrase!r} does not say {options[0]!r}")
    p = Prompt(text=text, referring_span=rs, edit_span=es, source=f"llm:{cfg.model}",
               template_id=f"llm-{cfg.mode}")
    p.validate()
    return p


def _occurrences(text: str, phrase: str) -> List[Tuple[int, int]]:
    out, i = [], text.find(phrase)
    while i >= 0:
        out.append((i, i + len(phrase)))
        i = text.find(phrase, i + 1)
    return out


def _disjoint_spans(text: str, ref: str, edit: str) -> Optional[Tuple[Tuple[int, int], Tuple[int, int]]]:
    """The first occurrences of the two phrases that do not overlap ("replace the zebra on the
    left with a zebra toy": the edit phrase "a zebra toy" is found after the referent)."""
    for rs in _occurrences(text, ref):
        for es in _occurrences(text, edit):
            if es[1] <= rs[0] or es[0] >= rs[1]:
                return rs, es
    return None


def _check_proposed_target(edit_type: str, target: str, item: Dict[str, Any]) -> None:
    if not target and edit_type != "remove":
        raise RephraseRejected("llm_bad_json", "the proposal has an empty edit_target")
    if edit_type == "replace":
        if target.lower().strip() in (item.get("category", "").lower(), ""):
            raise RephraseRejected("llm_target_changed", f"proposed target {target!r} is the object's own category")
        allowed = item.get("allowed_targets")
        if allowed and target not in allowed:
            raise RephraseRejected("llm_target_changed", f"proposed target {target!r} is not one of the allowed targets")
    if edit_type == "attribute" and target not in COLOURS and target not in MATERIALS:
        raise RephraseRejected("llm_target_changed", f"proposed attribute {target!r} is not a known colour or material")


# ----------------------------------------------------------------------------------------------
# the requests
# ----------------------------------------------------------------------------------------------

_SYSTEM = {
    "rephrase": (
        "You rewrite instructions for an image editor. Reply with ONE JSON object and nothing else: "
        '{"prompt": str, "referring_phrase": str, "edit_phrase": str}. '
        "prompt: one natural English sentence asking for the same edit of the same object. "
        "referring_phrase: the words of prompt that identify the object, copied verbatim from prompt; keep the "
        "object's noun and every position and colour word of the original description. "
        "edit_phrase: the words of prompt naming the change (the new object, the new colour or material, or the "
        "removal verb), copied verbatim from prompt. Do not change what the edit is."
    ),
    "propose": (
        "You write instructions for an image editor. Given an object in a photo, propose one plausible or "
        "imaginative edit of the requested type. Reply with ONE JSON object and nothing else: "
        '{"prompt": str, "referring_phrase": str, "edit_phrase": str, "edit_target": str}. '
        "prompt: one natural English sentence. referring_phrase: the words of prompt identifying the object, "
        "copied verbatim from prompt, keeping the object's noun and every position and colour word of its "
        "description. edit_phrase: the words of prompt naming the change, copied verbatim. edit_target: for "
        "replace the new object (from allowed_targets when given), for attribute the new colour or material "
        "(from allowed_targets), for remove an empty string."
    ),
}


def build_request(item: Dict[str, Any], cfg: RephraseConfig, attempt: int, feedback: Optional[str]) -> Dict[str, Any]:
    """The chat-completions body for one sample and attempt (deterministic: it is hashed)."""
    if cfg.mode == "rephrase":
        tp: Prompt = item["prompt"]
        user = {"instruction": tp.text, "referring_phrase": tp.referring_phrase, "edit_phrase": tp.edit_phrase,
                "edit_type": item["edit_type"], "edit_target": item["edit_target"]}
    else:
        user = {"object_category": item.get("category", ""), "object_description": item["referring_expression"],
                "edit_type": item["edit_type"], "allowed_targets": item.get("allowed_targets") or None}
    messages = [{"role": "system", "content": _SYSTEM[cfg.mode]},
                {"role": "user", "content": json.dumps(user, ensure_ascii=False)}]
    if feedback:
        messages.append({"role": "user", "content": f"Your previous answer was rejected: {feedback} Reply again with a corrected JSON object."})
    body: Dict[str, Any] = {"model": cfg.model, "messages": messages, "temperature": cfg.temperature,
                            "max_tokens": cfg.max_tokens, "seed": int(item.get("seed", cfg.seed)) % (2**31) + attempt}
    if cfg.json_mode:
        body["response_format"] = {"type": "json_object"}
    return body

