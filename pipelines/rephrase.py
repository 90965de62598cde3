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

Modules: :mod:`.rephrase_rules` (config, requests, validation), :mod:`.llm_client` (cache,
client, service errors), :mod:`.llm_batch` (the Batch API), and this one (:class:`LLMRephraser`,
the stage's writer). Every name of those modules that other code uses is importable from here.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from refcoco_edit.errors import InputError
from refcoco_edit.prompts import Prompt

from .llm_batch import BatchRunner
from .llm_client import LLMCache, answer_of, cache_key, create_honouring_retry_after, make_client, service_error
from .rephrase_rules import (
    COLOUR_WORDS,
    MODES,
    REMOVAL_VERBS,
    REPHRASE_VERSION,
    SPATIAL_WORDS,
    RephraseConfig,
    RephraseRejected,
    build_request,
    head_noun,
    key_words,
    parse_answer,
    target_words,
    validate,
)

__all__ = [
    "REPHRASE_VERSION", "MODES", "SPATIAL_WORDS", "COLOUR_WORDS", "REMOVAL_VERBS", "RephraseRejected",
    "RephraseConfig", "LLMCache", "cache_key", "head_noun", "key_words", "target_words", "parse_answer",
    "validate", "build_request", "make_client", "service_error", "LLMRephraser", "BatchRunner",
]

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
        answer = answer_of(completion)
        self.cache.put(key, self.cfg.model, body, answer)
        return answer

    def _create_honouring_retry_after(self, body: Dict[str, Any]) -> Any:
        """``chat.completions.create`` through :func:`create_honouring_retry_after`."""
        return create_honouring_retry_after(self.client, body, self.cfg)

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

