"""report.md's VLM judge part and the gallery's judge answers (runs with a results.json
``judge`` section only; a run without one renders exactly as before). Rendering only: the judge
itself is the ``refcoco_edit.benchmark.judge`` package."""
from __future__ import annotations

import html
import json
from typing import Any, Dict, List, Optional, Sequence

from .format import _cell, _md, protocol_text

__all__ = ["judge_markdown", "judge_answers_html"]

_PIXEL = {"referring_accuracy": "Ref-Acc (pixel)", "distractor_preservation": "Distr-Pres (pixel)"}


def _columns(runs: Sequence[Dict[str, Any]]) -> List[str]:
    """Judge and pixel columns in table order: VIEScore, then per protocol the referring numbers
    beside the pixel ones."""
    protos: List[str] = []
    for r in runs:
        for p in (r.get("judge") or {}).get("params", {}).get("protocols", []):
            if p not in protos:
                protos.append(p)
    cols = ["vie_sc", "vie_pq", "vie_o", "referring_accuracy"] + [f"judge_ref_acc_{p}" for p in protos]
    cols += ["distractor_preservation"] + [f"judge_distr_pres_{p}" for p in protos]
    cols += [f"judge_agree_{p}" for p in protos]
    if any("judge_same_object" in (r.get("judge") or {}).get("metrics", {}) for r in runs):
        cols += ["judge_same_object", "judge_identity"]  # the reference-based track's question
    return cols


def _title(runs: Sequence[Dict[str, Any]], name: str) -> str:
    if name in _PIXEL:
        return _PIXEL[name] + " ↑"
    for r in runs:
        m = (r.get("judge") or {}).get("metrics", {}).get(name)
        if m:
            return m["title"] + (" ↑" if m["higher_is_better"] is True else (" ↓" if m["higher_is_better"] is False else ""))
    return name


def _metric(r: Dict[str, Any], name: str) -> Optional[Dict[str, Any]]:
    if name in _PIXEL:
        return r["metrics"].get(name)
    return (r.get("judge") or {}).get("metrics", {}).get(name)


