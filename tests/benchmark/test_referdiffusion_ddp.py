"""The ReferDiffusion trainer with 2 processes (CPU, gloo on 127.0.0.1): the multi-GPU code path
without GPUs. Launched with ``torchrun`` and ``ACCELERATE_USE_CPU=true`` - the launcher ``accelerate
launch --multi_gpu`` uses - because ``accelerate launch --cpu --num_processes 2`` starts ONE process
(accelerate 1.15; checked: rank 0 of 1). Checks that it trains end to end, that the logged losses
are the mean over the processes (recomputed here, in one process, from the per-process data and
noise streams the trainer documents), and that a 2-process resume reproduces the uninterrupted
2-process run. Tiny random components, no network."""
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
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

from conftest import REPO  # noqa: E402

pytestmark = pytest.mark.slow  # three accelerate launches (~20 s each on 2 cores)

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
TERMS = ("loss", "eps", "mask", "edit", "rcl")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(demo_dir, tmp_path_factory):
    from test_referdiffusion import TINY_CFG, save_tiny_ip2p

    from refcoco_edit.build import BuildConfig, build

    root = tmp_path_factory.mktemp("rd-ddp")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ip2p = save_tiny_ip2p(root)
    finally:
        torch.set_num_threads(n)
    export = build(BuildConfig.of(out=str(root / "work"), refcoco=str(demo_dir), images=str(demo_dir / "images"),
                               num_images=3, progress=False), log=lambda s: None).export_dir
    cfg = {"pretrained": str(ip2p), "data": str(export), "stage": "stage2", "status": "all", "resolution": 32,
           "batch_size": 2, "lr": 1e-3, "max_steps": 4, "checkpoint_every": 2, "seed": 5, "model": dict(TINY_CFG)}
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return root, cfg


def _launch(root: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, **OFFLINE, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", ACCELERATE_USE_CPU="true",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "refcoco_edit.benchmark.referdiffusion.train", "--config", str(root / "cfg.yaml"), "--output_dir", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def _log(out: Path):
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(setup):
    root, _ = setup
    r = _launch(root, root / "full")
    assert r.returncode == 0, r.stderr[-4000:]
    return root / "full"


def test_two_processes_train_end_to_end(full_run):
    log = _log(full_run)
    assert [x["step"] for x in log] == [1, 2, 3, 4]
    assert all(np.isfinite(x[k]) for x in log for k in TERMS)
    assert (full_run / "final" / "referdiffusion_rem.pt").is_file()
    assert sorted(p.name for p in (full_run / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    # each process's state is in the checkpoint (accelerate keeps one RNG file per process)
    assert {p.name for p in (full_run / "checkpoints" / "step-0000002").glob("random_states_*.pkl")} == \
        {"random_states_0.pkl", "random_states_1.pkl"}


def test_logged_losses_are_the_mean_over_processes(setup, full_run):
    """Step 1 recomputed in one process: process p takes micro-batch slice p of the global batch
    and its noise from the generator seeded (seed, k, p); the logged value is their mean."""
    from refcoco_edit.benchmark.data import load_dataset
    from refcoco_edit.benchmark.referdiffusion.losses import LossWeights, total_loss
    from refcoco_edit.benchmark.referdiffusion.model import ReferDiffusion, ReferDiffusionConfig
    from refcoco_edit.benchmark.referdiffusion.train import SampleSource, TrainConfig, collate, micro_batch_indices

    root, c = setup
    cfg = TrainConfig(**{**c, "output_dir": str(root / "recompute")})
    samples = load_dataset(cfg.data, status="all").samples
    source = SampleSource(samples, cfg)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(cfg.seed)  # the REM's initialisation, as the trainer does
        model = ReferDiffusion.from_pretrained(cfg.pretrained, ReferDiffusionConfig.from_dict(dict(cfg.model)),
                                               local_files_only=True)
        model.train()
        per_process = []
        for p in range(2):
            idx = micro_batch_indices(0, len(source), cfg.batch_size, cfg.seed, p, 2)
            batch = collate([source.get(i, e) for e, i in idx], model)
            gen = torch.Generator().manual_seed(int(np.random.SeedSequence([cfg.seed, 0, p]).generate_state(1)[0]))
            with torch.no_grad():
                terms = total_loss(model(generator=gen, **batch), batch, model.scheduler, LossWeights(**cfg.loss))
            per_process.append({k: float(terms[k]) for k in TERMS})
    finally:
        torch.set_num_threads(n)
    first = _log(full_run)[0]
    assert per_process[0]["loss"] != pytest.approx(per_process[1]["loss"], rel=1e-3)  # two different slices
    for k in TERMS:
        assert first[k] == pytest.approx((per_process[0][k] + per_process[1][k]) / 2, rel=1e-4, abs=1e-6), k


def test_two_process_resume_reproduces_the_uninterrupted_run(setup, full_run):
    root, _ = setup
    resumed = root / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full_run / "checkpoints" / "step-0000002", resumed / "checkpoints" / "step-0000002")
    r = _launch(root, resumed, "--resume", "latest")
    assert r.returncode == 0, r.stderr[-4000:]
    a, b = _log(full_run), _log(resumed)
    assert [x["step"] for x in b] == [3, 4]
    for ra, rb in zip(a[2:], b):
        for k in TERMS:
            assert ra[k] == pytest.approx(rb[k], rel=1e-5, abs=1e-7), (ra["step"], k)
