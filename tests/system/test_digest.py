"""Outputs unchanged: the demo build's export and the oracle/identity score runs, pinned by content.

`refcoco-edit build` with no arguments, then `score --model oracle` and `--model identity`, run
through the CLI exactly as a user types them. Each column's digest (decoded pixels and masks,
prompts, spans, ids, metric values; see ``tests/support/digest.py``) must equal the pinned one in
``tests/support/data/demo_digests.json``. A change that means to alter outputs (a new demo generator, an
export layout) updates that file in the same commit and says why:

    python tests/system/test_digest.py --update
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.digest import export_digest, samples_digest  # noqa: E402

PINNED = Path(__file__).resolve().parents[1] / "support" / "data" / "demo_digests.json"


def compute(tmp: Path) -> dict:
    from refcoco_edit.cli import main

    work = tmp / "work"
    assert main(["build", "--out", str(work), "--no-progress"]) == 0
    out = {"export": export_digest(work / "export")}
    for model in ("oracle", "identity"):
        res = tmp / model
        assert main(["score", "--model", model, "--data", str(work), "--out", str(res), "--no-gallery",
                     "--no-plots", "--no-progress"]) == 0
        out[model] = samples_digest(res / "samples.parquet")
    return out


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory) -> tuple:
    """(the folder of the build and the two score runs, their digests)."""
    tmp = tmp_path_factory.mktemp("digest")
    return tmp, compute(tmp)


@pytest.fixture(scope="module")
def digests(demo_runs) -> dict:
    return demo_runs[1]


# the best value of each preservation metric (outside M_e, other objects, distractors; MagicBrush
# against the after image): what an editor that returns the after image must score exactly
PRESERVATION_BEST = {"l2_bg": 0.0, "mse_bg": 0.0, "psnr_bg": 100.0, "ssim_bg": 1.0, "l1": 0.0, "l2": 0.0,
                     "distractor_preservation": 1.0, "change_distractor_max": 0.0, "change_distractor_mean": 0.0,
                     "others_preservation": 1.0, "change_others_max": 0.0, "change_others_mean": 0.0}


def test_every_demo_sample_carries_its_difficulty_attributes(demo_runs):
    """Issue 27: the attributes are present for every sample of the demo build (none unknown), and
    their counts are in the dataset card."""
    from refcoco_edit.difficulty import BUCKETS, counts
    from refcoco_edit.export import load_export

    export = demo_runs[0] / "work" / "export"
    rows = load_export(export).to_pylist()
    assert len(rows) == 96 and all(r["difficulty"] and None not in r["difficulty"].values() for r in rows)
    card = (export / "README.md").read_text()
    for attr, cells in counts(rows).items():
        assert attr in BUCKETS and "unknown" not in cells
        assert f"| {attr[len('attr_'):]} | " + ", ".join(f"{k}: {v}" for k, v in cells.items()) + " |" in card


def test_the_oracle_scores_the_best_preservation_value_on_every_sample(demo_runs):
    """Issue 27: a perfect editor gets every preservation metric's best value exactly, on every demo
    sample (NaN only where a metric does not apply: no distractor, no other object). ssim_bg got
    0.9989 before its windows stopped seeing M_e's pixels (metrics.background)."""
    import math

    import pyarrow.parquet as pq

    rows = pq.read_table(demo_runs[0] / "oracle" / "samples.parquet").to_pylist()
    assert rows and all(r["status"] == "ok" for r in rows)
    for name, best in PRESERVATION_BEST.items():
        vals = [r[name] for r in rows]
        off = [(r["sample_id"], v) for r, v in zip(rows, vals) if not (v is None or math.isnan(v)) and v != best]
        assert not off, (name, best, off[:5])
        assert sum(v is not None and not math.isnan(v) for v in vals) > 0, name


@pytest.mark.parametrize("what", ["export", "oracle", "identity"])
def test_demo_outputs_match_the_pinned_digest(digests, what):
    pinned = json.loads(PINNED.read_text())[what]
    got = digests[what]
    drifted = sorted(k for k in set(pinned) | set(got) if pinned.get(k) != got.get(k))
    from refcoco_edit.pipelines.fill import default_method

    # the pins are the environment CI runs: Python >= 3.11, where PyPatchMatch (a dependency
    # there) is the removal fill; without it the removals and replacement holes are other bytes
    where = "" if default_method() == "pypatchmatch" else (
        "; this Python has no PyPatchMatch (Python < 3.11?): the removals and replacement holes use the patch fill, "
        "the pins are PyPatchMatch's")
    assert not drifted, (f"{what}: columns that changed: {drifted} (intended? python tests/system/test_digest.py "
                         f"--update){where}")


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python tests/system/test_digest.py --update")
    with tempfile.TemporaryDirectory() as d:
        PINNED.write_text(json.dumps(compute(Path(d)), indent=2, sort_keys=True) + "\n")
    print(f"rewrote {PINNED}")
