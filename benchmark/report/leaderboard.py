"""The leaderboard of ``refcoco-edit compare`` and its pages.

``build_leaderboard``: the runs ranked on one metric (mean over the samples every run scored,
with a bootstrap 95% CI), the pairwise Wilcoxon tests on that metric Holm-adjusted over the
pairs, the compact letter display of the groups that are not significantly different, and the
same metric per bucket of ``edit_type`` and of every ``attr_*`` column (n, mean and CI per run,
descriptive: no test per bucket).

``render_markdown`` / ``render_html`` draw leaderboard.md and leaderboard.html from compare.json's
content alone (the same blocks in both; every text escaped; the HTML page has no external
asset), ``summary_lines`` the short table ``refcoco-edit compare`` prints.
"""
from __future__ import annotations

import html
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from refcoco_edit.seeds import derive_seed

from .format import _md, fmt_value
from .stats import compact_letters, holm, mean_bootstrap_ci

__all__ = ["build_leaderboard", "render_markdown", "render_html", "summary_lines", "bucket_order"]

_MISSING = "(missing)"


def bucket_order(value: str) -> Tuple[int, float, str]:
    """A sort key of bucket labels (``refcoco_edit.difficulty.label_key``: numbers by value, then
    the known words in their order, then other words), the missing bucket last."""
    from refcoco_edit.difficulty import label_key

    return label_key(None if value == _MISSING else value)


def _mean_ci(x: np.ndarray, resamples: int, seed: int) -> Tuple[int, Optional[float], Optional[List[float]]]:
    x = x[np.isfinite(x)]
    if x.shape[0] == 0:
        return 0, None, None
    return int(x.shape[0]), float(x.mean()), mean_bootstrap_ci(x, resamples, seed)


def _ranks(labels: Sequence[str], means: Sequence[Optional[float]], hib: bool) -> Tuple[List[str], Dict[str, Optional[int]]]:
    """(labels best first, {label: rank}): competition ranking (equal means share a rank); a run
    without a value comes last, unranked."""
    def key(k: int) -> Tuple[int, float, str]:
        m = means[k]
        return (1, 0.0, labels[k]) if m is None else (0, -m if hib else m, labels[k])

    order = sorted(range(len(labels)), key=key)
    ranks: Dict[str, Optional[int]] = {}
    prev: Optional[float] = None
    rank = 0
    for pos, k in enumerate(order):
        if means[k] is None:
            ranks[labels[k]] = None
            continue
        if prev is None or means[k] != prev:
            rank = pos + 1
            prev = means[k]
        ranks[labels[k]] = rank
    return [labels[k] for k in order], ranks


