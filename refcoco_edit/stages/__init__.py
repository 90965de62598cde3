"""The stages of `refcoco-edit build`, one module each, wired together by ``refcoco_edit.build``.

Layering: this package sits at the CLI layer, with ``refcoco_edit.build`` and ``refcoco_edit.cli``.
Its modules may import ``refcoco_edit.pipelines`` (lazily, inside functions); the core modules of
``refcoco_edit`` (schema, refcoco, select, prompts, workspace, export, executors, ...) never import
this package. The stage modules wrap the core ones: ``stages.select`` runs the selection rules of
``refcoco_edit.select``, ``stages.prompts`` the templates of ``refcoco_edit.prompts``.

* ``context``   the per-process state every stage reads (``BuildContext``): config, workspace,
                the data, the RefCOCO index, the selection plan, lazily the exemplar bank, the
                LLM rephraser and the backend
* ``select``    ``run(ctx)``: the one select shard (objects and edits, with the selection report)
* ``prompts``   ``run_shard(ctx, i)``: instruction text and spans (templates or the LLM), and
                ``llm_batch`` (the Batch API path)
* ``exemplars`` ``ExemplarBank`` (instances cut from the data) and ``--exemplar-dir`` files
* ``backend``   the backend's pipelines: the models they need (checked up front, no torch),
                built from their self-description, loaded once per process, run with failures
                recorded per request
* ``generate``  ``run_shard(ctx, i)``: prepare (``PreparedSample``), run, assemble each sample
* ``export``    ``run(ctx, selection_report)``: Parquet + dataset card
* ``workers``   ``ShardTask``: the picklable shard-function factory of other processes (Ray)

Each shard function does all of a shard's work and writes it through the workspace (atomically,
stats last), so executors only decide where shards run.
"""
