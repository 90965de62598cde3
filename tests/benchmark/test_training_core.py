"""The shared training core (``refcoco_edit.benchmark.training``): phase schedules, the quality rule,
the deterministic micro-batch stream, and the loop's phase semantics on a small real model (a
two-layer regression net trained by the real core through accelerate on CPU): a phase's frozen
modules stay bit-identical (weight decay and the previous phase's Adam moments included), the
optimizer is rebuilt per phase, and a run resumed mid-phase or at a phase boundary ends
bit-identical to an uninterrupted one. FreeEdit and ReferDiffusion on the core: their own tests."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from refcoco_edit.benchmark.training.phases import Phase, check_phases, parse_phases, phase_bounds, phase_index
from refcoco_edit.benchmark.training.quality import QualityRule, select_quality
from refcoco_edit.config import UsageError
from refcoco_edit.errors import InputError

# ----------------------------------------------------------------------------------------------
# phases (pure)
# ----------------------------------------------------------------------------------------------


def test_phase_schedule_parsing_and_step_ranges():
    ph = parse_phases([{"name": "a", "steps": 3, "modules": ["x"]},
                       {"name": "skip", "steps": 0, "modules": "x, y"},
                       {"name": "b", "steps": 2, "modules": ["x", "y", "x"], "data": "q", "lr": "1e-5"}])
    assert ph[1].modules == ("x", "y") and ph[2].modules == ("x", "y") and ph[2].lr == 1e-5 and ph[2].data == "q"
    assert phase_bounds(ph) == [(0, 3), (3, 3), (3, 5)]
    # step s (1-based) -> its phase; a 0-step phase owns no step
    assert [phase_index(ph, s) for s in range(0, 7)] == [0, 0, 0, 0, 2, 2, 2]
    check_phases(ph, ["x", "y"], ["train", "q"])
    with pytest.raises(UsageError, match="unknown module group.*'b'|unknown module group"):
        check_phases(ph, ["x"], ["train", "q"])
    with pytest.raises(UsageError, match="unknown sample source 'q'"):
        check_phases(ph, ["x", "y"], ["train"])
    for bad, msg in [([], "non-empty list"), ([{"steps": 1}], "modules"), ([{"steps": -1, "modules": ["x"]}], "steps"),
                     ([{"steps": 1, "modules": ["x"], "lr": 0}], "lr"), ([{"steps": 1, "modules": ["x"], "bogus": 1}],
                                                                         "unknown key"),
                     ([{"name": "a", "steps": 1, "modules": ["x"]}] * 2, "repeated"),
                     ([{"steps": 0, "modules": ["x"]}], "0 steps")]:
        with pytest.raises(UsageError, match=msg):
            parse_phases(bad)


def test_micro_batch_stream_is_a_pure_function_of_seed_step_and_process():
    pytest.importorskip("torch")
    from refcoco_edit.benchmark.training import micro_batch_indices, micro_batch_seed

    # two processes of batch 2 cover exactly the global batch of 4, epoch by epoch, each sample once per epoch
    seen = [i for k in range(3) for p in range(2) for i in micro_batch_indices(k, 6, 2, seed=3, process_index=p,
                                                                             num_processes=2)]
    assert [e for e, _ in seen] == [0] * 6 + [1] * 6
    assert sorted(i for e, i in seen if e == 0) == list(range(6)) == sorted(i for e, i in seen if e == 1)
    assert micro_batch_indices(5, 6, 2, 3, 1, 2) == micro_batch_indices(5, 6, 2, 3, 1, 2)
    assert micro_batch_seed(0, 5, 1) == micro_batch_seed(0, 5, 1) != micro_batch_seed(0, 5, 0)


# ----------------------------------------------------------------------------------------------
# the quality rule (pure)
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scores(tmp_path_factory):
    """A score run's samples.parquet (through the real writer): ref_dino and a judge metric."""
    import pyarrow.parquet as pq

    from refcoco_edit.benchmark.report.results import samples_table

    vals = {"a": (0.9, 1.0), "b": (0.8, 0.0), "c": (0.7, 1.0), "d": (0.2, 1.0), "e": (math.nan, 1.0),
            "f": (0.95, 1.0)}
    recs = [{"sample_id": s, "status": "ok", "metrics": {"ref_dino": v}, "judge_values": {"judge_same_object": j}}
            for s, (v, j) in vals.items()]
    recs.append({"sample_id": "g", "status": "failed", "metrics": {"ref_dino": 0.99}, "judge_values": {}})
    run = tmp_path_factory.mktemp("scores")
    pq.write_table(samples_table(recs, ["ref_dino"], judge_names=["judge_same_object"]), run / "samples.parquet")
    return run


