"""A VLM judge for `refcoco-edit score`: VIEScore-compatible SC / PQ / O and our referring
questions (was the referred object edited? were its same-category look-alikes left alone?),
asked through any OpenAI-compatible server with the real ``openai`` client.

Modules: ``protocol`` (questions, prompts, answer schemas, validation; versioned), ``images``
(data URLs, the marked source), ``client`` (settings, cache, one question with its re-ask),
``run`` (every question of a run, the raw answers' side file), ``summary`` (per-sample values,
means with CIs, agreement with the pixel metrics, results.json's ``judge`` section), ``api``
(the step of ``score --judge`` and ``refcoco-edit judge RESULTS``).
"""
from __future__ import annotations

from refcoco_edit.reasons import reasons

from .protocol import JUDGE_PROMPT_VERSION, PROTOCOLS, QUESTIONS

__all__ = ["JUDGE_REASONS", "JUDGE_PROMPT_VERSION", "PROTOCOLS", "QUESTIONS"]

# why a judge question has no usable answer (the one table of every code is refcoco_edit.reasons.REASONS)
JUDGE_REASONS = reasons("judge")
