"""The steps of a score run, wired together by ``refcoco_edit.benchmark.harness.run_score``.

``config`` (``ScoreConfig``, ``JudgeSettings``: the settings, light enough for ``--help``),
``cache`` (run.json and the output cache, outputs/), ``items`` (a sample's state in the pass:
cache lookup, decoding), ``editing`` (batches, output checks), ``ray`` (``--executor ray``),
``samples`` (records, metrics, thumbnails), ``aggregate`` (means and bootstrap CIs). The report
of a run is the sibling ``report`` package. Nothing is imported here: import the module you need.
"""
