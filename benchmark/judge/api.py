"""The judge step of a score run, and ``refcoco-edit judge RESULTS`` (judge the cached outputs
of a finished run without editing again).

``open_judge(settings, out)`` checks the settings and builds the client (no request yet; a
missing key is exit 2 before any editing); ``judge_records`` asks, writes
``judge/answers.parquet`` (every raw answer) and returns what results.json, samples.parquet and
the reports take; ``judge_existing`` does it all for a finished results folder.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from refcoco_edit.errors import InputError
from refcoco_edit.workspace import atomic_write_bytes, atomic_write_table

from .client import JudgeClient, JudgeConfig
from .run import ANSWERS_FILE, answers_table, ask_all
from .summary import answers_json, judge_section, sample_values

__all__ = ["JudgeResult", "judge_config", "open_judge", "judge_records", "attach", "judge_existing",
           "CACHE_FILE"]

CACHE_FILE = "judge/cache.sqlite"


@dataclass
class JudgeResult:
    """What the judge step gives the reports: results.json's ``judge`` section, per-sample
    values and answers (by sample_id), and timing (requests sent, answers from the cache)."""

    section: Dict[str, Any]
    values: Dict[str, Dict[str, float]]
    answers: Dict[str, str]
    timing: Dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> List[str]:
        return list(self.section["metrics"])


def judge_config(s: Any) -> JudgeConfig:
    """The :class:`JudgeConfig` of a ScoreConfig (or the ``judge`` command's settings)."""
    return JudgeConfig(model=str(s.judge or ""), base_url=s.judge_base_url, api_key_env=s.judge_api_key_env,
                       passes=int(s.judge_passes), protocols=tuple(s.judge_protocols or ()),
                       temperature=float(s.judge_temperature), max_tokens=int(s.judge_max_tokens),
                       json_mode=bool(s.judge_json_mode), timeout=float(s.judge_timeout),
                       max_retries=int(s.judge_max_retries), max_wait=float(s.judge_max_wait),
                       concurrency=int(s.judge_concurrency))


def open_judge(s: Any, out: Path, client: Any = None) -> JudgeClient:
    """Check the judge settings and build its client and cache (``--judge-cache`` or
    ``RESULTS/judge/cache.sqlite``). InputError (exit 2) for unusable settings or no key."""
    from refcoco_edit.pipelines.llm_client import LLMCache

    cfg = judge_config(s)
    cfg.check()
    jc = JudgeClient(cfg, LLMCache(Path(s.judge_cache) if s.judge_cache else Path(out) / CACHE_FILE), client)
    _ = jc.client  # the openai package and the key, now (exit 2), not after the editing
    return jc


def judge_records(jc: JudgeClient, samples: Sequence[Any], records: Sequence[Dict[str, Any]], out: Path, seed: int,
                  resamples: int, log: Callable[[str], None] = print, progress: Optional[bool] = None) -> JudgeResult:
    """Judge the scored records (their cached outputs in ``out``); write ``judge/answers.parquet``."""
    bar = _bar(progress, sum(1 for r in records if r.get("status") == "ok"))
    try:
        run = ask_all(jc, samples, records, Path(out), progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    by_id = {r["sample_id"]: r for r in records}
    values = {sid: sample_values(j, jc.cfg, (by_id[sid].get("metrics") or {}).get("referring_accuracy"))
              for sid, j in run.judged.items()}
    answers = {sid: answers_json(j) for sid, j in run.judged.items()}
    section = judge_section(jc.cfg, run, records, values, seed, resamples)
    atomic_write_table(Path(out) / ANSWERS_FILE, answers_table(run))
    timing = {"requests": run.requests, "cache_hits": run.cache_hits, "seconds": round(run.seconds, 4),
              "requests_per_s": round(run.requests / run.seconds, 3) if run.seconds > 0 and run.requests else None}
    c = section["counts"]
    log(f"judge {jc.cfg.model}: {c['samples']} samples, {c['valid']} of {c['answers']} answers valid "
        f"({run.requests} requests, {run.cache_hits} from the cache)")
    return JudgeResult(section=section, values=values, answers=answers, timing=timing)


def attach(records: Sequence[Dict[str, Any]], res: JudgeResult) -> None:
    """Give each record its judge values and answers (samples.parquet's judge columns)."""
    for r in records:
        sid = r["sample_id"]
        r["judge_values"] = res.values.get(sid, {})
        r["judge_answers"] = res.answers.get(sid)


def _bar(progress: Optional[bool], total: int) -> Any:
    import sys

    if not (progress if progress is not None else sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="judge", unit="sample")


def judge_existing(run_dir: Path, s: Any, client: Any = None, log: Callable[[str], None] = print) -> JudgeResult:
    """``refcoco-edit judge RESULTS``: judge a finished run's cached outputs (nothing is edited),
    then rewrite its results.json (``judge`` section), samples.parquet (judge columns),
    report.md and gallery.html. The dataset is read again from results.json's ``data`` and must
    hold the same samples (``sample_ids_sha256``)."""
    from ..data import load_dataset
    from ..report import render_gallery, render_markdown, run_label
    from ..report.results import dumps, load_run, read_samples, samples_table
    from ..report.schema import schema_errors

    run_dir = Path(run_dir)
    results = load_run(run_dir)
    d = results["data"]
    ds = load_dataset(d["path"], split=d["split"], status=d["status"], limit=d["limit"])
    if ds.sample_ids_sha256() != d["sample_ids_sha256"]:
        raise InputError(f"{run_dir}: the data at {d['path']} no longer holds the samples this run scored "
                         "(sample_ids_sha256 differs); score it again instead")
    jc = open_judge(s, run_dir, client)
    names = list(results["metrics"])
    rows = read_samples(run_dir)
    records = [{**{k: v for k, v in r.items() if k not in names and not k.startswith(("vie_", "judge_"))},
                "metrics": {n: r.get(n, math.nan) for n in names}} for r in rows]
    res = judge_records(jc, ds.samples, records, run_dir, int(results["config"]["seed"]),
                        int(results["config"]["bootstrap"]["resamples"]), log, getattr(s, "progress", None))
    attach(records, res)
    results["judge"] = res.section
    errs = schema_errors(json.loads(dumps(results)))
    if errs:
        raise RuntimeError("results do not follow the results schema: " + "; ".join(errs[:10]))
    atomic_write_table(run_dir / "samples.parquet", samples_table(records, names, (), judge_names=res.names))
    label = run_label(results)
    atomic_write_bytes(run_dir / "report.md", render_markdown([results], [label]).encode("utf-8"))
    if (run_dir / "gallery.html").exists():
        page = render_gallery([(label, "", read_samples(run_dir))], "", f"refcoco-edit gallery: {label}", names)
        atomic_write_bytes(run_dir / "gallery.html", page.encode("utf-8"))
    atomic_write_bytes(run_dir / "results.json", dumps(results))
    timing_path = run_dir / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {}
    timing["judge"] = res.timing
    atomic_write_bytes(timing_path, (json.dumps(timing, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return res
