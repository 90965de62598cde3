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
def digests(tmp_path_factory) -> dict:
    return compute(tmp_path_factory.mktemp("digest"))


@pytest.mark.parametrize("what", ["export", "oracle", "identity"])
def test_demo_outputs_match_the_pinned_digest(digests, what):
    pinned = json.loads(PINNED.read_text())[what]
    got = digests[what]
    drifted = sorted(k for k in set(pinned) | set(got) if pinned.get(k) != got.get(k))
    assert not drifted, f"{what}: columns that changed: {drifted} (intended? python tests/system/test_digest.py --update)"


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python tests/system/test_digest.py --update")
    with tempfile.TemporaryDirectory() as d:
        PINNED.write_text(json.dumps(compute(Path(d)), indent=2, sort_keys=True) + "\n")
    print(f"rewrote {PINNED}")
