"""plots/*.png of one or several runs (matplotlib's figure API: no global backend change)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

from refcoco_edit.workspace import atomic_write_bytes

__all__ = ["write_plots", "write_plots_if_possible"]


def _figure(n: int, ncols: int = 4, size: Tuple[float, float] = (3.2, 2.4)):
    from matplotlib.figure import Figure

    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.08, top=0.94, wspace=0.3, hspace=0.55)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def _style(ax: Any, title: str, x_bins: bool = True) -> None:
    # a plain text title (no auto-positioning pass) and few ticks: drawing stays fast
    ax.text(0.5, 1.03, title, transform=ax.transAxes, ha="center", va="bottom", fontsize=9)
    ax.locator_params(axis="y", nbins=4)
    if x_bins:
        ax.locator_params(axis="x", nbins=4)
    ax.tick_params(labelsize=7)


def _save(fig: Any, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())


def write_plots(out: Path, runs: Sequence[Dict[str, Any]], labels: Sequence[str],
                samples: Sequence[Sequence[Dict[str, Any]]]) -> List[Path]:
    """plots/distributions.png (per-sample histograms), plots/by_edit_type.png (means with CI per
    edit type, one bar per run), plots/by_difficulty.png (the main metrics against the number of
    distractors and the target's size). Needs matplotlib (figure API only: no global backend change)."""
    from ..metrics import METRICS

    names = [n for n in METRICS if any(n in r["metrics"] for r in runs)]
    written: List[Path] = []
    if not names:
        return written
    (out / "plots").mkdir(parents=True, exist_ok=True)
    fig, axes = _figure(len(names))
    for ax, n in zip(axes, names):
        for lab, recs in zip(labels, samples):
            vals = [r[n] * METRICS[n].display_scale for r in recs
                    if r.get("status") == "ok" and isinstance(r.get(n), float) and math.isfinite(r[n])]
            if vals:
                ax.hist(vals, bins=20, alpha=0.6, label=lab)
        _style(ax, METRICS[n].title)
    if len(labels) > 1:
        axes[0].legend(fontsize=6)
    p = out / "plots" / "distributions.png"
    _save(fig, p)
    written.append(p)

    types = sorted({t for r in runs for m in r["metrics"].values() for t in m.get("by_edit_type", {})})
    fig, axes = _figure(len(names))
    width = 0.8 / max(1, len(runs))
    for ax, n in zip(axes, names):
        for k, (lab, r) in enumerate(zip(labels, runs)):
            m = r["metrics"].get(n)
            if not m:
                continue
            xs, ys, lo, hi = [], [], [], []
            for i, t in enumerate(types):
                b = m["by_edit_type"].get(t)
                if b and b["mean"] is not None:
                    sc = METRICS[n].display_scale  # as in report.md's column title
                    mean = b["mean"] * sc
                    ci = [c * sc for c in (b["ci95"] or [b["mean"], b["mean"]])]
                    xs.append(i + k * width)
                    ys.append(mean)
                    lo.append(max(0.0, mean - ci[0]))
                    hi.append(max(0.0, ci[1] - mean))
            if xs:
                ax.bar(xs, ys, width=width, yerr=[lo, hi], capsize=2, label=lab)
        ax.set_xticks([i + width * (len(runs) - 1) / 2 for i in range(len(types))])
        ax.set_xticklabels(types, fontsize=7)
        _style(ax, METRICS[n].title, x_bins=False)
    if len(labels) > 1:
        axes[0].legend(fontsize=6)
    p = out / "plots" / "by_edit_type.png"
    _save(fig, p)
    written.append(p)
    p = _by_difficulty(out, runs, labels)
    if p is not None:
        written.append(p)
    return written


MAIN_METRICS = ("referring_accuracy", "distractor_preservation", "l2_bg", "clip_sim_fg", "judge_referring_accuracy")
"""the metrics plots/by_difficulty.png draws (those a run has), the first four found"""
DIFFICULTY_AXES = (("attr_distractors", "same-category distractors"), ("attr_size", "target size (COCO)"))


def _by_difficulty(out: Path, runs: Sequence[Dict[str, Any]], labels: Sequence[str]) -> Any:
    """plots/by_difficulty.png: the main metrics' means with CI against the number of
    same-category distractors and the target's size class (one line per run); None when no run
    has difficulty breakdowns."""
    from refcoco_edit.difficulty import label_key

    from ..metrics import METRICS

    def entry(r: Dict[str, Any], n: str) -> Any:
        return r["metrics"].get(n) or (r.get("judge") or {}).get("metrics", {}).get(n)

    names = [n for n in MAIN_METRICS if any((entry(r, n) or {}).get("by_attribute") for r in runs)][:4]
    if not names:
        return None
    fig, axes = _figure(len(names) * len(DIFFICULTY_AXES), ncols=len(DIFFICULTY_AXES), size=(3.6, 2.4))
    k = 0
    for n in names:
        scale = METRICS[n].display_scale if n in METRICS else 1.0
        title = METRICS[n].title if n in METRICS else n
        for attr, xlabel in DIFFICULTY_AXES:
            ax = axes[k]
            k += 1
            labs = sorted({x for r in runs for x in ((entry(r, n) or {}).get("by_attribute", {}).get(attr) or {})},
                          key=label_key)
            for lab, r in zip(labels, runs):
                cells = (entry(r, n) or {}).get("by_attribute", {}).get(attr) or {}
                xs, ys, lo, hi = [], [], [], []
                for i, x in enumerate(labs):
                    c = cells.get(x)
                    if c and c["mean"] is not None:
                        mean = c["mean"] * scale
                        ci = [v * scale for v in (c["ci95"] or [c["mean"], c["mean"]])]
                        xs.append(i)
                        ys.append(mean)
                        lo.append(max(0.0, mean - ci[0]))
                        hi.append(max(0.0, ci[1] - mean))
                if xs:
                    ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=2, label=lab)
            ax.set_xticks(range(len(labs)))
            ax.set_xticklabels(labs, fontsize=7)
            _style(ax, f"{title} vs {xlabel}", x_bins=False)
    if len(labels) > 1:
        axes[0].legend(fontsize=6)
    p = out / "plots" / "by_difficulty.png"
    _save(fig, p)
    return p


def write_plots_if_possible(out: Path, runs: Sequence[Dict[str, Any]], labels: Sequence[str],
                            samples: Sequence[Sequence[Dict[str, Any]]], log: Callable[[str], None]) -> None:
    """``write_plots``, or a log line when matplotlib is not installed."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        log("plots skipped: matplotlib is not installed (pip install matplotlib)")
        return
    write_plots(out, runs, labels, samples)