def build_leaderboard(runs: Sequence[Any], joined: Sequence[str], pairs: Sequence[Dict[str, Any]], metric: str,
                      resamples: int, seed: int, alpha: float, seeds: Dict[str, int],
                      flags: List[Dict[str, Any]]) -> Dict[str, Any]:
    """compare.json's ``leaderboard`` (see the module doc); adds the bootstrap seeds it uses to
    ``seeds`` and a flag to ``flags`` when the runs disagree on a sample's bucket."""
    info = runs[0].metrics[metric]
    hib = bool(info.higher_is_better)
    labels = [r.label for r in runs]
    rows: Dict[str, Dict[str, Any]] = {}
    for r in runs:
        s = derive_seed(seed, "compare", "mean", r.label, metric)
        seeds[f"mean|{r.label}|{metric}"] = s
        n, mean, ci = _mean_ci(r.values(metric, joined), resamples, s)
        rows[r.label] = {"label": r.label, "protocol": None, "n": n, "mean": mean, "ci95": ci, "bootstrap_seed": s}
    order, ranks = _ranks(labels, [rows[lab]["mean"] for lab in labels], hib)
    # the pairwise tests on this metric, Holm over the pairs
    tests = []
    for p in pairs:
        st = p["metrics"].get(metric)
        tests.append({"a": p["a"], "b": p["b"], "n": st["n"] if st else 0, "diff": st["diff"] if st else None,
                      "ci95": st["ci95"] if st else None, "p": st["p"] if st else None})
    for t, adj in zip(tests, holm([t["p"] for t in tests])):
        t["p_holm"] = adj
        t["significant"] = adj is not None and adj < alpha
    different = {frozenset((t["a"], t["b"])) for t in tests if t["significant"]}
    letters = compact_letters(order, different)
    board_rows = []
    for lab in order:
        row = rows[lab]
        row["rank"] = ranks[lab]
        row["group"] = letters[lab]
        row["not_different_from"] = [o for o in order if o != lab and frozenset((lab, o)) not in different]
        board_rows.append(row)
    for r in runs:
        rows[r.label]["protocol"] = _protocol(r)
    # per bucket
    attrs = ["edit_type"] + list(dict.fromkeys(c for r in runs for c in r.columns if c.startswith("attr_")))
    missing = {a: [r.label for r in runs if a not in r.columns] for a in attrs}
    by_attr = []
    for a in attrs:
        if missing[a]:
            continue
        values = [[v if v is not None else _MISSING for v in r.strings(a, joined)] for r in runs]
        if any(v != values[0] for v in values[1:]):
            flags.append({"kind": "attribute_values", "severity": "warn",
                          "message": f"the runs disagree on {a} for some samples (different data?); buckets follow "
                                     f"{runs[0].label}", "values": {lab: None for lab in labels}})
        buckets = sorted(set(values[0]), key=bucket_order)
        out_buckets = []
        for b in buckets:
            ids = [s for s, v in zip(joined, values[0]) if v == b]
            cells = []
            for r in runs:
                s = derive_seed(seed, "compare", "bucket", a, b, r.label, metric)
                seeds[f"bucket|{a}|{b}|{r.label}|{metric}"] = s
                n, mean, ci = _mean_ci(r.values(metric, ids), resamples, s)
                cells.append({"label": r.label, "n": n, "mean": mean, "ci95": ci, "bootstrap_seed": s})
            _, branks = _ranks([c["label"] for c in cells], [c["mean"] for c in cells], hib)
            for c in cells:
                c["rank"] = branks[c["label"]]
            out_buckets.append({"bucket": b, "n": len(ids), "runs": cells})
        by_attr.append({"attribute": a, "buckets": out_buckets})
    return {"metric": metric, "title": info.title, "higher_is_better": hib, "display_scale": info.display_scale,
            "alpha": alpha, "rows": board_rows, "tests": tests,
            "grouping": "compact letter display (Piepho 2004): runs that share a letter are not significantly "
                        "different on this metric (pairwise Wilcoxon signed-rank tests, Holm-adjusted over the "
                        f"{len(tests)} pair{'s' if len(tests) != 1 else ''}, alpha {alpha:g})",
            "by_attribute": by_attr,
            "attributes_missing": {a: labs for a, labs in missing.items() if labs}}


def _protocol(run: Any) -> str:
    from .format import protocol_text

    return protocol_text(run.results["editor"])


# ------------------------------------------------------------------------------------------------
# pages: one list of blocks, drawn as Markdown or HTML
# ------------------------------------------------------------------------------------------------

Cell = Any  # str, or ("b", str) for bold


def fmt_p(p: Optional[float]) -> str:
    """A p-value: 3 decimals, scientific below 0.001, — for none."""
    if p is None:
        return "—"
    return f"{p:.3f}" if p >= 1e-3 else f"{p:.1e}"


def _val(v: Optional[float], scale: float, ci: Optional[Sequence[float]] = None, sign: bool = False) -> str:
    if v is None:
        return "—"
    s = fmt_value(v, scale)
    if sign and v * scale > 0:
        s = "+" + s
    if ci:
        s += f" [{fmt_value(ci[0], scale)}, {fmt_value(ci[1], scale)}]"
    return s


def _arrow(hib: Optional[bool]) -> str:
    return " ↑" if hib is True else (" ↓" if hib is False else "")


VERDICT = {"a_better": "{a} better", "b_better": "{b} better", "a_higher": "{a} higher", "b_higher": "{b} higher",
           "not_different": "not different"}


