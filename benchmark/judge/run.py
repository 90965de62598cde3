"""Asking the judge about every scored sample of a run (:func:`ask_all`), and the raw answers'
side file (``judge/answers.parquet``: every answer's text, kept so anyone can re-aggregate).

Per sample and pass, the questions of :func:`questions_of` (``sc``, ``pq``, one referring
question per protocol and, on the reference-based track, ``same_object``). Samples are prepared in chunks (their images encoded once, as data URLs
with their hashes); the questions of a chunk run on ``concurrency`` threads. Each answer is
committed to the cache as soon as it arrives, so a killed run loses only the requests in flight.
"""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from refcoco_edit.errors import SampleError

from ..data import BenchSample, decode_image, decode_sample
from .client import JudgeClient, JudgeConfig, Outcome, _Stopped
from .images import data_url, marked_source, png_url
from .protocol import REFERENCE_QUESTIONS, Question

__all__ = ["SampleJudgement", "JudgeRun", "questions_of", "ask_all", "answers_table", "ANSWERS_FILE"]

ANSWERS_FILE = "judge/answers.parquet"


@dataclass
class SampleJudgement:
    """The judge's outcomes for one sample: ``outcomes[(question, pass)]``; ``not_asked``:
    question -> why it was not asked (not applicable, e.g. ``ref_marked`` without M)."""

    sample_id: str
    edit_type: str
    n_distractors: int
    outcomes: Dict[Tuple[str, int], Outcome] = field(default_factory=dict)
    not_asked: Dict[str, str] = field(default_factory=dict)


@dataclass
class JudgeRun:
    """Everything one judging pass produced, by sample_id, and what it cost."""

    cfg: JudgeConfig
    judged: Dict[str, SampleJudgement]
    questions: List[str] = field(default_factory=list)
    """the questions asked per sample and pass (``questions_of``)"""
    requests: int = 0
    cache_hits: int = 0
    seconds: float = 0.0


@dataclass
class _Prepared:
    images: Dict[str, Tuple[str, str]] = field(default_factory=dict)  # name -> (data URL, sha256)
    error: Optional[Tuple[str, str]] = None


def questions_of(cfg: JudgeConfig, reference_based: bool = False) -> List[str]:
    """The questions asked per sample and pass, in order; ``reference_based``: the data are the
    reference-based track's (samples with an exemplar), which adds ``same_object``."""
    return ["sc", "pq"] + [f"ref_{p}" for p in cfg.protocols] + (list(REFERENCE_QUESTIONS) if reference_based else [])


_IMAGES = {"sc": ("source", "output"), "pq": ("output",), "ref_blind": ("source", "output"),
           "ref_marked": ("marked", "output"), "same_object": ("exemplar_marked", "output_marked")}


def _prepare(s: BenchSample, output: Path, marked: bool, same_object: bool = False) -> _Prepared:
    p = _Prepared()
    try:
        out_bytes = output.read_bytes()
    except OSError as e:
        p.error = ("judge_no_output", f"cannot read {output.name}: {e.strerror or e}")
        return p
    try:
        d = decode_sample(s, reference=False)
    except SampleError as e:  # the score pass decoded it already: only a changed dataset gets here
        p.error = ("judge_no_output", f"the sample cannot be decoded: {e}")
        return p
    p.images["source"] = png_url(d.source)
    p.images["output"] = data_url(out_bytes)
    if marked and d.target_mask is not None and d.target_mask.any():
        p.images["marked"] = data_url(marked_source(d.source, d.target_mask))
    if same_object and d.exemplar is not None and d.exemplar_mask is not None:
        try:
            out = decode_image(out_bytes, "cached output")
        except SampleError as e:
            p.error = ("judge_no_output", str(e))
            return p
        if out.shape == d.source.shape:  # the edited region M_e outlined on the output, the object on the exemplar
            p.images["exemplar_marked"] = data_url(marked_source(d.exemplar, d.exemplar_mask))
            p.images["output_marked"] = data_url(marked_source(out, d.edit_mask))
    return p


def _question(s: BenchSample, kind: str) -> Question:
    return Question(kind=kind, prompt=s.prompt, referring_phrase=s.referring_phrase, edit_phrase=s.edit_phrase,
                    category=s.category, n_distractors=len(s.distractor_masks))


