"""Run the benchmarks: ``python -m perf [--quick] [--only NAME]``.

Discovers ``perf/bench_*.py`` modules, runs their ``run(quick)``, prints one table and merges the
results into ``perf/results.json`` (by name).

A benchmark returns at least ``{"name", "baseline_s", "value_s", "ratio"}`` and may add
``baseline`` (what the baseline is, in words), ``unit`` (what the two times measure, e.g.
``s/image``), ``better`` (``lower`` or ``higher``: which way ``ratio`` improves; default
``lower``, i.e. ratio = value / baseline) and ``notes`` (one line). A benchmark that cannot run
here returns ``{"skipped": "reason"}`` (a GPU-only figure without CUDA); one whose optional
dependencies are missing (ImportError) is marked skipped too; one that raises is marked failed,
the others still run, and the exit status is 1.
"""
from __future__ import annotations

import argparse
import importlib
import json
import platform
import pkgutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
OWN_PACKAGES = ("perf", "refcoco_edit", "pipelines", "benchmark", "annotation")


def discover() -> List[str]:
    """Names (without the ``bench_`` prefix) of the benchmark modules in this folder."""
    return sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(HERE)]) if m.name.startswith("bench_"))


def _num(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "-" if v is None else str(v)
    return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"


def _status(r: Dict[str, Any]) -> Optional[str]:
    if r.get("failed"):
        return f"FAILED: {r['failed']}"
    if r.get("skipped"):
        return f"skipped: {r['skipped']}"
    return None


def format_table(results: List[Dict[str, Any]]) -> str:
    """The printed table: one row per benchmark (skipped/failed ones say so)."""
    head = ["name", "baseline (what ours is compared with)", "baseline", "ours", "unit", "ratio", "better", "notes"]
    rows = []
    for r in results:
        st = _status(r)
        if st is not None:
            rows.append([r["name"], st, "", "", "", "", "", r.get("notes", "")])
            continue
        ratio = r.get("ratio")
        rows.append([r["name"], str(r.get("baseline", "")), _num(r.get("baseline_s")), _num(r.get("value_s")),
                     str(r.get("unit", "s")), (_num(ratio) + "x") if isinstance(ratio, (int, float)) else _num(ratio),
                     str(r.get("better", "lower")), str(r.get("notes", ""))])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    right = {2, 3, 5}

    def line(cells: List[str]) -> str:
        out = []
        for i, (c, w) in enumerate(zip(cells, widths)):
            if i == len(cells) - 1:
                out.append(c)
            elif i == 1 and len(c) > w:
                out.append(c)
            else:
                out.append(c.rjust(w) if i in right else c.ljust(w))
        return "  ".join(out).rstrip()

    lines = [line(head), line(["-" * w for w in widths])]
    lines += [line(row) for row in rows]
    lines.append("ratio: ours / baseline when better = lower, baseline / ours when better = higher; "
                 "both measured in this run, on this machine.")
    return "\n".join(lines)


def run_one(name: str, quick: bool) -> Dict[str, Any]:
    t0 = time.perf_counter()
    try:
        mod = importlib.import_module(f"perf.bench_{name}")
        res = dict(mod.run(quick=quick) or {})
    except Exception as e:  # noqa: BLE001 - one benchmark failing must not lose the others' figures
        missing = getattr(e, "name", None) if isinstance(e, ModuleNotFoundError) else None
        if missing and missing.split(".")[0] not in OWN_PACKAGES:
            res = {"skipped": f"needs the {missing} package"}  # torch, diffusers, ... not installed
        else:
            traceback.print_exc()
            res = {"failed": f"{type(e).__name__}: {str(e)[:160]}"}
    res["name"] = res.get("name") or name
    res["quick"] = quick
    res["wall_s"] = round(time.perf_counter() - t0, 3)
    res["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return res


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small inputs (smoke run)")
    ap.add_argument("--only", action="append", metavar="NAME", help="run only this benchmark (repeatable)")
    ap.add_argument("--out", type=Path, default=HERE / "results.json", help="results file (default perf/results.json)")
    args = ap.parse_args(argv)

    names = discover()
    if args.only:
        unknown = [n for n in args.only if n not in names]
        if unknown:
            print(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(names)}", file=sys.stderr)
            return 2
        names = [n for n in names if n in args.only]

    t_all = time.perf_counter()
    results = [run_one(name, args.quick) for name in names]
    total = time.perf_counter() - t_all

    print()
    print(format_table(results))
    print(f"total wall time {total:.0f}s" + (" (--quick)" if args.quick else ""))

    previous: Dict[str, Any] = {}
    if args.out.exists():
        try:
            previous = {r["name"]: r for r in json.loads(args.out.read_text()).get("results", [])}
        except (ValueError, KeyError, TypeError, AttributeError):
            previous = {}
    previous.update({r["name"]: r for r in results})
    doc = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "results": sorted(previous.values(), key=lambda r: r["name"]),
    }
    if not args.only:
        doc["total_wall_s"] = round(total, 1)
        doc["quick"] = args.quick
    tmp = args.out.with_suffix(".json.tmp-write")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(args.out)
    print(f"\nwrote {args.out}")
    return 1 if any(r.get("failed") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