def test_quality_rule_picks_the_top_scored_candidates(scores):
    cands = ["a", "b", "c", "d", "e", "g"]  # f is not a candidate (say: rejected); e has no score; g failed
    rec = select_quality(QualityRule(scores=str(scores), metric="ref_dino", top_fraction=0.5), cands)
    assert rec["scored"] == 4 and rec["top_k"] == 2 and rec["candidates"] == 6
    assert [(c["sample_id"], c["score"]) for c in rec["chosen"]] == [("a", 0.9), ("b", 0.8)]
    assert rec["rule"]["metric"] == "ref_dino" and rec["scores_file"].endswith("samples.parquet")
    assert len(rec["scores_sha256"]) == 64
    # the floor, lower-is-better, a judge metric (ties broken by sample id), the file named directly
    rec = select_quality(QualityRule(scores=str(scores), top_fraction=1.0, min_score=0.75), cands)
    assert [c["sample_id"] for c in rec["chosen"]] == ["a", "b"]
    rec = select_quality(QualityRule(scores=str(scores), top_fraction=0.25, higher_is_better=False), cands)
    assert [c["sample_id"] for c in rec["chosen"]] == ["d"]
    rec = select_quality(QualityRule(scores=str(scores / "samples.parquet"), metric="judge_same_object",
                                     top_fraction=0.5), cands)
    assert [c["sample_id"] for c in rec["chosen"]] == ["a", "c", "d"]


def test_quality_rule_errors_are_clear(scores, tmp_path):
    with pytest.raises(InputError, match=r"'ref_dinno' is not a column of .*its score columns: ref_dino, "
                                         r"judge_same_object"):
        select_quality(QualityRule(scores=str(scores), metric="ref_dinno"), ["a"])
    with pytest.raises(InputError, match="selects no sample: 4 accepted candidate.*4 with a finite ref_dino.*"
                                         ">= min_score 0.95"):
        select_quality(QualityRule(scores=str(scores), top_fraction=0.5, min_score=0.95), ["a", "b", "c", "d"])
    with pytest.raises(InputError, match="0 with a finite ref_dino"):
        select_quality(QualityRule(scores=str(scores)), ["zz"])
    with pytest.raises(InputError, match="neither a `refcoco-edit score` RESULTS folder"):
        select_quality(QualityRule(scores=str(tmp_path / "none")), ["a"])
    with pytest.raises(UsageError, match="quality.scores is not set"):
        select_quality(QualityRule(), ["a"])
    with pytest.raises(UsageError, match="top_fraction"):
        QualityRule(scores="x", top_fraction=0)


# ----------------------------------------------------------------------------------------------
# the loop's phase semantics, on a small real model
# ----------------------------------------------------------------------------------------------

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")
pytest.importorskip("diffusers")

from refcoco_edit.benchmark.training import RunSettings, TrainingPlugin, run  # noqa: E402

PHASES = [{"name": "first", "steps": 3, "modules": ["a"]},
          {"name": "both", "steps": 3, "modules": ["a", "b"], "lr": 0.02},
          {"name": "empty", "steps": 0, "modules": ["b"]},
          {"name": "second", "steps": 3, "modules": ["b"], "data": "small"}]


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4, 8)
        self.b = torch.nn.Linear(8, 1)
        self.never = torch.nn.Parameter(torch.ones(3))  # in no group: never trains

    def forward(self, x, noise):
        return self.b(torch.tanh(self.a(x))) + 0.0 * self.never.sum() + noise


class _Points:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def get(self, i, epoch):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(4, generator=g)
        return {"x": x, "y": x.sum(0, keepdim=True).sin()}


class _Regression(TrainingPlugin):
    """A regression net on the core: groups a (first layer), b (second layer)."""

    def sources(self):
        return {"train": _Points(8), "small": _Points(3)}

    def build_model(self):
        return _Net()

    def module_groups(self, model):
        return {"a": list(model.a.parameters()), "b": list(model.b.parameters())}

    def phases(self):
        return parse_phases(PHASES)

    def collate(self, examples, model):
        return {"x": torch.stack([e["x"] for e in examples]), "y": torch.stack([e["y"] for e in examples])}

    def loss(self, model, core, batch, generator):
        noise = 0.01 * torch.randn(batch["y"].shape, generator=generator)
        mse = torch.nn.functional.mse_loss(model(batch["x"], noise), batch["y"])
        return {"loss": mse}

    def save_final(self, core, path):
        path.mkdir(parents=True, exist_ok=True)
        torch.save(core.state_dict(), path / "net.pt")


