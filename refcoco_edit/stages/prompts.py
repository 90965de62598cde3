"""The prompts stage: each selected sample gets its instruction text P and the exact character
spans of its referring part and edit part.

Templates come from ``refcoco_edit.prompts`` (seeded per sample, optionally paraphrased offline);
with ``--llm-model`` each template prompt is rewritten (or, ``--llm-mode propose``, the edit is
chosen) by an LLM through ``refcoco_edit.pipelines.rephrase``, per shard or, ``--llm-batch``,
through the Batch API before the shards run (the shards then read the answers from the cache).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

from ..errors import SampleError
from ..schema import rows_to_table
from ..seeds import derive_seed, rng_for
from ..workspace import quarantine_record
from .context import BuildContext


def template_prompts(ctx: BuildContext, i: int) -> Tuple[List[Dict[str, Any]], List[Any], List[Dict[str, Any]]]:
    """The rows of shard ``i`` with their template prompts, and the quarantine records of the
    rows whose prompt could not be made."""
    from ..prompts import TemplateParaphraser, make_prompt

    cfg = ctx.cfg
    para = TemplateParaphraser() if cfg.paraphrase else None
    rows, prompts, quarantine = [], [], []
    for row in ctx.plan_rows(i):
        try:
            p = make_prompt(row["edit_type"], row["referring_expression"], row["edit_target"],
                            rng_for(cfg.seed, row["sample_id"], "prompt"), paraphraser=para)
            p.validate()
        except (SampleError, ValueError) as e:
            quarantine.append(quarantine_record("prompts", row["sample_id"], getattr(e, "reason", "prompt_error"), str(e)))
            continue
        rows.append(row)
        prompts.append(p)
    return rows, prompts, quarantine


def llm_items(ctx: BuildContext, rows: List[Dict[str, Any]], prompts: List[Any]) -> List[Dict[str, Any]]:
    """The LLM requests of these rows (seeded per sample; in propose mode, the targets allowed)."""
    cfg = ctx.cfg
    allowed_replace = ctx.bank.categories() if cfg.backend == "classical" else None
    items = []
    for row, p in zip(rows, prompts):
        item = {"sample_id": row["sample_id"], "edit_type": row["edit_type"], "edit_target": row["edit_target"],
                "referring_expression": row["referring_expression"], "category": row["category"], "prompt": p,
                "seed": derive_seed(cfg.seed, row["sample_id"], "llm")}
        if cfg.llm.mode == "propose":
            if row["edit_type"] == "replace" and allowed_replace is not None:
                item["allowed_targets"] = [c for c in allowed_replace if c != row["category"]]
            elif row["edit_type"] == "attribute":
                from ..vocab import COLOURS, MATERIALS

                item["allowed_targets"] = list(COLOURS) + list(MATERIALS)
        items.append(item)
    return items


def _with_llm(ctx: BuildContext, rows: List[Dict[str, Any]], prompts: List[Any],
              quarantine: List[Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """The rows with the LLM's prompts (refusals quarantined), and the shard's LLM counts.
    A failing service raises: the shard is not written and is redone by the next run."""
    llm = ctx.llm()
    calls0, hits0 = llm.calls, llm.cache_hits
    out = []
    for row, res in zip(rows, llm.write(llm_items(ctx, rows, prompts))):
        if isinstance(res, Exception):
            quarantine.append(quarantine_record("prompts", row["sample_id"], getattr(res, "reason", "llm_error"), str(res)))
            continue
        if ctx.cfg.llm.mode == "propose" and row["sample_id"] in llm.targets:
            from ..schema import sample_id

            row["edit_target"] = llm.targets[row["sample_id"]] if row["edit_type"] != "remove" else ""
            row["sample_id"] = sample_id(row["dataset"], row["ref_id"], row["sent_id"], row["edit_type"], row["edit_target"])
        row.update(prompt=res.text, referring_span=list(res.referring_span), edit_span=list(res.edit_span),
                   prompt_source=res.source)
        out.append(row)
    return out, {"llm_calls": llm.calls - calls0, "llm_cache_hits": llm.cache_hits - hits0}


def run_shard(ctx: BuildContext, i: int) -> Dict[str, Any]:
    """Write prompts shard ``i`` (rows with prompt and spans; failures quarantined); its stats."""
    rows, prompts, quarantine = template_prompts(ctx, i)
    if ctx.cfg.llm.model:
        out, stats = _with_llm(ctx, rows, prompts, quarantine)
    else:
        out, stats = [], {}
        for row, p in zip(rows, prompts):
            row.update(prompt=p.text, referring_span=list(p.referring_span), edit_span=list(p.edit_span),
                       prompt_source=p.source)
            out.append(row)
    stage = ctx.ws.stage("prompts")
    stage.write_shard(i, rows_to_table(out), stats, quarantine)
    return stage.stats(i)


def llm_batch(ctx: BuildContext, shards: List[int], log: Callable[[str], None]) -> Dict[str, int]:
    """Bulk mode: answer every LLM request of these shards through the Batch API first."""
    from refcoco_edit.pipelines.rephrase import BatchRunner

    items: List[Dict[str, Any]] = []
    for i in shards:
        rows, prompts, _ = template_prompts(ctx, i)
        items.extend(llm_items(ctx, rows, prompts))
    runner = BatchRunner(ctx.llm(), ctx.ws.root / "llm" / "batches.json", poll_interval=ctx.cfg.llm.batch_poll, log=log)
    return runner.run(items)
