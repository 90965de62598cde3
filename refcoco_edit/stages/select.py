"""The select stage: one shard holding every planned sample (object + edit), with its report.

It wraps the selection rules of ``refcoco_edit.select`` (the paper's two rules, with scores): the
build settings become a ``SelectionConfig``, and with the classical backend only categories the
exemplar bank can cut from another image are offered as replacement targets, and replacement
targets must fit the source box (``refcoco_edit.prompts.fit``; typical aspects measured by the bank).
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Dict

from ..schema import rows_to_table
from .context import BuildContext

if TYPE_CHECKING:
    from .config import BuildConfig
    from ..select import SelectionConfig


def selection_config(cfg: "BuildConfig") -> "SelectionConfig":
    """The selection rules' settings of this build."""
    from ..select import SelectionConfig

    return SelectionConfig(
        num_images=cfg.num_images or None,
        samples_per_image=cfg.samples_per_image,
        splits=cfg.splits,
        edit_types=tuple(cfg.edit_types),
        **dataclasses.asdict(cfg.selection),  # the rules' thresholds: the same names on both sides
        imaginative_targets=cfg.backend != "classical",
    )


def run(ctx: BuildContext) -> Dict[str, Any]:
    """Run (or reuse) the select shard; returns its stats (``report``: the selection report)."""
    from ..select import Selector

    stage = ctx.ws.stage("select")
    if stage.is_done(0):
        return stage.stats(0)
    cfg = ctx.cfg
    available = ctx.bank.categories() if cfg.backend == "classical" else None
    result = Selector(ctx.refer, selection_config(cfg), seed=cfg.seed, available_categories=available,
                      category_aspects=ctx.bank.aspects()).run()
    stage.write_shard(0, rows_to_table(result.rows), {"report": result.report}, result.quarantine)
    ctx.forget_plan()
    return stage.stats(0)