def _settings(out: Path, **kw) -> RunSettings:
    # weight decay on: a frozen module left in an optimizer would shrink
    return RunSettings(**{"output_dir": str(out), "batch_size": 2, "lr": 0.05, "adam_weight_decay": 0.1,
                          "checkpoint_every": 2, "seed": 7, **kw})


def _ck_weights(out: Path, step: int):
    from safetensors.torch import load_file

    return load_file(str(out / "checkpoints" / f"step-{step:07d}" / "model.safetensors"))


def _final(out: Path):
    return torch.load(out / "final" / "net.pt", weights_only=True)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    out = tmp_path_factory.mktemp("core") / "full"
    r = run(_Regression(), _settings(out, checkpoint_every=1))
    assert r["step"] == 9 and r["phase"] == "second"
    return out


def test_each_phase_trains_its_groups_only(full):
    torch.manual_seed(7)  # the core seeds before building the model
    init = {k: v.detach().clone() for k, v in _Net().state_dict().items()}
    at = {0: init, **{s: _ck_weights(full, s) for s in (3, 6, 9)}}
    same = lambda s0, s1, name: all(torch.equal(at[s0][k], at[s1][k]) for k in at[s0] if k.startswith(name))  # noqa
    assert same(0, 3, "b.") and not same(0, 3, "a.")      # first: a trains, b frozen
    assert not same(3, 6, "a.") and not same(3, 6, "b.")  # both
    assert same(6, 9, "a.") and not same(6, 9, "b.")      # second: a frozen (despite weight decay and its moments)
    assert all(torch.equal(at[s]["never"], init["never"]) for s in (3, 6, 9))
    log = [json.loads(x) for x in (full / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 10))
    assert [r["phase"] for r in log] == ["first"] * 3 + ["both"] * 3 + ["second"] * 3
    assert [r["lr"] for r in log] == [0.05] * 3 + [0.02] * 3 + [0.05] * 3
    states = [json.loads((full / "checkpoints" / f"step-{s:07d}" / "trainer_state.json").read_text()) for s in (3, 4, 9)]
    assert states == [{"step": 3, "phase": "first", "phase_index": 0, "phase_step": 3},
                      {"step": 4, "phase": "both", "phase_index": 1, "phase_step": 1},
                      {"step": 9, "phase": "second", "phase_index": 3, "phase_step": 3}]
    recs = json.loads((full / "phases.json").read_text())
    assert [(r["phase"], r["end_step"], r["samples"], r["trained_parameters"]) for r in recs] == \
        [("first", 3, 8, 40), ("both", 6, 8, 49), ("second", 9, 3, 9)]
    assert json.loads((full / "config.json").read_text())["phases"][1]["lr"] == 0.02


@pytest.mark.parametrize("stop", [5, 7], ids=["mid-phase", "phase-boundary"])
def test_resume_is_bit_identical(full, tmp_path, stop):
    """Killed after step ``stop`` (last checkpoint: 4, mid-phase; or 6, the end of phase 'both')."""
    out = tmp_path / "run"
    run(_Regression(), _settings(out, max_steps=stop))
    (out / "final").rename(out / "final-of-the-killed-run")  # not what a kill leaves: keep it out of the way
    r = run(_Regression(), _settings(out, resume="latest"))
    assert r["step"] == 9
    a, b = _final(full), _final(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = [json.loads(x) for x in (full / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert la == lb  # the steps past the checkpoint are logged once, with the same values
    assert json.loads((out / "phases.json").read_text()) == json.loads((full / "phases.json").read_text())


def test_resume_refuses_another_schedule(full, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(full / "checkpoints" / "step-0000004", out / "checkpoints" / "step-0000004")
    plugin = _Regression()
    plugin.phases = lambda: parse_phases([{"name": "other", "steps": 9, "modules": ["a"]}])  # type: ignore[method-assign]
    with pytest.raises(UsageError, match="written in phase 'both'.*resume with the schedule"):
        run(plugin, _settings(out, resume="latest"))
    with pytest.raises(InputError, match="not a complete checkpoint"):
        run(_Regression(), _settings(out, resume=str(tmp_path / "nope")))


def test_a_phase_over_empty_groups_is_refused(tmp_path):
    plugin = _Regression()
    plugin.module_groups = lambda m: {"a": [], "b": list(m.b.parameters())}  # type: ignore[method-assign]
    with pytest.raises(UsageError, match="phase 'first' trains no parameters"):
        run(plugin, _settings(tmp_path / "x"))
    assert Phase("p", 1, ("a",)).to_dict() == {"name": "p", "steps": 1, "modules": ["a"], "data": "train", "lr": None}
