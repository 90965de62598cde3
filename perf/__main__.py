"""Run the benchmarks: ``python -m perf [--quick] [--only NAME]``.

Discovers ``perf/bench_*.py`` modules, runs their ``run(quick)``, prints one table
(name, baseline, value, ratio) and merges the results into ``perf/results.json`` (by name).
"""
from __future__ import annotations

import argparse
import importlib
import json
import platform
import pkgutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent


def discover() -> List[str]:
    """Names (without the ``bench_`` prefix) of the benchmark modules in this folder."""
    return sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(HERE)]) if m.name.startswith("bench_"))


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else str(v)


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

    results: List[Dict[str, Any]] = []
    for name in names:
        mod = importlib.import_module(f"perf.bench_{name}")
        t0 = time.perf_counter()
        res = dict(mod.run(quick=args.quick))
        res.setdefault("name", name)
        res["quick"] = args.quick
        res["wall_s"] = round(time.perf_counter() - t0, 3)
        res["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        results.append(res)

    print()
    print(f"{'name':<20} {'baseline_s':>12} {'value_s':>12} {'ratio':>8}")
    for r in results:
        print(f"{r['name']:<20} {_fmt(r.get('baseline_s')):>12} {_fmt(r.get('value_s')):>12} {_fmt(r.get('ratio')):>8}")

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
    tmp = args.out.with_suffix(".json.tmp-write")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    tmp.replace(args.out)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