def _blocks(doc: Dict[str, Any]) -> List[Tuple[Any, ...]]:
    s, lb, samples = doc["settings"], doc["leaderboard"], doc["samples"]
    metrics = doc["metrics"]
    labels = [r["label"] for r in doc["runs"]]
    out: List[Tuple[Any, ...]] = [("h", 1, "refcoco-edit compare: " + ", ".join(labels))]
    out.append(("p", f"{samples['n']} samples scored by every run, joined by sample_id"
                + (f" (--intersect: {samples['union'] - samples['n']} of {samples['union']} left out)"
                   if samples["intersected"] else "")
                + f"; bootstrap {s['bootstrap']} resamples (seeds in compare.json, base seed {s['seed']}); "
                  f"Wilcoxon signed-rank tests (zero_method {s['wilcoxon']['zero_method']}), Holm-adjusted; "
                  f"alpha {s['alpha']:g}. The p-values are about these samples only (see docs/compare.md)."))
    # protocols
    flags = doc["protocol"]["flags"]
    out.append(("h", 2, "Protocol differences"))
    if flags:
        mark = {"warn": "WARNING", "exclude": "NOT COMPARED", "note": "note"}
        out.append(("ul", [("b" if f["severity"] != "note" else "", f"{mark[f['severity']]}: {f['message']}")
                           for f in flags]))
    else:
        out.append(("p", "None: every run used the same data view, editor protocol, metric configuration and judge."))
    # runs
    out.append(("h", 2, "Runs"))
    rows = [[r["label"], r["protocol"], r["path"], str(p["scored"]), str(p["used"]), str(p["lost"])]
            for r, p in zip(doc["runs"], samples["runs"])]
    out.append(("table", ["Method", "Protocol", "Results folder", "Scored", "Used", "Lost"], "lllrrr", rows))
    # the leaderboard
    scale, hib, title = lb["display_scale"], lb["higher_is_better"], lb["title"]
    out.append(("h", 2, f"Leaderboard: {title}{_arrow(hib)} ({lb['metric']})"))
    rows = [[str(r["rank"]) if r["rank"] is not None else "—", ("b", r["group"]) if r["group"] else "", r["label"],
             r["protocol"], _val(r["mean"], scale, r["ci95"]), str(r["n"])] for r in lb["rows"]]
    out.append(("table", ["Rank", "Group", "Method", "Protocol", "Mean [95% CI]", "n"], "llllrr", rows))
    out.append(("p", "Group: " + lb["grouping"] + "."))
    if lb["tests"]:
        out.append(("h", 3, f"Pairwise tests on {title}"))
        rows = [[t["a"], t["b"], str(t["n"]), _val(t["diff"], scale, t["ci95"], sign=True), fmt_p(t["p"]),
                 fmt_p(t["p_holm"]), ("b", "different") if t["significant"] else "not different"] for t in lb["tests"]]
        out.append(("table", ["A", "B", "n", "A − B [95% CI]", "p", "p (Holm, pairs)", ""], "llrrrrl", rows))
    # by difficulty
    if lb["by_attribute"]:
        out.append(("h", 2, f"{title} by difficulty"))
        out.append(("p", "Mean [95% CI] per bucket over the samples every run scored (n: samples in the bucket; a "
                         "run's own n where it differs); bold: the best mean of the bucket. Descriptive: no test "
                         "per bucket."))
        order = [r["label"] for r in lb["rows"]]
        single = [a for a in lb["by_attribute"] if len(a["buckets"]) == 1]
        for a in lb["by_attribute"]:
            if len(a["buckets"]) == 1:
                continue
            out.append(("h", 3, a["attribute"]))
            rows = []
            for b in a["buckets"]:
                cells = {c["label"]: c for c in b["runs"]}
                row: List[Cell] = [b["bucket"], str(b["n"])]
                for lab in order:
                    c = cells[lab]
                    text = _val(c["mean"], scale, c["ci95"]) + (f" (n={c['n']})" if c["n"] != b["n"] else "")
                    row.append(("b", text) if c["rank"] == 1 and len(order) > 1 else text)
                rows.append(row)
            out.append(("table", ["Bucket", "n"] + order, "lr" + "r" * len(order), rows))
        if single:
            out.append(("p", "One bucket only on these samples (no breakdown): " + ", ".join(
                f"{a['attribute']} ({a['buckets'][0]['bucket']})" for a in single) + "."))
        if lb["attributes_missing"]:
            out.append(("p", "Not broken down (a run's samples.parquet lacks the column): " + "; ".join(
                f"{a} ({', '.join(labs)})" for a, labs in lb["attributes_missing"].items())))
    # pairs
    out.append(("h", 2, "Pairs"))
    out.append(("p", "Per pair, every metric both runs computed alike: mean A − B over the samples where both "
                     "values are finite, paired bootstrap 95% CI, wins/ties/losses of A (a win: A better), Wilcoxon "
                     "p and p Holm-adjusted over the metrics of the pair."))
    for p in doc["pairs"]:
        a, b = p["a"], p["b"]
        out.append(("h", 3, f"{a} vs {b}"))
        sm = p["summary"]
        out.append(("p", f"{a} better on {sm['a_better']}, {b} better on {sm['b_better']}, not different on "
                         f"{sm['not_different']} of {sm['compared']} metrics"
                    + (f" ({sm['a_higher']} diagnostics higher for {a}, {sm['b_higher']} for {b})"
                       if sm["a_higher"] or sm["b_higher"] else "") + "."))
        rows = []
        for m, st in p["metrics"].items():
            info = metrics[m]
            sc = info["display_scale"]
            verdict = VERDICT[st["verdict"]].format(a=a, b=b)
            rows.append([info["title"] + _arrow(info["higher_is_better"]) + (" (diagnostic)" if st["diagnostic"] else ""),
                         str(st["n"]), _val(st["mean_a"], sc), _val(st["mean_b"], sc),
                         _val(st["diff"], sc, st["ci95"], sign=True), f"{st['wins']} / {st['ties']} / {st['losses']}",
                         fmt_p(st["p"]), fmt_p(st["p_holm"]),
                         verdict if st["verdict"] == "not_different" else ("b", verdict)])
        if rows:
            out.append(("table", ["Metric", "n", a, b, "A − B [95% CI]", "W / T / L", "p", "p (Holm)", "Verdict"],
                        "lrrrrrrrl", rows))
        if p["not_compared"]:
            out.append(("ul", [("b", f"NOT COMPARED {metrics[m]['title'] if m in metrics else m} ({m}): {why}")
                               for m, why in p["not_compared"].items()]))
    out.append(("h", 2, "Settings"))
    w = s["wilcoxon"]
    out.append(("ul", [("", f"bootstrap: {s['bootstrap']} resamples, {s['ci_method']}; seeds: {doc['seeds']['rule']}"),
                       ("", f"Wilcoxon: {w['function']} on {w['input']}, zero_method {w['zero_method']}, "
                            f"{w['alternative']}, method {w['method']}; {w['all_zero']}"),
                       ("", f"Holm: {s['holm']['pairs']}; leaderboard: {s['holm']['leaderboard']}"),
                       ("", f"numpy {s['versions']['numpy']}, scipy {s['versions']['scipy']}")]))
    return out


