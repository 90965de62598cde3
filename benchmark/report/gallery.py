"""gallery.html: one row per sample (prompt with its referring and edit parts marked, source,
reference, each run's output with its metrics). Every text is escaped; images are relative links."""
from __future__ import annotations

import html
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import quote

from .markdown import fmt_value

__all__ = ["render_gallery"]

_CSS = """body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px;vertical-align:top}img{max-width:256px;max-height:256px}
.ref{background:#ffe08a}.edit{background:#b7e4c7}.fail{color:#a00}.m{font-size:smaller;color:#444}"""


def _prompt_html(prompt: str, rspan: Any, espan: Any) -> str:
    """The prompt, escaped, with the referring part and the edit part marked."""
    spans = []
    for cls, sp in (("ref", rspan), ("edit", espan)):
        if sp is not None and len(sp) == 2 and 0 <= int(sp[0]) < int(sp[1]) <= len(prompt):
            spans.append((int(sp[0]), int(sp[1]), cls))
    spans.sort()
    if len(spans) == 2 and spans[0][1] > spans[1][0]:
        spans = []  # overlapping: no marks
    out, pos = [], 0
    for a, b, cls in spans:
        out.append(html.escape(prompt[pos:a]))
        out.append(f'<span class="{cls}">{html.escape(prompt[a:b])}</span>')
        pos = b
    out.append(html.escape(prompt[pos:]))
    return "".join(out)


def _src(path: str) -> str:
    return html.escape(quote(path.replace(os.sep, "/")), quote=True)


def _metrics_html(rec: Dict[str, Any], names: Sequence[str]) -> str:
    from ..metrics import METRICS

    parts = []
    for n in names:
        v = rec.get(n)
        if isinstance(v, float) and math.isfinite(v):
            parts.append(f"{html.escape(METRICS[n].title if n in METRICS else n)}={fmt_value(v, METRICS[n].display_scale if n in METRICS else 1.0)}")
    return html.escape(", ".join(parts), quote=False) if parts else ""


def _output_cell(rec: Optional[Dict[str, Any]], run_rel: str, names: Sequence[str]) -> str:
    if rec is None:
        return "<td>—</td>"
    if rec.get("status") == "ok" and rec.get("output"):
        p = _src(os.path.join(run_rel, rec["output"]) if run_rel else rec["output"])
        extra = " (resized)" if rec.get("resized") else ""
        judge = ""
        if rec.get("judge_answers"):
            from .judge import judge_answers_html

            judge = judge_answers_html(rec)
        return (f'<td><a href="{p}"><img loading="lazy" src="{p}" alt="output"></a>'
                f'<div class="m">{_metrics_html(rec, names)}{extra}</div>{judge}</td>')
    return (f'<td class="fail">{html.escape(str(rec.get("status")))}: {html.escape(str(rec.get("reason")))}'
            f'<div class="m">{html.escape(str(rec.get("error") or ""))}</div></td>')


def render_gallery(runs: Sequence[Tuple[str, str, List[Dict[str, Any]]]], thumbs_rel: str, title: str,
                   names: Sequence[str]) -> str:
    """HTML with one row per sample: id, prompt (referring part and edit part marked), source,
    reference, and each run's output with its metrics. ``runs``: (label, relative path of the
    run folder from the page, sample records). Every text is escaped; images are relative links."""
    base = runs[0][2]
    by_run = [{r["sample_id"]: r for r in recs} for _, _, recs in runs]
    head = "".join(f"<th>{html.escape(label)}</th>" for label, _, _ in runs)
    rows = []
    for rec in base:
        sid = rec["sample_id"]
        sid_h = html.escape(sid)
        if rec.get("status") == "skipped" and not rec.get("prompt"):
            continue
        th = thumbs_rel.rstrip("/") + "/" if thumbs_rel else ""
        src = _src(f"{th}gallery/{sid}.source.jpg")
        ref = _src(f"{th}gallery/{sid}.reference.jpg")
        cells = "".join(_output_cell(m.get(sid), rel, names) for m, (_, rel, _) in zip(by_run, runs))
        rows.append(
            f'<tr id="{sid_h}"><td>{sid_h}<div class="m">{html.escape(str(rec.get("edit_type") or ""))} · '
            f'{html.escape(str(rec.get("category") or ""))} · {html.escape(str(rec.get("split") or ""))}</div></td>'
            f'<td>{_prompt_html(str(rec.get("prompt") or ""), rec.get("referring_span"), rec.get("edit_span"))}</td>'
            f'<td><img loading="lazy" src="{src}" alt="source"></td><td><img loading="lazy" src="{ref}" alt="reference"></td>'
            f"{cells}</tr>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n<h1>{html.escape(title)}</h1>\n"
            '<p>Prompt: <span class="ref">referring part</span>, <span class="edit">edit part</span>.</p>\n'
            f"<table><tr><th>sample</th><th>prompt</th><th>source</th><th>reference</th>{head}</tr>\n"
            + "\n".join(rows) + "\n</table></body></html>\n")