def ask_all(jc: JudgeClient, samples: Sequence[BenchSample], records: Sequence[Dict[str, Any]], out: Path,
            chunk: int = 16, progress: Optional[Callable[[int], None]] = None) -> JudgeRun:
    """Ask every question of every scored sample (records with status ok and an output). Raises
    the first service error (RunError / InputError) after the requests in flight have ended."""
    t0 = time.perf_counter()
    cfg = jc.cfg
    by_id = {s.sample_id: s for s in samples}
    todo = [r for r in records if r.get("status") == "ok" and r.get("output") and r["sample_id"] in by_id]
    reference_based = any(s.exemplar_bytes is not None for s in samples)
    kinds = questions_of(cfg, reference_based)
    run = JudgeRun(cfg=cfg, judged={}, questions=kinds)
    with ThreadPoolExecutor(max_workers=int(cfg.concurrency)) as pool:
        for i in range(0, len(todo), chunk):
            part = todo[i:i + chunk]
            prepared = list(pool.map(lambda r: _prepare(by_id[r["sample_id"]], out / r["output"],
                                                        "ref_marked" in kinds, "same_object" in kinds), part))
            jobs = []
            for r, prep in zip(part, prepared):
                s = by_id[r["sample_id"]]
                j = SampleJudgement(sample_id=s.sample_id, edit_type=s.edit_type, n_distractors=len(s.distractor_masks))
                run.judged[s.sample_id] = j
                for kind in kinds:
                    for p in range(int(cfg.passes)):
                        if prep.error is not None:
                            j.outcomes[(kind, p)] = Outcome(reason=prep.error[0], error=prep.error[1])
                            continue
                        names = _IMAGES[kind]
                        if any(n not in prep.images for n in names):
                            j.not_asked[kind] = ("the sample has no exemplar (or its output is of another size)"
                                                 if kind == "same_object" else
                                                 "the sample has no referred-object mask M to outline")
                            continue
                        imgs = [prep.images[n] for n in names]
                        fut = pool.submit(jc.ask, _question(s, kind), [u for u, _ in imgs], [h for _, h in imgs], p)
                        jobs.append(((kind, p), j, fut))
            wait([f for _, _, f in jobs])
            errors = [f.exception() for _, _, f in jobs if f.exception() is not None]
            real = [e for e in errors if not isinstance(e, _Stopped)]
            if real:
                raise real[0]
            for key, j, fut in jobs:
                j.outcomes[key] = fut.result()
            if progress is not None:
                progress(len(part))
    run.requests, run.cache_hits = jc.requests, jc.cache_hits
    run.seconds = time.perf_counter() - t0
    return run


def answers_table(run: JudgeRun) -> Any:
    """``judge/answers.parquet``: one row per answer received (sample_id, question, pass, attempt,
    cache_key, content, refusal, finish_reason, valid, reason, error, answer as JSON), and one
    per question that got no answer at all (attempt -1: output missing, HTTP 400)."""
    import pyarrow as pa

    rows: List[Dict[str, Any]] = []
    for sid in sorted(run.judged):
        j = run.judged[sid]
        for (kind, p), o in sorted(j.outcomes.items()):
            if not o.attempts:
                rows.append({"sample_id": sid, "question": kind, "pass": p, "attempt": -1, "cache_key": None,
                             "content": None, "refusal": None, "finish_reason": None, "valid": False,
                             "reason": o.reason, "error": o.error, "answer": None})
            for a_i, a in enumerate(o.attempts):
                rows.append({"sample_id": sid, "question": kind, "pass": p, "attempt": a_i, "cache_key": a.key,
                             "content": a.content, "refusal": a.refusal, "finish_reason": a.finish_reason,
                             "valid": a.parsed is not None, "reason": a.reason, "error": a.error,
                             "answer": json.dumps(a.parsed, sort_keys=True) if a.parsed is not None else None})
    schema = pa.schema([("sample_id", pa.string()), ("question", pa.string()), ("pass", pa.int32()),
                        ("attempt", pa.int32()), ("cache_key", pa.string()), ("content", pa.string()),
                        ("refusal", pa.string()), ("finish_reason", pa.string()), ("valid", pa.bool_()),
                        ("reason", pa.string()), ("error", pa.string()), ("answer", pa.string())])
    return pa.Table.from_pylist(rows, schema=schema)
