"""Shard functions for executors that run them in other processes or machines (Ray).

``ShardTask`` is picklable: it carries the build config (local paths made absolute) and the
stage's name, and, called inside a worker, builds that process's ``BuildContext`` once (cached
per config, so the stages of a build share it and its loaded models) and returns the stage's
``run_shard`` bound to it.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict

from ..workspace import Workspace
from .context import BuildContext, resolve_data

if TYPE_CHECKING:
    from .config import BuildConfig

ShardFn = Callable[[int], Dict[str, Any]]
SHARD_STAGES = ("prompts", "generate")
_DATA_PATHS = ("out", "refcoco", "images", "exemplar_dir")
_WORKER_CONTEXTS: Dict[str, BuildContext] = {}


def stage_fn(ctx: BuildContext, stage: str) -> ShardFn:
    """``run_shard`` of stage ``prompts`` or ``generate``, bound to ``ctx``."""
    from . import generate, prompts

    mod = {"prompts": prompts, "generate": generate}[stage]
    return functools.partial(mod.run_shard, ctx)


def absolute_paths(cfg: "BuildConfig") -> "BuildConfig":
    """The config with local paths made absolute (a worker's working folder may differ); a model
    given as a hub id stays as it is. On a cluster these paths must mean the same on every node."""
    from .backend import model_needs, resolve_sam_checkpoint

    names = list(_DATA_PATHS) + ["clip_model"]
    if cfg.backend == "diffusion":
        names += [n.setting for n in model_needs(cfg)]
    changes: Dict[str, Any] = {}
    for name in names:
        value = getattr(cfg, name)
        if value and (name in _DATA_PATHS or Path(value).exists()):
            changes[name] = str(Path(value).expanduser().resolve())
    if cfg.backend == "diffusion":
        sam = resolve_sam_checkpoint(cfg)  # "auto" looks in the driver's working folder
        changes["sam_checkpoint"] = str(Path(sam).resolve()) if sam else "none"
    return dataclasses.replace(cfg, **changes)


class ShardTask:
    """A picklable shard-function factory: (build config, stage name).

    Called inside a worker process (a Ray actor), it builds that process's ``BuildContext`` once
    (the RefCOCO index, and with ``--backend diffusion`` every model, loaded up front so that a
    model that cannot be loaded is an ``InputError``) and returns the stage's shard function.
    Contexts are cached per config, so the stages of a build share them within a process."""

    def __init__(self, cfg: "BuildConfig", stage: str):
        if stage not in SHARD_STAGES:
            raise ValueError(f"not a shard stage: {stage!r} (one of {', '.join(SHARD_STAGES)})")
        self.cfg = absolute_paths(cfg)
        self.stage = stage

    def __call__(self) -> ShardFn:
        key = json.dumps(dataclasses.asdict(self.cfg), sort_keys=True, default=str)
        ctx = _WORKER_CONTEXTS.get(key)
        if ctx is None:
            ctx = BuildContext(self.cfg, Workspace(self.cfg.out), resolve_data(self.cfg))
            _WORKER_CONTEXTS.clear()  # one build per worker process at a time
            _WORKER_CONTEXTS[key] = ctx
        if self.stage == "generate" and self.cfg.backend == "diffusion":
            ctx.backend.load_models()  # idempotent: pipelines are kept by the backend
        return stage_fn(ctx, self.stage)