def _text(c: Cell) -> Tuple[bool, str]:
    if isinstance(c, tuple):
        return c[0] == "b", c[1]
    return False, c


def render_markdown(doc: Dict[str, Any]) -> str:
    """leaderboard.md of compare.json's content."""
    lines: List[str] = []
    for blk in _blocks(doc):
        kind = blk[0]
        if kind == "h":
            lines += ["#" * blk[1] + " " + _md(blk[2]), ""]
        elif kind == "p":
            lines += [_md(blk[1]), ""]
        elif kind == "ul":
            for c in blk[1]:
                bold, t = _text(c)
                lines.append(f"- **{_md(t)}**" if bold else f"- {_md(t)}")
            lines.append("")
        elif kind == "table":
            _, head, align, rows = blk
            lines.append("| " + " | ".join(_md(h) for h in head) + " |")
            lines.append("|" + "".join("---:|" if a == "r" else "---|" for a in align))
            for row in rows:
                cells = []
                for c in row:
                    bold, t = _text(c)
                    cells.append(f"**{_md(t)}**" if bold and t else _md(t))
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}"
        "table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 8px}"
        "th{background:#f2f2f2}td.r{text-align:right;font-variant-numeric:tabular-nums}"
        "li.b{color:#a00;font-weight:bold}code{background:#f6f6f6}")


