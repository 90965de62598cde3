"""FreeEdit's phased trainer (``refcoco-edit train --model freeedit``) on the shared training core:
on a small synthetic reference-based export (written by the real ``write_export``, twice-repainted
with the weight-free repainter) with the tiny random FreeEdit base, every phase lowers the loss,
each phase's frozen modules stay bit-identical, the quality phase trains on the samples its rule
chose (written to the run), a run killed mid-phase and resumed ends bit-identical, two gloo
processes train in step, and the command line answers bad configs with exit code 2 and one line.
CPU, no network."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from conftest import REPO, run_cli  # noqa: E402
from support.tiny_freeedit import save_tiny_freeedit_base  # noqa: E402
from support.torch_env import OFFLINE, one_torch_thread  # noqa: E402,F401 - an autouse fixture

STEPS = 6  # per phase
N = 6      # triplets; the last one is rejected in review (and has the best score)
PHASES = [{"name": "base", "steps": STEPS, "modules": ["projection", "unet"]},
          {"name": "detail", "steps": STEPS, "modules": ["projection", "unet", "detail_extractor", "drra"]},
          {"name": "quality", "steps": STEPS, "modules": ["unet", "drra"], "data": "quality"}]
# which groups each phase must leave bit-identical (the VAE is in no group: never trains)
FROZEN = {"base": ("detail_extractor", "drra", "text_encoder", "image_encoder", "vae"),
          "detail": ("text_encoder", "image_encoder", "vae"),
          "quality": ("projection", "detail_extractor", "text_encoder", "image_encoder", "vae")}
TRAINED = {"base": ("projection", "unet"), "detail": ("projection", "unet", "detail_extractor", "drra"),
           "quality": ("unet", "drra")}


def _scene(k: int, size: int = 48):
    rng = np.random.default_rng(100 + k)
    img = np.zeros((size, size, 3), np.uint8)
    img[:] = rng.integers(40, 200, 3)
    yy, xx = np.mgrid[:size, :size]
    cy, cx, r = size // 2 + rng.integers(-4, 5), size // 2 + rng.integers(-4, 5), size // 4
    m = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    img[m] = rng.integers(0, 255, 3)
    return img, m


def _export(out: Path) -> Path:
    """A reference-based export of N replace triplets (before: the ball's region repainted; after:
    the photo; exemplar: the ball on a new backdrop), the last one rejected in review."""
    from refcoco_edit import rle
    from refcoco_edit.export import write_export
    from refcoco_edit.imageio import encode_png
    from refcoco_edit.schema import sample_fields

    rows = []
    for k in range(N):
        img, m = _scene(k)
        before = img.copy()
        before[m] = 255 - img[m]
        rows.append(dict({f.name: None for f in sample_fields()}, **{
            "sample_id": f"s{k}", "dataset": "refcoco", "split": "train", "image_id": k, "ref_id": 10 + k,
            "sent_id": 100 + k, "category": "ball", "source_image": {"bytes": encode_png(img), "path": f"{k}.png"},
            "source_mask": rle.encode(m), "bbox": rle.to_bbox(rle.encode(m)), "edit_type": "replace",
            "edit_target": "cube", "prompt": "replace the ball with a cube", "referring_span": [8, 16],
            "edit_span": [22, 28], "prompt_source": "template",
            "reference_image": {"bytes": encode_png(before), "path": None}, "edit_mask": rle.encode(m),
            "review": {"status": "rejected" if k == N - 1 else "accepted", "chosen_candidate": 0},
            "candidates": [{"pipeline": "classical-replace"}], "schema_version": "x"}))
    write_export(rows, out, view="reference-based")
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Tiny FreeEdit base, the export, and a score run's samples.parquet over every triplet
    (ref_dino rising with the triplet's index: the rejected one scores best)."""
    import pyarrow.parquet as pq

    from refcoco_edit.benchmark.data import load_dataset
    from refcoco_edit.benchmark.report.results import samples_table

    root = tmp_path_factory.mktemp("freeedit-train")
    base = save_tiny_freeedit_base(root / "base")
    export = _export(root / "export")
    ids = [s.sample_id for s in load_dataset(export, status="all").samples]
    order = sorted(ids)  # scores by a fixed order of the ids
    recs = [{"sample_id": s, "status": "ok", "metrics": {"ref_dino": 0.1 * (1 + order.index(s))}} for s in ids]
    pq.write_table(samples_table(recs, ["ref_dino"]), root / "samples.parquet")
    accepted = [s.sample_id for s in load_dataset(export, status="accepted").samples]
    rejected = sorted(set(ids) - set(accepted))
    assert len(accepted) == N - 1 and len(rejected) == 1
    return {"root": root, "base": base, "export": export, "scores": root / "samples.parquet", "ids": ids,
            "accepted": accepted, "rejected": rejected[0],
            "score": {r["sample_id"]: r["metrics"]["ref_dino"] for r in recs}}


