"""Record how long each xdist worker queue of the test suite takes, so the next runs start the
longest ones first (tests/conftest.py orders the collection by this file).

    python -m pytest --durations=0 > run.log        # any full run (setup, call and teardown times)
    python tools/test_durations.py run.log           # rewrites tests/support/data/test_durations.json

A queue is what ``tests/conftest.py`` puts in one ``xdist_group``: a module, or all the Label
Studio tests (``labelstudio``), or all the Ray tests (``ray``); pytest-xdist prints it after the
test id (``tests/x.py::test_y@labelstudio``). Times are summed per queue and rounded to seconds.
"""
from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "support" / "data" / "test_durations.json"
LINE = re.compile(r"^\s*([0-9.]+)s (setup|call|teardown)\s+(\S+)$")


def queue_of(test_id: str) -> str:
    """The queue of a reported test id: the ``@group`` suffix, as a repository-relative path for modules."""
    node, _, group = test_id.partition("@")
    if group and group in ("labelstudio", "ray"):
        return group
    return node.split("::")[0]


def main(argv: list) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    totals: dict = defaultdict(float)
    for line in Path(argv[0]).read_text(errors="replace").splitlines():
        m = LINE.match(line)
        if m:
            totals[queue_of(m.group(3))] += float(m.group(1))
    if not totals:
        print(f"{argv[0]}: no --durations=0 lines found", file=sys.stderr)
        return 2
    data = {k: round(v) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {OUT} ({len(data)} queues, {sum(totals.values()):.0f} s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
