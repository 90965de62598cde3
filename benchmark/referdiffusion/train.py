"""ReferDiffusion trainer on accelerate: ``python -m refcoco_edit.benchmark.referdiffusion.train --config FILE.yaml``.

* Stage 1 (``stage: stage1``): self-supervised samples made on the fly by :mod:`.synth` from any
  RefCOCO-Edit export / workspace (the referring phrase of each prompt is the expression).
  Stage 2 (``stage: stage2``): the dataset's own (source, prompt, reference, M, M_e), by default
  reviewed-accepted samples only (``status: accepted``).
* Mixed precision, gradient accumulation and multi-GPU come from accelerate (``accelerate launch
  --multi_gpu --num_processes N``). On CPU, ``ACCELERATE_USE_CPU=true torchrun --nproc_per_node N -m
  refcoco_edit.benchmark.referdiffusion.train ...`` runs N gloo processes (``accelerate launch --cpu`` starts
  one); tests/test_referdiffusion_ddp.py uses that to test the multi-process path.
* Exact resume: ``accelerator.save_state`` (model, optimizer, LR scheduler, RNG) every
  ``checkpoint_every`` optimizer steps into ``output_dir/checkpoints/step-XXXXXXX`` +
  ``trainer_state.json``. A checkpoint is written into ``.step-XXXXXXX.tmp`` and renamed when
  complete, and only folders holding ``trainer_state.json`` count, so a kill (or a full disk)
  during a save never leaves a half checkpoint that ``resume`` would take. The data position
  needs no state: micro-batch ``k`` of the run is a pure function of (seed, k, process index) -
  epoch ``e`` visits ``randperm(n, seed + e)``, each stage-1
  sample is synthesised with seed (seed, e, index) - and so are the noise, timesteps and
  condition dropout of every micro-batch (a ``torch.Generator`` seeded from (seed, k, process)).
  ``resume: latest`` (or a checkpoint folder) continues bit-for-bit where the run stopped.
* Every loss term (the mean over the processes) goes to ``output_dir/log.jsonl`` (main process)
  and the progress bar. A run starting at step ``s`` (0, or the resumed checkpoint's) first
  drops the records after ``s`` (written by a run that was killed past its last checkpoint):
  every step is logged once.
* The final model is written with ``ReferDiffusion.save_pretrained`` to ``output_dir/.final.tmp``
  and renamed to ``output_dir/final``: a ``final/`` folder is always complete.

Every option of the YAML config can be overridden on the command line: ``--lr 1e-4``,
``--model.num_heads 4``, ``--loss.rcl 0`` (values parsed as YAML).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from refcoco_edit import config
from refcoco_edit.config import setting


_MODEL = "refcoco_edit.benchmark.referdiffusion.model:ReferDiffusionConfig"
_LOSS = "refcoco_edit.benchmark.referdiffusion.losses:LossWeights"


@dataclass
class TrainConfig:
    """Every setting of the trainer: a YAML key of ``--config`` and a ``--key value`` override."""

    pretrained: str = setting("timbrooks/instruct-pix2pix", "InstructPix2Pix (or ReferDiffusion) folder or hub id")
    local_files_only: bool = setting(True, "hub ids only from the local cache, never downloaded")
    data: str = setting("", "a RefCOCO-Edit export folder or workspace")
    output_dir: str = setting("runs/referdiffusion", "checkpoints/, final/, log.jsonl, config.json")
    stage: str = setting("stage2", "stage1: self-supervised samples synthesised from the data; stage2: the "
                                   "dataset's own samples", choices=("stage1", "stage2"))
    split: Optional[str] = setting(None, "train on this split only (default: all)")
    status: str = setting("accepted", "stage 2: reviewed-accepted samples only, or all", choices=("accepted", "all"))
    limit: Optional[int] = setting(None, "the first N samples only (default: all)")
    resolution: int = setting(480, "training resolution (a multiple of 8)")
    batch_size: int = setting(4, "micro-batch size per process")
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimizer step")
    lr: float = setting(5e-5, "learning rate")
    lr_scheduler: str = setting("constant", "diffusers LR scheduler name (constant, cosine, linear, ...)")
    lr_warmup_steps: int = setting(0, "LR warm-up steps")
    adam_weight_decay: float = setting(1e-2, "AdamW weight decay")
    max_grad_norm: float = setting(1.0, "gradient clipping norm")
    max_steps: int = setting(10000, "optimizer steps")
    mixed_precision: str = setting("no", "accelerate mixed precision", choices=("no", "fp16", "bf16", "fp8"))
    checkpoint_every: int = setting(500, "optimizer steps between checkpoints (0: none)")
    checkpoints_total_limit: Optional[int] = setting(None, "keep at most this many checkpoints (default: all)")
    resume: Optional[str] = setting(None, "latest, or a checkpoint folder (default: start afresh)")
    seed: int = setting(0, "seed of the data order, noise and REM initialisation")
    num_workers: int = setting(0, "data-loading threads")
    synth: Dict[str, Any] = setting({}, "stage-1 synthesis options (expand_ratio, min_expand_px, crop_scale, "
                                        "flip_prob, colours, llm_rephrase: {model, base_url, cache, variants, ...})")
    model: Dict[str, Any] = setting({}, "ReferDiffusionConfig options (use_rem, num_heads, image_features, "
                                        "image_feature_dim, conditioning_dropout_prob, ...)", schema=_MODEL)
    loss: Dict[str, Any] = setting({}, "LossWeights (eps, mask, mask_bce, mask_dice, edit, rcl, edit_loss, "
                                       "rcl_mask_downsample, rcl_weighting)", schema=_LOSS)

    def __post_init__(self) -> None:
        if self.mixed_precision is False:  # YAML 1.1 reads `mixed_precision: no` (and `--mixed_precision no`) as false
            self.mixed_precision = "no"
        if self.stage not in ("stage1", "stage2"):
            raise ValueError(f"stage must be stage1 or stage2, got {self.stage!r}")
        if self.resolution % 8:
            raise ValueError(f"resolution {self.resolution} is not a multiple of 8")


def load_config(path: Optional[str], overrides: Sequence[str] = ()) -> TrainConfig:
    """The YAML file (a path, or a shipped config's name: ``3_rem_rcl``, ``builtin:3_rem_rcl``) then
    ``--key value`` / ``--a.b value`` / ``--a.b=value`` overrides (values read as YAML; the command
    line wins), through :mod:`refcoco_edit.config`. Unknown keys and bad values raise
    ``refcoco_edit.config.UsageError`` (a ValueError) with a did-you-mean."""
    values: Dict[str, Any] = {}
    if path:
        from .configs import resolve as resolve_config

        values = config.read_file(resolve_config(path), TrainConfig)
    return config.build(TrainConfig, values, config.read_overrides(TrainConfig, overrides))


# ----------------------------------------------------------------------------------------------
# Data: a deterministic micro-batch stream
# ----------------------------------------------------------------------------------------------

def _to_tensor(a: np.ndarray):
    import torch

    return torch.from_numpy(np.array(a, copy=True)).permute(2, 0, 1).float() / 127.5 - 1


def _resize(a: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    import cv2

    if a.shape[:2] == (size, size):
        return a
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return cv2.resize(a.astype(np.uint8), (size, size), interpolation=interp)


class SampleSource:
    """Index -> training example (dict of arrays + prompt) for stage 1 or 2."""

    def __init__(self, samples: List[Any], cfg: TrainConfig):
        if not samples:
            raise ValueError("no training samples")
        self.samples, self.cfg = samples, cfg
        self.synth = dict(cfg.synth)
        if cfg.stage == "stage1" and self.synth.get("llm_rephrase"):
            from .synth import prepare_llm_rephrase  # every (subject, colour) is asked before training starts

            self.synth["llm_rephrase"] = prepare_llm_rephrase(self.synth["llm_rephrase"], samples, cfg.output_dir,
                                                              self.synth.get("colours"))

    def __len__(self) -> int:
        return len(self.samples)

    def get(self, i: int, epoch: int) -> Dict[str, Any]:
        from refcoco_edit.benchmark.data import decode_sample

        from .synth import synthesize

        s = self.samples[i]
        R = self.cfg.resolution
        if self.cfg.stage == "stage1":
            d = decode_sample(s, reference=False)
            if d.target_mask is None:
                raise ValueError(f"{s.sample_id}: stage 1 needs the source mask")
            a, b = s.referring_span
            seed = int(np.random.SeedSequence([self.cfg.seed, epoch, i]).generate_state(1)[0])
            x = synthesize(d.source, d.target_mask, s.prompt[a:b], s.category, seed=seed, size=(R, R),
                           **self.synth)
            return {"source": x.source, "target": x.target, "source_mask": x.source_mask, "edit_mask": x.edit_mask,
                    "prompt": x.prompt.text, "edit_span": x.prompt.edit_span}
        d = decode_sample(s, reference=True)
        sm = d.target_mask if d.target_mask is not None else d.edit_mask
        return {"source": _resize(d.source, R, False), "target": _resize(d.reference, R, False),
                "source_mask": _resize(sm.astype(np.uint8), R, True).astype(bool),
                "edit_mask": _resize(d.edit_mask.astype(np.uint8), R, True).astype(bool),
                "prompt": s.prompt, "edit_span": tuple(s.edit_span)}


def micro_batch_indices(k: int, n: int, batch_size: int, seed: int, process_index: int = 0,
                        num_processes: int = 1) -> List[Tuple[int, int]]:
    """(epoch, sample index) pairs of micro-batch ``k`` for one process: the global stream is the
    concatenation of ``randperm(n)`` per epoch, cut into global batches of ``batch_size *
    num_processes``, and each process takes its slice."""
    import torch

    gb = batch_size * num_processes
    start = k * gb + process_index * batch_size
    out = []
    for pos in range(start, start + batch_size):
        epoch, j = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        out.append((epoch, perm[j]))
    return out


def collate(examples: List[Dict[str, Any]], model) -> Dict[str, Any]:
    import torch

    tok = model.tokenize([e["prompt"] for e in examples], [e["edit_span"] for e in examples])
    return {
        "source_pixels": torch.stack([_to_tensor(e["source"]) for e in examples]),
        "target_pixels": torch.stack([_to_tensor(e["target"]) for e in examples]),
        "input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"], "edit_token_mask": tok["span_mask"],
        "source_mask": torch.stack([torch.from_numpy(e["source_mask"].astype(np.float32))[None] for e in examples]),
        "edit_mask": torch.stack([torch.from_numpy(e["edit_mask"].astype(np.float32))[None] for e in examples]),
    }


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------

_STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.json"


def _checkpoints(out: Path) -> List[Path]:
    """The complete checkpoints (``step-N`` folders holding ``trainer_state.json``), oldest first."""
    d = out / "checkpoints"
    if not d.is_dir():
        return []
    done = [p for p in d.iterdir() if _STEP_DIR.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))  # type: ignore[union-attr]


@contextlib.contextmanager
def _writing(path: Path):
    """A full disk while writing ``path``: the error names it (``f.write`` errors carry no path)."""
    from refcoco_edit.errors import is_disk_error, with_path

    try:
        yield
    except OSError as e:
        if is_disk_error(e):
            raise with_path(e, path) from None
        raise


def _publish_dir(tmp: Path, final: Path) -> None:
    """Put the complete folder ``tmp`` in place of ``final`` (renames on one file system)."""
    old = final.with_name(f".{final.name}.old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _trim_log(path: Path, step: int) -> None:
    """Keep the records of steps <= ``step`` (a killed run may have logged past its checkpoint,
    and its last line may be cut): each step appears once, in order."""
    from refcoco_edit.workspace import atomic_write_bytes

    if not path.exists():
        return
    raw = path.read_bytes()
    keep = []
    for line in raw.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
            keep.append(line + b"\n")
    data = b"".join(keep)
    if data != raw:
        with _writing(path):
            atomic_write_bytes(path, data)


def _stale(out: Path) -> None:
    """Remove what a killed run left half written (temp checkpoint / final folders)."""
    for p in list((out / "checkpoints").glob(".step-*")) + [out / ".final.tmp", out / ".final.old"]:
        shutil.rmtree(p, ignore_errors=True)


def train(cfg: TrainConfig, samples: Optional[List[Any]] = None) -> Dict[str, Any]:
    """Run (or resume) training; returns {"step", "output_dir", "final"}. ``samples``: BenchSamples
    (default: ``refcoco_edit.benchmark.data.load_dataset(cfg.data)``)."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs
    from diffusers.optimization import get_scheduler

    from .losses import LossWeights
    from .model import ReferDiffusion, ReferDiffusionConfig

    out = Path(cfg.output_dir)
    acc = Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                      mixed_precision=cfg.mixed_precision,
                      kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    status = cfg.status if cfg.stage == "stage2" else "all"
    if samples is None:
        from refcoco_edit.benchmark.data import load_dataset

        samples = load_dataset(cfg.data, split=cfg.split, status=status, limit=cfg.limit).samples
    if not samples:
        from refcoco_edit.errors import InputError

        raise InputError(f"{cfg.data} has no {status} samples for {cfg.stage}"
                         + (" (review them first, or set status: all)" if status == "accepted" else ""))
    with acc.main_process_first():  # stage-1 LLM prompts: the main process asks, the others hit its cache
        source = SampleSource(samples, cfg)
    torch.manual_seed(cfg.seed)  # the REM's initialisation
    model = ReferDiffusion.from_pretrained(cfg.pretrained, ReferDiffusionConfig.from_dict(dict(cfg.model)),
                                           local_files_only=cfg.local_files_only)
    weights = LossWeights(**cfg.loss)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=cfg.lr, weight_decay=cfg.adam_weight_decay)
    sched = get_scheduler(cfg.lr_scheduler, opt, num_warmup_steps=cfg.lr_warmup_steps * acc.num_processes,
                          num_training_steps=cfg.max_steps * acc.num_processes)
    model, opt, sched = acc.prepare(model, opt, sched)
    core = acc.unwrap_model(model)

    step = 0
    if cfg.resume:
        ck = _checkpoints(out)[-1] if cfg.resume == "latest" and _checkpoints(out) else (
            None if cfg.resume == "latest" else Path(cfg.resume))
        if ck is not None:
            acc.load_state(str(ck))
            step = int(json.loads((ck / "trainer_state.json").read_text())["step"])
    if acc.is_main_process:
        from refcoco_edit.workspace import atomic_write_bytes

        out.mkdir(parents=True, exist_ok=True)
        _stale(out)
        with _writing(out / "config.json"):
            atomic_write_bytes(out / "config.json", json.dumps(asdict(cfg), indent=2, default=str).encode("utf-8"))
        _trim_log(out / "log.jsonl", step)
    acc.wait_for_everyone()
    log_path = out / "log.jsonl"
    log = log_path.open("a") if acc.is_main_process else None

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.max_steps, initial=step, disable=not acc.is_main_process, desc="train")
    try:
        step = _loop(cfg, acc, model, core, opt, sched, weights, source, out, step, bar, log, log_path)
    finally:  # an error (a full disk) is reported after the bar, not above a half bar
        bar.close()
        if log is not None:
            log.close()
    acc.wait_for_everyone()
    final = out / "final"
    if acc.is_main_process:
        tmp = out / ".final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            with _writing(tmp):
                core.save_pretrained(tmp)
            _publish_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return {"step": step, "output_dir": str(out), "final": str(final)}


