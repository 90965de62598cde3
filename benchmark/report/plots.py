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
    edit type, one bar per run). Needs matplotlib (figure API only: no global backend change)."""
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
    return written


def write_plots_if_possible(out: Path, runs: Sequence[Dict[str, Any]], labels: Sequence[str],
                            samples: Sequence[Sequence[Dict[str, Any]]], log: Callable[[str], None]) -> None:
    """``write_plots``, or a log line when matplotlib is not installed."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        log("plots skipped: matplotlib is not installed (pip install matplotlib)")
        return
    write_plots(out, runs, labels, samples)
