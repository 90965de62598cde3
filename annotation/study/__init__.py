"""A blind human study of *editors* in Label Studio (the paper's Table 3), its inter-rater
agreement, and which automatic metric agrees with people.

* ``runs``      score runs read as plain files (results.json, samples.parquet, outputs/): the
                study never imports ``refcoco_edit.benchmark`` (the import contract)
* ``labeling``  the rating interface's labeling config (per output: quality 1-5, consistency
                1-5; a best-output preference), tag names read back from a config
* ``push``      ``study push``: project + one task per sample, outputs blind and shuffled per task;
                the slot -> method mapping stays in ``STUDY/study_state.json``, never in a task
* ``pull``      ``study pull``: export snapshot -> ratings (de-blinded on our side)
* ``stats``     Table 3 means with bootstrap CIs, Krippendorff's alpha, metric-human alignment
* ``outputs``   ratings.parquet, study.json (``refcoco_edit.study_format``), study.md, plots/
* ``cli``       ``refcoco-edit study push|pull``
"""