def _cfg_dict(b, out: Path, **kw):
    d = {"pretrained": str(b["base"]["ip2p"]), "image_encoder": str(b["base"]["image_encoder"]),
         "data": str(b["export"]), "output_dir": str(out), "resolution": 32, "batch_size": 2, "lr": 1e-3,
         "checkpoint_every": 3, "seed": 0, "phases": PHASES,
         "quality": {"scores": str(b["scores"]), "metric": "ref_dino", "top_fraction": 0.4},
         "model": {"reference_resolution": 32, "num_image_tokens": 4}}
    d.update(kw)
    return d


def _cfg(b, out: Path, **kw):
    from refcoco_edit.benchmark.freeedit.train import FreeEditTrainConfig

    return FreeEditTrainConfig(**_cfg_dict(b, out, **kw))


def _log(out: Path):
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(built):
    from refcoco_edit.benchmark.freeedit.train import train

    out = built["root"] / "full"
    r = train(_cfg(built, out))
    assert r["step"] == 3 * STEPS and r["phase"] == "quality"
    return out


def _model(b):
    """The model as the trainer builds it (seeded, so that the projection's initialisation matches)."""
    from refcoco_edit.benchmark.freeedit.model import FreeEdit, FreeEditConfig

    torch.manual_seed(0)
    return FreeEdit.from_pretrained(b["base"]["ip2p"], config=FreeEditConfig(reference_resolution=32, num_image_tokens=4),
                                    image_encoder=str(b["base"]["image_encoder"]))


