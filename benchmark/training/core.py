"""The one training loop: phases, checkpoints, bit-exact resume, DDP (accelerate) and logging.

:func:`run` trains any :class:`~.plugin.TrainingPlugin` (ReferDiffusion, FreeEdit):

* **Phases.** The run is the plugin's phase list; global optimizer step ``s`` (1-based) belongs
  to the phase whose step range holds it. Entering a phase sets ``requires_grad`` from its module
  groups (every other parameter is frozen and its ``.grad`` dropped), builds a fresh AdamW and LR
  scheduler over exactly those parameters (at the phase's ``lr``), and wraps the model again
  (``accelerator.free_memory`` + ``prepare``): DDP registers the parameters that require
  gradients when it wraps, so a phase that unfreezes a module needs a new wrapper for its
  gradients to be all-reduced. Frozen modules are outside the optimizer (no weight decay, no
  momentum) and get no gradients: they are bit-identical before and after the phase.
* **Data.** Micro-batch ``k`` (global: ``step * gradient_accumulation_steps + a``) is drawn from
  the phase's sample source by :func:`.stream.micro_batch_indices` and its randomness from a
  generator seeded by (seed, k, process): a pure function of the global step, so resume needs no
  data state.
* **Checkpoints.** Every ``checkpoint_every`` optimizer steps: ``accelerator.save_state``
  (model, the phase's optimizer and scheduler, RNG) + ``trainer_state.json`` ({step, phase,
  phase_index, phase_step}) into ``checkpoints/step-N``, written to a temp folder and renamed.
  ``resume: latest`` (or a folder) rebuilds the phase the checkpoint was written in, loads it,
  and continues; a checkpoint at a phase's last step enters the next phase exactly as the
  uninterrupted run does. The result is bit-identical to an uninterrupted run.
* **Logging.** One JSON line per optimizer step (``step``, ``phase``, ``lr``, every loss term
  as the mean over the processes) in ``log.jsonl``; a resumed run first drops the records past
  its checkpoint. ``final/`` is written by the plugin into ``.final.tmp`` and renamed.
* **Phase records.** At each phase's last step every process's weights digest (float64 sum and
  sum of squares of all parameters) is gathered; processes that disagree stop the run (their
  gradients were not all-reduced), else the phase is recorded in ``output_dir/phases.json``
  (name, end step, modules, sample count, trained parameter count, the digests).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from refcoco_edit.config import UsageError

from .checkpoints import (STATE_FILE, find_resume, list_checkpoints, publish_dir, read_state, remove_stale, step_dir,
                          trim_log, writing)
from .phases import Phase, check_phases, phase_bounds, phase_index, phases_dict
from .plugin import TrainingPlugin
from .stream import micro_batch_indices, micro_batch_seed

__all__ = ["RunSettings", "run", "PhaseState", "PHASES_FILE"]

PHASES_FILE = "phases.json"


@dataclass
class RunSettings:
    """The loop's own settings (every trainer's config carries them under these names)."""

    output_dir: str
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    lr: float = 5e-5
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    max_steps: Optional[int] = None
    """stop after this global step (None: at the end of the last phase)"""
    mixed_precision: str = "no"
    checkpoint_every: int = 500
    checkpoints_total_limit: Optional[int] = None
    resume: Optional[str] = None
    seed: int = 0

    @classmethod
    def of(cls, cfg: Any, **overrides: Any) -> "RunSettings":
        """The settings read off a trainer config ``cfg`` (same attribute names), then ``overrides``."""
        from dataclasses import fields

        vals = {f.name: getattr(cfg, f.name) for f in fields(cls) if hasattr(cfg, f.name)}
        vals.update(overrides)
        return cls(**vals)


@dataclass
class PhaseState:
    """The phase being trained: its index, the prepared model/optimizer/scheduler and its parameters."""

    index: int
    phase: Phase
    model: Any
    optimizer: Any
    scheduler: Any
    params: List[Any]


def _enter_phase(acc: Any, plugin: TrainingPlugin, core: Any, groups: Mapping[str, List[Any]], phases: Sequence[Phase],
                 i: int, s: RunSettings, current: Optional[PhaseState]) -> PhaseState:
    """Freeze everything but phase ``i``'s groups, build its optimizer and scheduler, (re)wrap the model."""
    import torch
    from diffusers.optimization import get_scheduler

    phase = phases[i]
    chosen = {id(p) for g in phase.modules for p in groups[g]}
    params = []
    if current is not None:  # drop the old wrapper (DDP, autocast) and the old optimizer's registration
        core = acc.unwrap_model(current.model, keep_fp32_wrapper=False)
        acc.free_memory()
    for p in core.parameters():  # model order: the optimizer's parameter order never depends on the config's
        on = id(p) in chosen
        p.requires_grad_(on)
        p.grad = None
        if on:
            params.append(p)
    if not params:
        raise UsageError(f"phase {phase.name!r} trains no parameters (module groups {', '.join(phase.modules)} are empty)")
    opt = torch.optim.AdamW(params, lr=phase.lr if phase.lr is not None else s.lr, weight_decay=s.adam_weight_decay)
    # accelerate steps a prepared scheduler once per process per optimizer step
    sched = get_scheduler(s.lr_scheduler, opt, num_warmup_steps=s.lr_warmup_steps * acc.num_processes,
                          num_training_steps=max(1, phase.steps) * acc.num_processes)
    model, opt, sched = acc.prepare(core, opt, sched)
    return PhaseState(index=i, phase=phase, model=model, optimizer=opt, scheduler=sched, params=params)


