"""Bulk mode of the rephrasing stage (``--llm-batch``): :class:`BatchRunner` sends the requests
the cache lacks through the Batch API (JSONL, ``custom_id`` = cache key), records each batch id
before polling, and merges the answers into the same cache, idempotently: a killed bulk run
picks its batch up again.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Protocol, Tuple

from refcoco_edit.errors import RunError

from .llm_client import LLMCache, service_error
from .rephrase_rules import RephraseConfig


class BatchSource(Protocol):
    """What :class:`BatchRunner` needs of its rephraser (:class:`~refcoco_edit.pipelines.rephrase.LLMRephraser`)."""

    cfg: RephraseConfig
    cache: LLMCache

    @property
    def client(self) -> Any: ...

    def pending_requests(self, items: List[Dict[str, Any]]) -> List[Tuple[str, Dict[str, Any]]]: ...


@dataclass
class BatchRunner:
    """Sends the requests the cache lacks through the Batch API, round after round (a rejected
    answer needs a new request), and merges the answers into the cache.

    State (``WORKDIR/llm/batches.json``) records each submitted batch before it is polled, so a
    killed run polls the same batch again instead of paying twice.
    """

    rephraser: BatchSource
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
        """Finish any batch a killed run left, then submit rounds until every item is answered
        (at most ``attempts`` rounds); counts of rounds, batches and requests submitted."""
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
