"""The judge's connection: its settings (:class:`JudgeConfig`), the answer cache and one
question asked through the real ``openai`` client, validated and re-asked once
(:class:`JudgeClient`).

The client, its retries, Retry-After handling and the mapping of service errors are the
rephrasing stage's (``refcoco_edit.pipelines.llm_client``): a rejected key stops the run with
exit 2; a server that is down, times out or answers 5xx after the client's retries stops it with
exit 1 and one line; every answer received is already in the cache, so the same command resumes
without paying twice.

Cache: SQLite (``llm_client.LLMCache``), one committed row per answer; key = sha256 of (judge
model, the request with every image replaced by its sha256, :meth:`JudgeConfig.params` with the
prompt version). The pass index is the request's ``seed`` and so part of the key.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from refcoco_edit.errors import InputError, SampleError
from refcoco_edit.pipelines.llm_client import (
    LLMCache,
    answer_of,
    cache_key,
    create_honouring_retry_after,
    make_client,
)

from .protocol import JUDGE_PROMPT_VERSION, JudgeRejected, Question, build_messages, parse_answer

__all__ = ["JudgeConfig", "JudgeClient", "Attempt", "Outcome", "host_class"]


@dataclass
class JudgeConfig:
    """How the judge is asked (``model``: the name the server knows). The fields read by
    ``llm_client`` (base_url, api_key_env, timeout, max_retries, max_wait, model) mean what they
    mean for the rephrasing stage."""

    model: str
    base_url: Optional[str] = None
    api_key_env: str = "OPENAI_API_KEY"
    passes: int = 1
    protocols: Tuple[str, ...] = ("blind", "marked")
    temperature: float = 0.0
    max_tokens: int = 400
    json_mode: bool = True
    attempts: int = 2  # answers asked for per question: the first and one re-ask with the reason
    timeout: float = 60.0
    max_retries: int = 4
    max_wait: float = 600.0
    concurrency: int = 4

    def params(self) -> Dict[str, Any]:
        """What goes into cache keys besides the request (and into results.json)."""
        return {"temperature": float(self.temperature), "max_tokens": int(self.max_tokens),
                "json_mode": bool(self.json_mode), "prompt_version": JUDGE_PROMPT_VERSION}

    def check(self) -> None:
        """InputError (exit 2) for settings no run can use."""
        if not self.model:
            raise InputError("--judge needs a model name")
        if self.passes < 1:
            raise InputError("--judge-passes must be >= 1")
        if self.concurrency < 1:
            raise InputError("--judge-concurrency must be >= 1")
        if self.attempts < 1:
            raise InputError("--judge-attempts must be >= 1")
        bad = [p for p in self.protocols if p not in ("blind", "marked")]
        if bad or not self.protocols:
            raise InputError(f"--judge-protocols: choose from blind, marked (got {', '.join(self.protocols) or 'none'})")


def host_class(base_url: Optional[str]) -> str:
    """What kind of server answered, never its key or full address: ``openai`` (no base URL or
    api.openai.com), ``loopback`` (127.0.0.0/8, ::1, localhost), ``private`` (RFC 1918 / link
    local / unique local addresses, ``*.local``, ``*.internal``, a bare host name) or ``public``."""
    import ipaddress

    if not base_url:
        return "openai"
    host = (urlsplit(base_url).hostname or "").lower()
    if host == "api.openai.com":
        return "openai"
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return "loopback"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "private" if ("." not in host or host.endswith((".local", ".internal", ".lan"))) else "public"
    if ip.is_loopback:
        return "loopback"
    return "private" if (ip.is_private or ip.is_link_local) else "public"


@dataclass
class Attempt:
    """One answer of the judge: its raw text (kept for re-aggregation), whether it came from the
    cache, and its verdict (the parsed object, or the rejection reason)."""

    key: str
    content: Optional[str]
    refusal: Optional[str]
    finish_reason: Optional[str]
    cached: bool
    parsed: Optional[Dict[str, Any]] = None
    reason: Optional[str] = None
    error: Optional[str] = None


@dataclass
class Outcome:
    """The end of one question: the valid answer or the failure (reason, error), and every attempt."""

    answer: Optional[Dict[str, Any]] = None
    reason: Optional[str] = None
    error: Optional[str] = None
    attempts: List[Attempt] = field(default_factory=list)


class _Stopped(Exception):
    """Another question hit a service error: stop asking."""


class JudgeClient:
    """Asks questions through the ``openai`` client, with the cache; thread safe. ``requests``
    counts the HTTP requests sent (answers not in the cache), ``cache_hits`` the others."""

    def __init__(self, cfg: JudgeConfig, cache: LLMCache, client: Any = None):
        self.cfg = cfg
        self.cache = cache
        self._client = client
        self._lock = threading.Lock()
        self.requests = 0
        self.cache_hits = 0
        self.stop = threading.Event()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = make_client(self.cfg, "--judge")
            return self._client

    def body(self, q: Question, urls: Sequence[str], hashes: Sequence[str], pass_index: int,
             previous: Optional[str], feedback: Optional[str]) -> Tuple[Dict[str, Any], str]:
        """The request body and its cache key (the key sees the images' hashes, not their bytes)."""
        c = self.cfg
        body: Dict[str, Any] = {"model": c.model, "messages": build_messages(q, urls, previous, feedback),
                                "temperature": float(c.temperature), "max_tokens": int(c.max_tokens),
                                "seed": int(pass_index)}
        if c.json_mode:
            body["response_format"] = {"type": "json_object"}
        summary = dict(body, messages=build_messages(q, [f"sha256:{h}" for h in hashes], previous, feedback))
        return body, cache_key(c.model, summary, c.params())

    def ask(self, q: Question, urls: Sequence[str], hashes: Sequence[str], pass_index: int) -> Outcome:
        """Ask ``q`` (re-asking with the reason up to ``attempts`` answers in all). A service
        failure raises (RunError / InputError) and stops the other threads' questions."""
        out = Outcome()
        previous: Optional[str] = None
        feedback: Optional[str] = None
        for _ in range(max(1, int(self.cfg.attempts))):
            body, key = self.body(q, urls, hashes, pass_index, previous, feedback)
            answer = self.cache.get(key)
            cached = answer is not None
            if answer is None:
                if self.stop.is_set():
                    raise _Stopped()
                try:
                    answer = self._send(body)
                except SampleError as e:  # HTTP 400/422 for this request: this question fails, the run goes on
                    out.reason, out.error = "judge_bad_request", str(e)
                    return out
                self.cache.put(key, self.cfg.model, {"question": q.kind, "pass": pass_index, "key": key}, answer)
            else:
                with self._lock:
                    self.cache_hits += 1
            att = Attempt(key=key, content=answer.get("content"), refusal=answer.get("refusal"),
                          finish_reason=answer.get("finish_reason"), cached=cached)
            out.attempts.append(att)
            try:
                att.parsed = parse_answer(q, att.content, att.refusal, att.finish_reason)
            except JudgeRejected as e:
                att.reason, att.error = e.reason, str(e)
                out.reason, out.error = e.reason, f"after {len(out.attempts)} answer(s): {e}"
                previous, feedback = att.content if att.content is not None else (att.refusal or ""), str(e)
                continue
            out.answer, out.reason, out.error = att.parsed, None, None
            return out
        return out

    def _send(self, body: Dict[str, Any]) -> Dict[str, Any]:
        try:
            completion = create_honouring_retry_after(self.client, body, self.cfg)
        except SampleError:
            raise
        except BaseException:
            self.stop.set()
            raise
        with self._lock:
            self.requests += 1
        return answer_of(completion)