def _loop(cfg: TrainConfig, acc: Any, model: Any, core: Any, opt: Any, sched: Any, weights: Any, source: SampleSource,
          out: Path, step: int, bar: Any, log: Any, log_path: Path) -> int:
    """Optimizer steps from ``step`` to ``cfg.max_steps``, logging and checkpointing; returns the last step."""
    import torch

    from .losses import total_loss

    model.train()
    G = cfg.gradient_accumulation_steps
    while step < cfg.max_steps:
        sums: Dict[str, float] = {}
        for a in range(G):
            k = step * G + a
            idx = micro_batch_indices(k, len(source), cfg.batch_size, cfg.seed, acc.process_index, acc.num_processes)
            batch = collate([source.get(i, e) for e, i in idx], core)
            batch = {n: v.to(acc.device) for n, v in batch.items()}
            gen = torch.Generator(device=acc.device).manual_seed(
                int(np.random.SeedSequence([cfg.seed, k, acc.process_index]).generate_state(1)[0]))
            with acc.accumulate(model):
                with acc.autocast():
                    o = model(generator=gen, **batch)
                    terms = total_loss(o, batch, core.scheduler, weights)
                acc.backward(terms["loss"])
                if acc.sync_gradients and cfg.max_grad_norm:
                    acc.clip_grad_norm_(core.trainable_parameters(), cfg.max_grad_norm)
                opt.step()
                sched.step()
                opt.zero_grad()
            for n, v in terms.items():
                sums[n] = sums.get(n, 0.0) + float(v.detach()) / G
        if acc.num_processes > 1:  # log the mean over the processes, not the main process's slice
            names = list(sums)
            t = acc.reduce(torch.tensor([sums[n] for n in names], dtype=torch.float64, device=acc.device), "mean")
            sums = dict(zip(names, t.tolist()))
        step += 1
        rec = {"step": step, "lr": sched.get_last_lr()[0], **sums}
        if log is not None:
            with _writing(log_path):
                log.write(json.dumps(rec) + "\n")
                log.flush()
        bar.update(1)
        bar.set_postfix({n: f"{v:.4f}" for n, v in sums.items() if n in ("loss", "eps", "mask", "rcl")})
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            ck = out / "checkpoints" / f"step-{step:07d}"
            tmp = ck.with_name(f".{ck.name}.tmp")
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            acc.wait_for_everyone()
            try:
                with _writing(tmp):
                    acc.save_state(str(tmp))
                    acc.wait_for_everyone()
                    if acc.is_main_process:
                        (tmp / STATE_FILE).write_text(json.dumps({"step": step}))
                        _publish_dir(tmp, ck)  # complete: now resume may take it
            except BaseException:
                if acc.is_main_process:
                    shutil.rmtree(tmp, ignore_errors=True)
                raise
            if acc.is_main_process and cfg.checkpoints_total_limit:
                for old in _checkpoints(out)[: -cfg.checkpoints_total_limit]:
                    shutil.rmtree(old, ignore_errors=True)
            acc.wait_for_everyone()
    return step


