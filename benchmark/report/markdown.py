"""report.md: Markdown tables of one or several runs' results.json (the paper's Table 1 layout,
then the PIE-Bench, MagicBrush and referring families, by edit type, exclusions, config)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from .format import _arrow, _cell, _md, fmt_value, protocol_text

__all__ = ["TABLE_FAMILIES", "fmt_value", "protocol_text", "run_label", "render_markdown", "difficulty_markdown"]

TABLE_FAMILIES = (
    ("paper", "Table 1 (the paper's metrics)"),
    ("pie", "PIE-Bench (background preservation; over pixels outside M_e)"),
    ("magicbrush", "MagicBrush (against the reference image)"),
    ("referring", "Referring (instance level: the referred object vs its same-category distractors; "
                  "Others: every other annotated object of the image)"),
    ("identity", "Identity (reference-based track: the edited object vs the exemplar's object; CLIP-T vs the edit phrase)"),
)


def run_label(results: Dict[str, Any]) -> str:
    """A run's name in tables: its editor spec, cut to 40 characters."""
    e = results.get("editor", {})
    spec = e.get("spec") or e.get("name") or "?"
    return spec if len(spec) <= 40 else spec[:37] + "..."


def render_markdown(runs: Sequence[Dict[str, Any]], labels: Optional[Sequence[str]] = None,
                    title: Optional[str] = None) -> str:
    """Markdown tables in the layout of the paper's Table 1 (one row per run), then the PIE-Bench,
    MagicBrush and referring families, the breakdown by edit type, exclusions and the config."""
    from ..metrics import FAMILIES, METRICS

    labels = list(labels or [run_label(r) for r in runs])
    lines: List[str] = [f"# {_md(title or 'refcoco-edit score: ' + ', '.join(labels))}", ""]
    first = runs[0]
    for lab, r in zip(labels, runs):
        c, d = r["counts"], r["data"]
        lines.append(f"- **{_md(lab)}** (protocol `{_md(protocol_text(r['editor']))}`): data `{_md(d['path'])}` "
                     f"({_md(d['kind'])}{', view ' + _md(d['view']) if d.get('view') else ''}), split `{_md(d['split'] or 'all')}`; {c['samples']} samples: "
                     f"{c['scored']} scored, {c['failed']} failed, {c['skipped']} skipped"
                     + (f", {c['resized']} outputs resized" if c["resized"] else "") + ".")
    hashes = {r["data"]["sample_ids_sha256"] for r in runs}
    if len(hashes) > 1:
        lines += ["", "**Warning: these runs were scored on different sample sets; compare with care.**"]
    lines += ["", "Values: mean over scored samples [bootstrap 95% CI]; — = not computed (see below). "
              "Protocol: what the editor saw beyond (image, prompt, seed); `reference` marks an oracle.", ""]
    for fam, heading in TABLE_FAMILIES:
        cols = [n for n in FAMILIES[fam] if any(n in r["metrics"] or n in r["not_computed"] for r in runs)]
        if not cols:
            continue
        lines += [f"## {heading}", ""]
        head = ["Method", "Protocol"] + [METRICS[n].title + _arrow(METRICS[n].higher_is_better) for n in cols]
        lines.append("| " + " | ".join(_md(h) for h in head) + " |")
        lines.append("|" + "---|" * 2 + "---:|" * len(cols))
        for lab, r in zip(labels, runs):
            cells = [_md(lab), _md(protocol_text(r["editor"]))]
            for n in cols:
                cells.append(_cell(r["metrics"].get(n), METRICS[n].display_scale) if n in r["metrics"] else "—")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if any(r.get("judge") for r in runs):
        from .judge import judge_markdown

        lines += judge_markdown(runs, labels)
    # by edit type
    types = sorted({t for r in runs for m in r["metrics"].values() for t in m.get("by_edit_type", {})})
    shown = [n for n in METRICS if any(n in r["metrics"] for r in runs)]
    if types and shown:
        lines += ["## By edit type", "", "Mean (n) per edit type.", ""]
        lines.append("| Metric | Method | " + " | ".join(_md(t) for t in types) + " |")
        lines.append("|---|---|" + "---:|" * len(types))
        for n in shown:
            for lab, r in zip(labels, runs):
                m = r["metrics"].get(n)
                if m is None:
                    continue
                cells = []
                for t in types:
                    b = m["by_edit_type"].get(t)
                    cells.append(f"{_cell(b, METRICS[n].display_scale, ci=False)} ({b['n']})" if b else "—")
                lines.append(f"| {_md(METRICS[n].title)} | {_md(lab)} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += difficulty_markdown(runs, labels)
    # not computed
    nc = sorted({(n, r["not_computed"][n]["reason"]) for r in runs for n in r["not_computed"]},
                key=lambda x: list(METRICS).index(x[0]) if x[0] in METRICS else 999)
    if nc:
        lines += ["## Not computed", ""]
        lines += [f"- `{_md(n)}` ({_md(METRICS[n].title) if n in METRICS else ''}): {_md(reason)}" for n, reason in nc]
        lines.append("")
    # exclusions
    rows = []
    for lab, r in zip(labels, runs):
        for kind, key in (("failed", "failed_by_reason"), ("skipped", "skipped_by_reason")):
            for reason, cnt in r["counts"][key].items():
                rows.append(f"| {_md(lab)} | {kind} | `{_md(reason)}` | {cnt} |")
    if rows:
        lines += ["## Failed and skipped samples", "", "Left out of every mean.", "",
                  "| Method | kind | reason | count |", "|---|---|---|---:|"] + rows + [""]
    # config
    cfgs = first["config"]
    lines += ["## Metric configuration", "",
              f"- image size: {_md(cfgs['image_size'])}; crop: {_md(cfgs['crop_rule'])}",
              f"- outputs of another size: {'resized (' + _md(cfgs['resize_rule']) + ')' if cfgs['resize_outputs'] else 'failures (wrong_size)'}",
              f"- background: {_md(cfgs['mask_protocol']['background'])}",
              f"- target: {_md(cfgs['mask_protocol']['target'])}; distractors: {_md(cfgs['mask_protocol']['distractors'])}",
              *([f"- other objects: {_md(cfgs['mask_protocol']['others'])}"] if cfgs["mask_protocol"].get("others") else []),
              *([f"- reference object: {_md(cfgs['mask_protocol']['reference_object'])}"]
                if cfgs["mask_protocol"].get("reference_object") else []),
              f"- referring: eps = {cfgs['metric_params'].get('referring_eps')}, "
              f"tau = {cfgs['metric_params'].get('preservation_tau')}; seed {cfgs['seed']}; "
              f"bootstrap {cfgs['bootstrap']['resamples']} resamples, {cfgs['bootstrap']['method']}",
              "- models: " + ", ".join(f"{k} = {_md(v) if v else 'none'}" for k, v in sorted(cfgs["models"].items())),
              *[f"  - {_md(k)}: {_md(d.get('spec'))}" + (f" (revision {_md(d['revision'])})" if d.get("revision") else "")
                + (f", sha256 {_md(str(d['weights_sha256'])[:16])}…" if d.get("weights_sha256") else "")
                + (f", {_md(d.get('device'))}/{_md(d.get('dtype'))}" if d.get("device") else "")
                for k, d in sorted((cfgs.get("model_details") or {}).items())],
              f"- refcoco-edit {_md(first['tool']['version'])}, git {_md(first['tool']['git_revision'] or 'unknown')}"
              + (" (dirty)" if first["tool"]["git_dirty"] else ""),
              ""]
    return "\n".join(lines)


def difficulty_markdown(runs: Sequence[Dict[str, Any]], labels: Sequence[str]) -> List[str]:
    """"By difficulty": per difficulty attribute (``refcoco_edit.difficulty.BUCKETS``), every
    metric's mean [bootstrap 95% CI] (n) per bucket, the judge's included; [] when no run has
    ``by_attribute`` (a reference-based or pre-1.1 run)."""
    from refcoco_edit.difficulty import BUCKETS, label_key

    from ..metrics import METRICS

    def entries(r: Dict[str, Any]) -> List[Any]:
        judge = (r.get("judge") or {}).get("metrics", {})
        out = [(n, METRICS[n].title, METRICS[n].display_scale, r["metrics"][n]) for n in METRICS if n in r["metrics"]]
        return out + [(n, m.get("title", n), 1.0, m) for n, m in judge.items()]

    attrs = [a for a in BUCKETS if any(e[3].get("by_attribute", {}).get(a) for r in runs for e in entries(r))]
    if not attrs:
        return []
    lines = ["## By difficulty", "",
             "Mean [bootstrap 95% CI] (n) per bucket of each difficulty attribute (refcoco_edit.difficulty; "
             "the `attr_*` columns of samples.parquet). A bucket with few samples has a wide CI: read the n.", ""]
    for a in attrs:
        labs = sorted({lab for r in runs for e in entries(r) for lab in e[3].get("by_attribute", {}).get(a, {})},
                      key=label_key)
        lines += [f"### {_md(a[len('attr_'):])}: {_md(BUCKETS[a])}", ""]
        lines.append("| Metric | Method | " + " | ".join(_md(x) for x in labs) + " |")
        lines.append("|---|---|" + "---:|" * len(labs))
        for lab, r in zip(labels, runs):
            for n, title, scale, m in entries(r):
                cells = m.get("by_attribute", {}).get(a)
                if not cells:
                    continue
                row = [f"{_cell(cells[x], scale)} ({cells[x]['n']})" if x in cells else "—" for x in labs]
                lines.append(f"| {_md(title)} | {_md(lab)} | " + " | ".join(row) + " |")
        lines.append("")
    return lines