def _at(model, out: Path, step: int):
    """``model`` with the weights of checkpoint ``step`` (accelerate's model.safetensors)."""
    from safetensors.torch import load_file

    state = load_file(str(out / "checkpoints" / f"step-{step:07d}" / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith(("_mean", "_std")) for k in missing), (missing, unexpected)
    return model


def _groups(model):
    g = {k: [p.detach().clone() for p in v] for k, v in model.module_groups().items()}
    g["vae"] = [p.detach().clone() for p in model.vae.parameters()]
    return g


def test_each_phase_keeps_its_frozen_modules_bit_identical(built, full_run):
    model = _model(built)
    snaps = {0: _groups(model)}
    for s in (STEPS, 2 * STEPS, 3 * STEPS):
        snaps[s] = _groups(_at(model, full_run, s))
    for i, name in enumerate(("base", "detail", "quality")):
        a, b = snaps[i * STEPS], snaps[(i + 1) * STEPS]
        for g in FROZEN[name]:
            assert all(torch.equal(x, y) for x, y in zip(a[g], b[g])), f"phase {name}: frozen {g} changed"
        for g in TRAINED[name]:
            assert any(not torch.equal(x, y) for x, y in zip(a[g], b[g])), f"phase {name}: {g} did not train"
    log = _log(full_run)
    assert [r["step"] for r in log] == list(range(1, 3 * STEPS + 1))
    assert [r["phase"] for r in log] == [p["name"] for p in PHASES for _ in range(STEPS)]


def _probe_loss(model, samples) -> float:
    """The denoising loss of ``samples`` at fixed noise and timesteps (eval: no condition dropout)."""
    from refcoco_edit.benchmark.freeedit.train import TripletSource, collate

    src = TripletSource(samples, 32, 32)
    batch = collate([src.get(i, 0) for i in range(len(src))], model)
    g = torch.Generator().manual_seed(123)
    n = len(samples)
    noise = torch.randn(n, 4, 16, 16, generator=g)
    ts = torch.linspace(50, 950, n).long()
    model.eval()
    with torch.no_grad():
        return float(model.loss(model(noise=noise, timesteps=ts, **batch))["loss"])


def test_every_phase_lowers_the_loss(built, full_run):
    """The loss on the phase's own samples at fixed noise and timesteps (the same for every
    measurement; the logged training loss draws new timesteps each step, too noisy over 6 steps),
    from the weights at the phase's start and at its end."""
    from refcoco_edit.benchmark.data import load_dataset

    accepted = load_dataset(built["export"], status="accepted").samples
    chosen = [c["sample_id"] for c in json.loads((full_run / "quality_subset.json").read_text())["chosen"]]
    data = {"base": accepted, "detail": accepted, "quality": [s for s in accepted if s.sample_id in chosen]}
    model = _model(built)
    before = {"base": _probe_loss(model, accepted)}
    after = {}
    for i, name in enumerate(("base", "detail", "quality")):
        if i:
            before[name] = _probe_loss(_at(model, full_run, i * STEPS), data[name])
        after[name] = _probe_loss(_at(model, full_run, (i + 1) * STEPS), data[name])
    # measured (tiny models, 6 steps a phase at lr 1e-3): base 1.12 -> 0.62, detail 0.62 -> 0.37, quality 0.38 -> 0.27
    for name in before:
        assert after[name] < 0.9 * before[name], (name, before, after)


def test_quality_phase_trains_on_the_rule_s_choice_written_to_the_run(built, full_run):
    from refcoco_edit.benchmark.freeedit.train import FreeEditPlugin

    rec = json.loads((full_run / "quality_subset.json").read_text())
    best = sorted(built["accepted"], key=lambda s: -built["score"][s])[:2]  # ceil(0.4 * 5 scored accepted)
    assert [c["sample_id"] for c in rec["chosen"]] == best and built["rejected"] not in best
    assert [c["score"] for c in rec["chosen"]] == [built["score"][s] for s in best]
    assert rec["rule"] == {"scores": str(built["scores"]), "metric": "ref_dino", "top_fraction": 0.4,
                           "min_score": None, "status": "accepted", "higher_is_better": True}
    assert rec["candidates"] == N - 1 and rec["scored"] == N - 1
    phases = json.loads((full_run / "phases.json").read_text())
    assert [(p["phase"], p["samples"]) for p in phases] == [("base", N - 1), ("detail", N - 1), ("quality", 2)]
    src = FreeEditPlugin(_cfg(built, built["root"] / "probe")).sources()["quality"]
    assert sorted(s.sample_id for s in src.samples) == sorted(best)


def _weights(folder: Path):
    from safetensors.torch import load_file

    out = {}
    for p in sorted(folder.rglob("*")):
        if p.suffix == ".safetensors":
            out.update({f"{p.relative_to(folder)}:{k}": v for k, v in load_file(str(p)).items()})
        elif p.suffix == ".pt":
            state = torch.load(str(p), map_location="cpu", weights_only=True)
            out.update({f"{p.relative_to(folder)}:{m}.{k}": v for m, d in state.items() for k, v in d.items()})
    return out


def test_killed_mid_phase_and_resumed_ends_bit_identical(built, full_run, tmp_path):
    from refcoco_edit.benchmark.freeedit.train import train

    out = tmp_path / "run"
    train(_cfg(built, out, max_steps=STEPS + 4))  # stops after step 10; last checkpoint: 9, mid-phase 'detail'
    shutil.rmtree(out / "final")  # a killed run leaves none
    state = json.loads((out / "checkpoints" / "step-0000009" / "trainer_state.json").read_text())
    assert state == {"step": 9, "phase": "detail", "phase_index": 1, "phase_step": 3}
    r = train(_cfg(built, out, resume="latest"))
    assert r["step"] == 3 * STEPS
    a, b = _weights(full_run / "final"), _weights(out / "final")
    assert a.keys() == b.keys() and len(a) > 100
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    assert _log(out) == _log(full_run)
    assert json.loads((out / "quality_subset.json").read_text()) == json.loads((full_run / "quality_subset.json").read_text())


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------

def test_cli_help_and_bad_configs_exit_2_with_one_line(built, tmp_path, capsys):
    import yaml

    from refcoco_edit.cli import main

    r = run_cli("train", "--model", "freeedit", "--help")
    assert r.returncode == 0, r.stderr
    for flag in ("--phases", "--quality.KEY", "--model.KEY", "--image_encoder", "--resume", "quality_subset.json"):
        assert flag in r.stdout, flag
    cfg = tmp_path / "f.yaml"
    cfg.write_text(yaml.safe_dump(_cfg_dict(built, tmp_path / "out")))
    cases = [
        (["--phases", "[{name: a, steps: 1, modules: [unet, bogus]}]"], "unknown module group(s) bogus"),
        (["--quality.metric", "judge_nope"], "'judge_nope' is not a column of"),
        (["--quality.min_score", "0.99"], "the quality rule selects no sample"),
        (["--quality.scores", "null"], "quality.scores is not set"),
        (["--quality.top_fraction", "2"], "top_fraction must be in (0, 1]"),
        (["--data", str(tmp_path / "nothing")], "no such file or folder"),
    ]
    for extra, needle in cases:
        assert main(["train", "--model", "freeedit", "--config", str(cfg), *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err, (extra, err)
    assert not (tmp_path / "out" / "log.jsonl").exists()  # nothing trained
    assert main(["train", "--model", "nope", "--config", str(cfg)]) == 2
    assert "choose referdiffusion or freeedit" in capsys.readouterr().err


def test_shipped_configs_load():
    from refcoco_edit.benchmark.freeedit import configs
    from refcoco_edit.benchmark.freeedit.model import FreeEditConfig
    from refcoco_edit.benchmark.freeedit.train import load_config

    assert configs.names() == ["freeedit", "freeedit_no_quality"]
    full = load_config("freeedit", ["--quality.metric", "judge_same_object"])
    assert [p["name"] for p in full.phases] == ["base", "detail", "quality"] and full.phases[2]["data"] == "quality"
    assert full.quality["metric"] == "judge_same_object"
    assert [p["data"] for p in load_config("builtin:freeedit_no_quality").phases] == ["train", "train"]
    FreeEditConfig.from_dict(full.model)
    with pytest.raises(ValueError, match="shipped FreeEdit config"):
        load_config("builtin:nope")


# ----------------------------------------------------------------------------------------------
# two processes (gloo on 127.0.0.1)
# ----------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_train_every_phase_in_step(built):
    """``torchrun --nproc_per_node 2`` with ACCELERATE_USE_CPU (the launcher the multi-GPU path
    uses): each phase re-wraps the model in DDP over its trainable parameters, so the processes'
    weights stay equal (checked by the core at every phase end: phases.json holds each process's
    digest) through phases that unfreeze and freeze modules."""
    import yaml

    root = built["root"] / "ddp"
    root.mkdir()
    phases = [dict(p, steps=2) for p in PHASES]
    (root / "cfg.yaml").write_text(yaml.safe_dump(_cfg_dict(built, root / "out", batch_size=1, checkpoint_every=2,
                                                            phases=phases)))
    env = dict(os.environ, **OFFLINE, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", ACCELERATE_USE_CPU="true",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "refcoco_edit.benchmark.freeedit.train", "--config", str(root / "cfg.yaml")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    out = root / "out"
    log = _log(out)
    assert [(x["step"], x["phase"]) for x in log] == [(1, "base"), (2, "base"), (3, "detail"), (4, "detail"),
                                                      (5, "quality"), (6, "quality")]
    assert all(np.isfinite(x["loss"]) for x in log)
    recs = json.loads((out / "phases.json").read_text())
    digests = [p["weights_digest"] for p in recs]
    assert [len(d) for d in digests] == [2, 2, 2] and all(d[0] == d[1] for d in digests)
    assert len({tuple(d[0]) for d in digests}) == 3  # the weights moved in every phase
    assert {p.name for p in (out / "checkpoints" / "step-0000004").glob("random_states_*.pkl")} == \
        {"random_states_0.pkl", "random_states_1.pkl"}
    assert (out / "final" / "freeedit_modules.pt").is_file()