_CONFIG_HELP = ("YAML config: a file, or a shipped config's name (1_finetune, 2_rem, 3_rem_rcl, 4_selfsup; also "
                "builtin:NAME)")


def help_parser() -> argparse.ArgumentParser:
    """The trainer's options for ``--help``: every TrainConfig setting, generated from its fields
    (the values themselves are read by :func:`load_config`, as YAML)."""
    ap = argparse.ArgumentParser(
        prog="refcoco-edit train", description="Train ReferDiffusion (the reference baseline) with accelerate.",
        epilog="Settings: the defaults, then --config, then the options given here (the command line wins). "
               "Each option is also a YAML key of --config (dashes or underscores); values are read as YAML "
               "(--local_files_only false, --synth.colours '[red, blue]', --resume null; --key=value works too). "
               "Nested options: --model.num_heads 4, --loss.rcl=0.5, --synth.llm_rephrase.model NAME. Exit codes: 0 done, 2 bad config, 1 other errors.")
    ap.add_argument("--config", help=_CONFIG_HELP)
    config.add_flags(ap, TrainConfig, style="tokens")
    return ap


class _HelpAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):  # noqa: D401 - argparse API
        help_parser().print_help()
        parser.exit()


def main(argv: Optional[Sequence[str]] = None) -> int:
    from refcoco_edit.errors import disk_error_message, is_disk_error

    ap = argparse.ArgumentParser(prog="referdiffusion-train", add_help=False, allow_abbrev=False)
    ap.add_argument("--config", help=_CONFIG_HELP)
    ap.add_argument("-h", "--help", action=_HelpAction, nargs=0)
    args, rest = ap.parse_known_args(argv)
    try:
        cfg = load_config(args.config, rest)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        train(cfg)
    except OSError as e:
        if not is_disk_error(e):
            raise
        rerun = None if cfg.resume else "re-run with --resume latest: it continues from the last checkpoint"
        print(f"error: {disk_error_message(e, *([rerun] if rerun else []))}", file=sys.stderr)  # one line
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