def _next_phase(phases: Sequence[Phase], i: int, step: int) -> int:
    """The phase to train step ``step + 1`` in, given the current phase ``i`` (skips 0-step phases)."""
    bounds = phase_bounds(phases)
    while i + 1 < len(phases) and step >= bounds[i][1]:
        i += 1
    return i


def _write_json(path: Path, doc: Any) -> None:
    from refcoco_edit.workspace import atomic_write_bytes

    with writing(path):
        atomic_write_bytes(path, json.dumps(doc, indent=2, default=str).encode("utf-8"))


def run(plugin: TrainingPlugin, s: RunSettings, record: Optional[Dict[str, Any]] = None,
        desc: str = "train") -> Dict[str, Any]:
    """Run (or resume) ``plugin``'s training; returns {"step", "phase", "output_dir", "final"}.
    ``record``: the trainer's config, written to ``output_dir/config.json`` (with the phases)."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    out = Path(s.output_dir)
    acc = Accelerator(gradient_accumulation_steps=s.gradient_accumulation_steps, mixed_precision=s.mixed_precision,
                      kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    phases = plugin.phases()
    with acc.main_process_first():  # the main process fills caches (LLM prompts) the others then read
        sources = plugin.sources()
    torch.manual_seed(s.seed)  # the model's random initialisation (new modules), the same everywhere
    core = plugin.build_model()
    groups = plugin.module_groups(core)
    check_phases(phases, groups, sources)
    for p in phases:
        if p.steps and len(sources[p.data]) == 0:
            raise UsageError(f"phase {p.name!r}: its sample source {p.data!r} is empty")
    total = sum(p.steps for p in phases)
    stop = total if s.max_steps is None else min(int(s.max_steps), total)

    step, i = 0, _next_phase(phases, 0, 0)
    ck = find_resume(out, s.resume)
    state: Dict[str, Any] = {}
    if ck is not None:
        state = read_state(ck)
        step = int(state["step"])
        i = int(state.get("phase_index", phase_index(phases, step)))
        if i >= len(phases) or ("phase" in state and state["phase"] != phases[i].name):
            raise UsageError(f"resume: {ck} was written in phase {state.get('phase')!r} (index {i}) but this run's "
                             f"phases are {', '.join(p.name for p in phases)}; resume with the schedule it was written "
                             "with")
    cur = _enter_phase(acc, plugin, core, groups, phases, i, s, None)
    if ck is not None:
        acc.load_state(str(ck))
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale(out)
        _write_json(out / "config.json", dict(record or {}, phases=phases_dict(phases)))
        plugin.prepare_run(out)
        trim_log(out / "log.jsonl", step)
        if (out / PHASES_FILE).exists():
            _write_json(out / PHASES_FILE, _phase_records(out, step, phases))
    acc.wait_for_everyone()
    log_path = out / "log.jsonl"
    log = log_path.open("a") if acc.is_main_process else None

    from tqdm.auto import tqdm

    bar = tqdm(total=stop, initial=min(step, stop), disable=not acc.is_main_process, desc=desc)
    try:
        step, cur = _loop(acc, plugin, core, groups, phases, sources, s, cur, step, stop, out, bar, log, log_path)
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
            with writing(tmp):
                plugin.save_final(core, tmp)
            publish_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return {"step": step, "phase": cur.phase.name, "output_dir": str(out), "final": str(final)}


def _loop(acc: Any, plugin: TrainingPlugin, core: Any, groups: Mapping[str, List[Any]], phases: Sequence[Phase],
          sources: Mapping[str, Any], s: RunSettings, cur: PhaseState, step: int, stop: int, out: Path, bar: Any,
          log: Any, log_path: Path) -> Tuple[int, PhaseState]:
    """Optimizer steps from ``step`` to ``stop`` across phases, logging and checkpointing."""
    import torch

    G = s.gradient_accumulation_steps
    while step < stop:
        nxt = _next_phase(phases, cur.index, step)
        if nxt != cur.index:
            cur = _enter_phase(acc, plugin, core, groups, phases, nxt, s, cur)
        model, opt, sched = cur.model, cur.optimizer, cur.scheduler
        source = sources[cur.phase.data]
        model.train()
        sums: Dict[str, float] = {}
        for a in range(G):
            k = step * G + a
            idx = micro_batch_indices(k, len(source), s.batch_size, s.seed, acc.process_index, acc.num_processes)
            batch = plugin.collate([source.get(j, e) for e, j in idx], core)
            batch = {n: v.to(acc.device) if hasattr(v, "to") else v for n, v in batch.items()}
            gen = torch.Generator(device=acc.device).manual_seed(micro_batch_seed(s.seed, k, acc.process_index))
            with acc.accumulate(model):
                with acc.autocast():
                    terms = plugin.loss(model, core, batch, gen)
                acc.backward(terms["loss"])
                if acc.sync_gradients and s.max_grad_norm:
                    acc.clip_grad_norm_(cur.params, s.max_grad_norm)
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
        rec = {"step": step, "phase": cur.phase.name, "lr": sched.get_last_lr()[0], **sums}
        if log is not None:
            with writing(log_path):
                log.write(json.dumps(rec) + "\n")
                log.flush()
        bar.update(1)
        bar.set_postfix({n: f"{v:.4f}" for n, v in sums.items() if n in plugin.progress_terms})
        if step == phase_bounds(phases)[cur.index][1]:
            _phase_end(acc, core, out, cur, phases, step, len(source))
        if s.checkpoint_every and step % s.checkpoint_every == 0:
            _save_checkpoint(acc, out, step, cur, phases, s)
    return step, cur


def _weights_digest(acc: Any, core: Any) -> List[List[float]]:
    """(sum, sum of squares) in float64 of every parameter of the model, one pair per process."""
    import torch

    with torch.no_grad():
        a = sum(float(p.detach().double().sum()) for p in core.parameters())
        b = sum(float(p.detach().double().pow(2).sum()) for p in core.parameters())
    t = acc.gather(torch.tensor([[a, b]], dtype=torch.float64, device=acc.device))
    return [[float(x), float(y)] for x, y in t.cpu().tolist()]


def _phase_end(acc: Any, core: Any, out: Path, cur: PhaseState, phases: Sequence[Phase], step: int,
               n_samples: int) -> None:
    """At a phase's last step: check that every process holds the same weights (DDP kept them in
    step) and record the phase in ``output_dir/phases.json``."""
    digests = _weights_digest(acc, core)
    if any(d != digests[0] for d in digests):
        raise RuntimeError(f"phase {cur.phase.name!r}: the processes' weights differ at step {step} ({digests}): "
                           "their gradients were not all-reduced")
    if acc.is_main_process:
        entry = {"phase": cur.phase.name, "index": cur.index, "end_step": step, "steps": cur.phase.steps,
                 "modules": list(cur.phase.modules), "data": cur.phase.data, "samples": n_samples,
                 "trained_parameters": sum(p.numel() for p in cur.params), "weights_digest": digests}
        _write_json(out / PHASES_FILE, _phase_records(out, step - 1, phases) + [entry])


def _phase_records(out: Path, step: int, phases: Sequence[Phase]) -> List[Dict[str, Any]]:
    """The records of ``phases.json`` of this schedule's phases that ended at or before ``step``
    (a resumed run drops those of a run killed past its checkpoint, or of another schedule)."""
    f = out / PHASES_FILE
    try:
        recs = json.loads(f.read_text(encoding="utf-8")) if f.is_file() else []
    except ValueError:
        recs = []
    ends = {(p.name, b) for p, (_, b) in zip(phases, phase_bounds(phases))}
    return [r for r in recs if isinstance(r, dict) and isinstance(r.get("end_step"), int) and r["end_step"] <= step
            and (r.get("phase"), r["end_step"]) in ends]


def _save_checkpoint(acc: Any, out: Path, step: int, cur: PhaseState, phases: Sequence[Phase], s: RunSettings) -> None:
    """``checkpoints/step-N``: accelerate's state + trainer_state.json, published only when complete."""
    ck = step_dir(out, step)
    tmp = ck.with_name(f".{ck.name}.tmp")
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    start = phase_bounds(phases)[cur.index][0]
    try:
        with writing(tmp):
            acc.save_state(str(tmp))
            acc.wait_for_everyone()
            if acc.is_main_process:
                (tmp / STATE_FILE).write_text(json.dumps({"step": step, "phase": cur.phase.name,
                                                          "phase_index": cur.index, "phase_step": step - start}))
                publish_dir(tmp, ck)  # complete: now resume may take it
    except BaseException:
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if acc.is_main_process and s.checkpoints_total_limit:
        for old in list_checkpoints(out)[: -s.checkpoints_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