def render_html(doc: Dict[str, Any]) -> str:
    """leaderboard.html of compare.json's content: one self-contained page (inline CSS, no
    script, no external asset), every text escaped."""
    e = lambda t: html.escape(str(t), quote=True)  # noqa: E731
    title = "refcoco-edit compare: " + ", ".join(r["label"] for r in doc["runs"])
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
             f"<style>{_CSS}</style></head><body>"]
    for blk in _blocks(doc):
        kind = blk[0]
        if kind == "h":
            parts.append(f"<h{blk[1]}>{e(blk[2])}</h{blk[1]}>")
        elif kind == "p":
            parts.append(f"<p>{e(blk[1])}</p>")
        elif kind == "ul":
            items = []
            for c in blk[1]:
                bold, t = _text(c)
                items.append(f'<li class="b">{e(t)}</li>' if bold else f"<li>{e(t)}</li>")
            parts.append("<ul>" + "".join(items) + "</ul>")
        elif kind == "table":
            _, head, align, rows = blk
            parts.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead><tbody>")
            for row in rows:
                cells = []
                for c, a in zip(row, align):
                    bold, t = _text(c)
                    cls = ' class="r"' if a == "r" else ""
                    cells.append(f"<td{cls}><b>{e(t)}</b></td>" if bold and t else f"<td{cls}>{e(t)}</td>")
                parts.append("<tr>" + "".join(cells) + "</tr>")
            parts.append("</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def summary_lines(doc: Dict[str, Any], out: Optional[str] = None) -> List[str]:
    """The short summary ``refcoco-edit compare`` prints: protocol flags, the leaderboard, one
    line per pair."""
    lb, s = doc["leaderboard"], doc["settings"]
    lines = []
    for f in doc["protocol"]["flags"]:
        if f["severity"] != "note":
            lines.append(("WARNING: " if f["severity"] == "warn" else "NOT COMPARED: ") + f["message"])
    lines.append(f"compared {len(doc['runs'])} runs on {doc['samples']['n']} samples (bootstrap {s['bootstrap']}, "
                 f"seed {s['seed']}, alpha {s['alpha']:g})")
    k = len(lb["tests"])
    lines.append(f"leaderboard on {lb['metric']} ({lb['title']}{_arrow(lb['higher_is_better'])}; groups: Holm over "
                 f"{k} pair{'s' if k != 1 else ''}):")
    width = max(len(r["label"]) for r in lb["rows"])
    lines.append(f"  {'rank':<5}{'group':<7}{'method':<{width + 2}}{'mean [95% CI]':<30}n")
    for r in lb["rows"]:
        rank = str(r["rank"]) if r["rank"] is not None else "-"
        lines.append(f"  {rank:<5}{r['group']:<7}{r['label']:<{width + 2}}"
                     f"{_val(r['mean'], lb['display_scale'], r['ci95']):<30}{r['n']}")
    lines.append("pairs (metrics significant after Holm within the pair):")
    for p in doc["pairs"]:
        sm = p["summary"]
        lines.append(f"  {p['a']} vs {p['b']}: {p['a']} better on {sm['a_better']}, {p['b']} better on "
                     f"{sm['b_better']}, not different on {sm['not_different']} of {sm['compared']}"
                     + (f"; {len(p['not_compared'])} not compared" if p["not_compared"] else ""))
    if out is not None:
        lines.append(f"-> {out}/leaderboard.md, leaderboard.html, compare.json")
    return lines
