"""LLM prompt rephrasing through the ``openai`` client: cached, validated, resilient, bulk-ready.

Works with OpenAI and any OpenAI-compatible server (vLLM, Ollama, llama.cpp server): only
``chat.completions`` (and, for ``--llm-batch``, ``files`` + ``batches``) are used.

Two uses (``mode``):

* ``rephrase``: rewrite the template prompt into one natural sentence that keeps the referent
  and the edit;
* ``propose``: given the object's category, expression and edit type, propose an edit target
  and an instruction (from a list of allowed targets when the backend needs exemplars).

Both ask for one JSON object ``{"prompt", "referring_phrase", "edit_phrase"[, "edit_target"]}``.
Nothing the model says about offsets is trusted: the spans are found again in the returned
prompt (:func:`refcoco_edit.prompts.find_span`), and an output is rejected when

* it is not a JSON object or misses a field (``llm_bad_json``);
* a phrase is not in the prompt verbatim, or the two overlap (``llm_span_missing``);
* the referent lost a key word: its head noun or a spatial/colour word (``llm_lost_referent``);
* the edit target changed (``llm_target_changed``);
* the text is empty (``llm_empty``), over-long or several sentences (``llm_too_long``), or a
  refusal (``llm_refusal``).

A rejected output is asked again (up to ``attempts`` times, telling the model why), then the
sample is quarantined with the last reason. Infrastructure failures are never data decisions:
401/403 stops the run with exit 2; a server that is down, times out or answers 5xx after the
client's own retries (which honour ``Retry-After``) stops it with exit 1. Finished shards and
every cached answer are kept, so the same command resumes.

Cache: ``WORKDIR/llm/cache.sqlite``; key = sha256 of (model, template version, request
messages, parameters); one committed row per answer, so entries survive a kill. A re-run makes
zero requests. Bulk mode (:class:`BatchRunner`) sends the missing requests through the Batch API
(JSONL, ``custom_id`` = cache key), records the batch id before polling, and merges results
into the same cache, idempotently: a killed bulk run picks its batch up again.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from refcoco_edit.errors import InputError, RunError, SampleError
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
# cache
# ----------------------------------------------------------------------------------------------

class LLMCache:
    """A crash-safe answer cache (SQLite, one committed row per answer), shared by threads."""

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, model TEXT, request TEXT, answer TEXT, created REAL)"
        )
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Optional[Dict[str, Any]]:
        with self._lock:
            row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
            return json.loads(row[0])

    def put(self, key: str, model: str, request: Dict[str, Any], answer: Dict[str, Any]) -> None:
        """Insert once; a second answer for the same key is ignored (idempotent merges)."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO answers (key, model, request, answer, created) VALUES (?, ?, ?, ?, ?)",
                (key, model, json.dumps(request, sort_keys=True), json.dumps(answer, sort_keys=True), time.time()),
            )

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM answers WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def cache_key(model: str, request: Dict[str, Any], params: Dict[str, Any]) -> str:
    blob = json.dumps({"model": model, "request": request, "params": params}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


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


def make_client(cfg: RephraseConfig) -> Any:
    """The openai client (its own retries and timeouts; Retry-After honoured)."""
    try:
        import openai
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise InputError("--llm-model needs the openai package: pip install 'refcoco-edit[llm]'") from e
    key = os.environ.get(cfg.api_key_env) or ("EMPTY" if cfg.base_url else None)
    if key is None:
        raise InputError(f"--llm-model needs an API key in ${cfg.api_key_env} (or a --llm-base-url server)")
    return openai.OpenAI(api_key=key, base_url=cfg.base_url, timeout=cfg.timeout, max_retries=cfg.max_retries)


def _where(cfg: RephraseConfig) -> str:
    return cfg.base_url or "the OpenAI API"


def service_error(e: Exception, cfg: RephraseConfig) -> Exception:
    """Map an openai exception to how the run reacts: InputError (exit 2), RunError (exit 1), or
    RephraseRejected (this sample only)."""
    import openai

    where = _where(cfg)
    if isinstance(e, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return InputError(f"the LLM server at {where} rejected the API key (HTTP {e.status_code}); check ${cfg.api_key_env}")
    if isinstance(e, openai.NotFoundError):
        return InputError(f"the LLM server at {where} has no model {cfg.model!r} (HTTP 404)")
    if isinstance(e, openai.APITimeoutError):
        return RunError(f"the LLM server at {where} did not answer within {cfg.timeout:g}s after {cfg.max_retries} retries; "
                        "finished work is kept: re-run the same command to resume")
    if isinstance(e, openai.APIConnectionError):
        return RunError(f"cannot reach the LLM server at {where} ({type(e).__name__}); "
                        "finished work is kept: re-run the same command to resume")
    if isinstance(e, openai.RateLimitError):
        return RunError(f"the LLM server at {where} kept answering 429 (rate limit) after {cfg.max_retries} retries; "
                        "finished work is kept: re-run later to resume")
    if isinstance(e, (openai.BadRequestError, openai.UnprocessableEntityError)):
        detail = str(e)
        key = os.environ.get(cfg.api_key_env) or ""
        if key:  # a server may echo the key back in its error; this text is stored in the quarantine table
            detail = detail.replace(key, "***")
        return RephraseRejected("llm_bad_request", f"the LLM server refused this request (HTTP {e.status_code}): {detail[:200]}")
    if isinstance(e, openai.APIStatusError):
        return RunError(f"the LLM server at {where} answered HTTP {e.status_code} after {cfg.max_retries} retries; "
                        "finished work is kept: re-run the same command to resume")
    return e


def _retry_after(e: Any) -> Optional[float]:
    """Seconds asked for by a 429's ``retry-after-ms`` / ``Retry-After`` header, if any."""
    headers = getattr(getattr(e, "response", None), "headers", None) or {}
    try:
        if headers.get("retry-after-ms"):
            return float(headers["retry-after-ms"]) / 1000.0
        if headers.get("retry-after"):
            return max(0.0, float(headers["retry-after"]))
    except (TypeError, ValueError):
        return None
    return None


def _answer_of(completion: Any) -> Dict[str, Any]:
    msg = completion.choices[0].message
    return {"content": msg.content, "refusal": getattr(msg, "refusal", None),
            "finish_reason": completion.choices[0].finish_reason}


# ----------------------------------------------------------------------------------------------
# the writer
# ----------------------------------------------------------------------------------------------

@dataclass
class _Outcome:
    prompt: Optional[Prompt] = None
    error: Optional[Exception] = None
    target: Optional[str] = None


class LLMRephraser:
    """A :class:`refcoco_edit.prompts.PromptWriter` backed by an LLM, with cache and validation.

    ``items``: dicts with ``sample_id``, ``edit_type``, ``referring_expression``, ``edit_target``,
    ``category``, ``prompt`` (the template :class:`Prompt`), ``seed`` and, in propose mode,
    optionally ``allowed_targets``. Returns per item a :class:`Prompt` (``source="llm:<model>"``;
    in propose mode ``template_id`` carries ``llm-propose`` and :attr:`targets` the proposed
    target) or the :class:`RephraseRejected` that quarantines it.
    """

    def __init__(self, cfg: RephraseConfig, cache: LLMCache, client: Any = None):
        if cfg.mode not in MODES:
            raise InputError(f"unknown LLM mode {cfg.mode!r}; choose {', '.join(MODES)}")
        self.cfg = cfg
        self.cache = cache
        self._client = client
        self.calls = 0  # requests sent by this process
        self.cache_hits = 0  # answers taken from the cache instead
        self._lock = threading.Lock()
        self.targets: Dict[str, str] = {}

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_client(self.cfg)
        return self._client

    def _complete(self, body: Dict[str, Any]) -> Dict[str, Any]:
        key = cache_key(self.cfg.model, body, self.cfg.params())
        hit = self.cache.get(key)
        if hit is not None:
            with self._lock:
                self.cache_hits += 1
            return hit
        completion = self._create_honouring_retry_after(body)
        with self._lock:
            self.calls += 1
        answer = _answer_of(completion)
        self.cache.put(key, self.cfg.model, body, answer)
        return answer

    def _create_honouring_retry_after(self, body: Dict[str, Any]) -> Any:
        """``chat.completions.create``; the client retries 429/5xx itself and follows a
        Retry-After of up to 120 s. A longer Retry-After makes it give up at once, so we wait
        it out here (up to ``max_wait`` seconds in all) before asking again."""
        import openai

        waited = 0.0
        for _ in range(self.cfg.max_retries + 1):
            try:
                return self.client.chat.completions.create(**body)
            except openai.RateLimitError as e:
                delay = _retry_after(e)
                if delay is None or waited + delay > self.cfg.max_wait:
                    raise service_error(e, self.cfg) from None
                time.sleep(delay)
                waited += delay
            except Exception as e:  # noqa: BLE001 - mapped to a precise reaction right here
                raise service_error(e, self.cfg) from None
        raise RunError(f"the LLM server at {_where(self.cfg)} kept answering 429 (rate limit); re-run later to resume")

    def request_for(self, item: Dict[str, Any], attempt: int, feedback: Optional[str]) -> Dict[str, Any]:
        return build_request(item, self.cfg, attempt, feedback)

    def _one(self, item: Dict[str, Any], answers: Optional[Callable[[Dict[str, Any]], Optional[Dict[str, Any]]]] = None) -> _Outcome:
        feedback: Optional[str] = None
        last: Optional[RephraseRejected] = None
        for attempt in range(self.cfg.attempts):
            body = self.request_for(item, attempt, feedback)
            if answers is not None:
                answer = answers(body)
                if answer is None:
                    return _Outcome(error=None)  # not answered yet (bulk mode: next round)
            else:
                try:
                    answer = self._complete(body)
                except RephraseRejected as e:
                    return _Outcome(error=e)
            try:
                obj = parse_answer(answer.get("content"), answer.get("refusal"))
                prompt = validate(obj, item, self.cfg)
                target = obj.get("edit_target") if self.cfg.mode == "propose" else None
                return _Outcome(prompt=prompt, target=target)
            except RephraseRejected as e:
                last = e
                feedback = str(e)
        assert last is not None
        return _Outcome(error=RephraseRejected(last.reason, f"after {self.cfg.attempts} answers: {last}"))

    def write(self, items: List[Dict[str, Any]]) -> List[Union[Prompt, Exception]]:
        """Rewrite every item (threads bounded by ``concurrency``). Service failures raise."""
        if not items:
            return []
        with ThreadPoolExecutor(max_workers=max(1, self.cfg.concurrency)) as pool:
            outcomes = list(pool.map(self._one, items))
        out: List[Union[Prompt, Exception]] = []
        for item, o in zip(items, outcomes):
            if o.prompt is not None:
                if o.target is not None:
                    self.targets[item["sample_id"]] = o.target
                out.append(o.prompt)
            else:
                out.append(o.error if o.error is not None else RephraseRejected("llm_error", "no answer"))
        return out

    def pending_requests(self, items: List[Dict[str, Any]]) -> List[Tuple[str, Dict[str, Any]]]:
        """For bulk mode: the (cache key, body) of the next request each unfinished item needs."""
        todo: List[Tuple[str, Dict[str, Any]]] = []
        missing: Dict[str, Dict[str, Any]] = {}

        def answers(body: Dict[str, Any]) -> Optional[Dict[str, Any]]:
            key = cache_key(self.cfg.model, body, self.cfg.params())
            hit = self.cache.get(key)
            if hit is None:
                missing[key] = body
            return hit

        for item in items:
            self._one(item, answers)
        todo.extend(sorted(missing.items()))
        return todo


# ----------------------------------------------------------------------------------------------
# bulk mode: the Batch API
# ----------------------------------------------------------------------------------------------

@dataclass
class BatchRunner:
    """Sends the requests the cache lacks through the Batch API, round after round (a rejected
    answer needs a new request), and merges the answers into the cache.

    State (``WORKDIR/llm/batches.json``) records each submitted batch before it is polled, so a
    killed run polls the same batch again instead of paying twice.
    """

    rephraser: LLMRephraser
    state_path: Path
    poll_interval: float = 5.0
    max_wait: float = 24 * 3600.0
    log: Callable[[str], None] = print
    submitted: int = field(default=0, init=False)

    def _state(self) -> Dict[str, Any]:
        if self.state_path.exists():
            return json.loads(self.state_path.read_text())
        return {"batches": []}

    def _save(self, state: Dict[str, Any]) -> None:
        from refcoco_edit.workspace import atomic_write_json

        atomic_write_json(self.state_path, state)

    def run(self, items: List[Dict[str, Any]]) -> Dict[str, int]:
        rp = self.rephraser
        state = self._state()
        # a batch from an earlier, killed run: finish it first
        for b in state["batches"]:
            if b.get("merged"):
                continue
            self._finish(b, state)
        rounds = 0
        for _ in range(rp.cfg.attempts):
            todo = rp.pending_requests(items)
            if not todo:
                break
            rounds += 1
            b = self._submit(todo, state)
            self._finish(b, state)
        return {"rounds": rounds, "batches": len(state["batches"]), "submitted": self.submitted}

    def _submit(self, todo: List[Tuple[str, Dict[str, Any]]], state: Dict[str, Any]) -> Dict[str, Any]:
        import io

        rp = self.rephraser
        lines = [json.dumps({"custom_id": key, "method": "POST", "url": "/v1/chat/completions", "body": body},
                            sort_keys=True, ensure_ascii=False) for key, body in todo]
        data = ("\n".join(lines) + "\n").encode("utf-8")
        try:
            f = rp.client.files.create(file=("requests.jsonl", io.BytesIO(data)), purpose="batch")
            batch = rp.client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                             completion_window="24h", metadata={"tool": "refcoco-edit"})
        except Exception as e:  # noqa: BLE001
            raise service_error(e, rp.cfg) from None
        entry = {"id": batch.id, "input_file_id": f.id, "requests": len(todo), "merged": False}
        state["batches"].append(entry)
        self._save(state)  # recorded before polling: a kill from here on resumes this batch
        self.submitted += len(todo)
        self.log(f"llm batch {batch.id}: {len(todo)} requests submitted")
        return entry

    def _finish(self, entry: Dict[str, Any], state: Dict[str, Any]) -> None:
        rp = self.rephraser
        t0 = time.monotonic()
        while True:
            try:
                batch = rp.client.batches.retrieve(entry["id"])
            except Exception as e:  # noqa: BLE001
                raise service_error(e, rp.cfg) from None
            if batch.status in ("completed", "failed", "expired", "cancelled"):
                break
            if time.monotonic() - t0 > self.max_wait:
                raise RunError(f"llm batch {entry['id']} is still {batch.status}; re-run later to resume")
            time.sleep(self.poll_interval)
        merged = 0
        for file_id in (batch.output_file_id, getattr(batch, "error_file_id", None)):
            if not file_id:
                continue
            try:
                text = rp.client.files.content(file_id).text
            except Exception as e:  # noqa: BLE001
                raise service_error(e, rp.cfg) from None
            for line in text.splitlines():
                if not line.strip():
                    continue
                rec = json.loads(line)
                resp = rec.get("response") or {}
                if resp.get("status_code") != 200:
                    continue  # not cached: asked again in the next round or run
                body = resp.get("body") or {}
                choice = (body.get("choices") or [{}])[0]
                msg = choice.get("message") or {}
                answer = {"content": msg.get("content"), "refusal": msg.get("refusal"),
                          "finish_reason": choice.get("finish_reason")}
                rp.cache.put(rec["custom_id"], rp.cfg.model, {"custom_id": rec["custom_id"], "batch": entry["id"]}, answer)
                merged += 1
        entry.update(merged=True, status=batch.status, answers=merged)
        self._save(state)
        self.log(f"llm batch {entry['id']}: {batch.status}, {merged} answers merged")
