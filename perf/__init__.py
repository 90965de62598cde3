"""Speed/memory benchmarks of refcoco-edit (not tests): ``python -m perf [--quick] [--only NAME]``.

Each ``perf/bench_*.py`` module has ``run(quick: bool = False) -> dict`` returning at least
``{"name", "baseline_s", "value_s", "ratio"}``, where the baseline is measured in the same run
(these machines are noisy, so only ratios are compared across runs).
"""
