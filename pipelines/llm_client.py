"""The LLM connection of the rephrasing stage: the crash-safe answer cache (:class:`LLMCache`,
:func:`cache_key`), the ``openai`` client (:func:`make_client`) and how its exceptions map to
the run's reaction (:func:`service_error`). ``openai`` is imported only when a client is needed.

Cache: ``WORKDIR/llm/cache.sqlite``; key = sha256 of (model, request body, parameters); one
committed row per answer, so entries survive a kill.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional, Union

from refcoco_edit.errors import InputError, RunError

from .rephrase_rules import RephraseRejected

# ----------------------------------------------------------------------------------------------
# the answer cache
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
    """The cache key of a request: sha256 of its model, body and :meth:`RephraseConfig.params`."""
    blob = json.dumps({"model": model, "request": request, "params": params}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------------------
# the client and its errors
# ----------------------------------------------------------------------------------------------

def make_client(cfg: Any, flag: str = "--llm-model") -> Any:
    """The openai client (its own retries and timeouts; Retry-After honoured). ``cfg``: a
    :class:`RephraseConfig` or anything with its model/base_url/api_key_env/timeout/max_retries;
    ``flag``: the option named in error messages (``--judge`` for the score judge)."""
    try:
        import openai
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise InputError(f"{flag} needs the openai package: pip install 'refcoco-edit[llm]'") from e
    key = os.environ.get(cfg.api_key_env) or ("EMPTY" if cfg.base_url else None)
    if key is None:
        raise InputError(f"{flag} needs an API key in ${cfg.api_key_env} (or a {flag}-base-url server)")
    return openai.OpenAI(api_key=key, base_url=cfg.base_url, timeout=cfg.timeout, max_retries=cfg.max_retries)


def server_name(cfg: Any) -> str:
    """The server as error messages name it."""
    return cfg.base_url or "the OpenAI API"


def service_error(e: Exception, cfg: Any) -> Exception:
    """Map an openai exception to how the run reacts: InputError (exit 2), RunError (exit 1), or
    RephraseRejected (this sample only)."""
    import openai

    where = server_name(cfg)
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


def retry_after(e: Any) -> Optional[float]:
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


def create_honouring_retry_after(client: Any, body: Dict[str, Any], cfg: Any) -> Any:
    """``client.chat.completions.create(**body)``. The client retries 429/5xx itself and follows
    a Retry-After of up to 60 s; a longer one (or retries used up) makes it give up, so a 429
    with a Retry-After is waited out here (up to ``cfg.max_wait`` seconds in all) and asked
    again, up to ``max(1, cfg.max_retries)`` times (so a 429 with Retry-After is waited out even
    with ``max_retries=0``, which only turns off the client's own retries). Any other failure is mapped by
    :func:`service_error`. ``cfg``: anything with the fields of :class:`RephraseConfig` that
    :func:`service_error` reads (the rephrasing stage and the score judge share this)."""
    import openai

    waited = 0.0
    for _ in range(1 + max(1, int(cfg.max_retries))):
        try:
            return client.chat.completions.create(**body)
        except openai.RateLimitError as e:
            delay = retry_after(e)
            if delay is None or waited + delay > cfg.max_wait:
                raise service_error(e, cfg) from None
            time.sleep(delay)
            waited += delay
        except Exception as e:  # noqa: BLE001 - mapped to a precise reaction right here
            raise service_error(e, cfg) from None
    raise RunError(f"the LLM server at {server_name(cfg)} kept answering 429 (rate limit); re-run later to resume")


def answer_of(completion: Any) -> Dict[str, Any]:
    """What the cache keeps of a chat completion: its text, refusal and finish reason."""
    msg = completion.choices[0].message
    return {"content": msg.content, "refusal": getattr(msg, "refusal", None),
            "finish_reason": completion.choices[0].finish_reason}