def judge_markdown(runs: Sequence[Dict[str, Any]], labels: Sequence[str]) -> List[str]:
    """The lines of report.md's judge section ([] when no run was judged)."""
    judged = [(lab, r) for lab, r in zip(labels, runs) if r.get("judge")]
    if not judged:
        return []
    rs = [r for _, r in judged]
    cols = _columns(rs)
    lines = ["## VLM judge (VIEScore-compatible, plus the referring questions)", "",
             "VIE-SC / VIE-PQ / VIE-O on VIEScore's 0-10 scale, as GEdit-Bench's SC/PQ/O (O = sqrt(min(SC) · "
             "min(PQ)) per pass, averaged); J-* are the judge's answers to our referring questions, beside the "
             "pixel-based Ref-Acc / Distr-Pres; J-Agree = the judge's verdict equals the pixel one. "
             "Mean [bootstrap 95% CI]; judge failures are left out of the means (see below), never scored 0.", ""]
    lines.append("| Method | Judge | " + " | ".join(_md(_title(rs, c)) for c in cols) + " |")
    lines.append("|---|---|" + "---:|" * len(cols))
    for lab, r in judged:
        cells = [_md(lab), _md(r["judge"]["model"])] + [_cell(_metric(r, c), 1.0) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    types = sorted({t for r in rs for m in r["judge"]["metrics"].values() for t in m.get("by_edit_type", {})})
    if types:
        lines += ["### Judge by edit type", "", "Mean [bootstrap 95% CI] (n) per edit type.", "",
                  "| Metric | Method | " + " | ".join(_md(t) for t in types) + " |", "|---|---|" + "---:|" * len(types)]
        for c in cols:
            for lab, r in judged:
                m = _metric(r, c)
                if not m:
                    continue
                cells = [f"{_cell(m['by_edit_type'].get(t), 1.0)} ({m['by_edit_type'][t]['n']})"
                         if m["by_edit_type"].get(t) else "—" for t in types]
                lines.append(f"| {_md(_title(rs, c))} | {_md(lab)} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["### Judge and pixel metric agreement", "",
              "| Method | Protocol | n | agreement | Cohen's kappa | judge 1 / pixel 1 | judge 1 / pixel 0 | "
              "judge 0 / pixel 1 | judge 0 / pixel 0 | Distr-Pres mean abs. diff |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    f = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    for lab, r in judged:
        for proto, a in r["judge"]["agreement"].items():
            ra, dp = a["referring_accuracy"], a["distractor_preservation"]
            c = ra["confusion"]
            lines.append(f"| {_md(lab)} | {_md(proto)} | {ra['n']} | {f(ra['agreement'])} | {f(ra['cohen_kappa'])} | "
                         f"{c['judge_1_pixel_1']} | {c['judge_1_pixel_0']} | {c['judge_0_pixel_1']} | "
                         f"{c['judge_0_pixel_0']} | {f(dp['mean_abs_diff'])} |")
    lines.append("")
    spread = [(lab, r) for lab, r in judged if r["judge"]["params"]["passes"] > 1]
    if spread:
        lines += ["### Judge self-consistency (--judge-passes)", "",
                  "| Method | passes | VIE-SC spread | VIE-PQ spread | VIE-O spread | referring verdict unanimous |",
                  "|---|---:|---:|---:|---:|---|"]
        for lab, r in spread:
            j = r["judge"]
            un = ", ".join(f"{p}: {f(v['unanimous'])}" for p, v in j["pass_agreement"].items())
            lines.append(f"| {_md(lab)} | {j['params']['passes']} | " + " | ".join(
                _cell(j["metrics"].get(n), 1.0) for n in ("vie_sc_spread", "vie_pq_spread", "vie_o_spread"))
                + f" | {_md(un)} |")
        lines.append("")
    fails = [f"| {_md(lab)} | `{_md(reason)}` | {cnt} |" for lab, r in judged
             for reason, cnt in r["judge"]["counts"]["failed_by_reason"].items()]
    lines += ["### Judge failures", ""]
    if fails:
        lines += ["Questions without a valid answer after one re-ask (listed per sample in results.json).", "",
                  "| Method | reason | count |", "|---|---|---:|"] + fails
    else:
        lines.append("None: every question got a valid answer.")
    lines.append("")
    lines += ["### Judge configuration", ""]
    for lab, r in judged:
        j = r["judge"]
        p = j["params"]
        lines.append(f"- **{_md(lab)}** (protocol `{_md(protocol_text(r['editor']))}`): judge `{_md(j['model'])}` "
                     f"({_md(j['base_url_class'])} server), prompts `{_md(j['prompt_version'])}`, temperature "
                     f"{p['temperature']}, max_tokens {p['max_tokens']}, passes {p['passes']}, protocols "
                     f"{_md(', '.join(p['protocols']))}, json_mode {p['json_mode']}; {j['counts']['valid']} of "
                     f"{j['counts']['answers']} answers valid")
    lines += [f"- {_md(k)}: {_md(v)}" for k, v in sorted(rs[0]["judge"]["definitions"].items())]
    lines.append("")
    return lines


def judge_answers_html(rec: Dict[str, Any]) -> str:
    """A gallery cell's judge answers (escaped): one line per question, reasons on hover."""
    raw = rec.get("judge_answers")
    if not raw:
        return ""
    try:
        ans = json.loads(raw)
    except ValueError:
        return ""
    parts = []
    for kind in ("sc", "pq", "ref_blind", "ref_marked"):
        v = ans.get(kind)
        if v is None:
            continue
        if isinstance(v, dict):
            parts.append(f"{kind}: not asked")
            continue
        shown = []
        for a in v:
            if "failed" in a:
                shown.append(f'<span class="fail" title="{html.escape(str(a.get("error") or ""))}">failed: '
                             f'{html.escape(str(a["failed"]))}</span>')
            elif "score" in a:
                shown.append(f'<span title="{html.escape(str(a.get("reasoning") or ""))}">'
                             f'{html.escape(str(a["score"]))}</span>')
            else:
                txt = (f"target {'edited' if a.get('target_edited') else 'not edited'}, "
                       f"{a.get('distractors_changed')} distractor(s) changed"
                       + (", other changes" if a.get("other_changed") else ""))
                shown.append(f'<span title="{html.escape(str(a.get("reasoning") or ""))}">{html.escape(txt)}</span>')
        parts.append(f"{html.escape(kind)}: " + " | ".join(shown))
    return '<div class="m judge">judge: ' + "<br>".join(parts) + "</div>"
