"""Label Studio review of RefCOCO-Edit samples: push tasks, pull and reconcile reviews.

* ``config``  the labeling config, generated from one place; tag names read back from a config;
              brush masks <-> Label Studio RLE through the SDK's converter
* ``client``  the connection (label-studio-sdk), the token from ``$LABEL_STUDIO_API_KEY``, errors
              that never show it
* ``push``    project + one task per sample with pre-filled predictions; images as local files
* ``pull``    export snapshot -> ``WORKDIR/review/reviews.parquet`` (atomic, idempotent)
* ``cli``     ``refcoco-edit review push|pull``

Nothing here is imported by ``refcoco_edit``'s core; label_studio_sdk is imported only when a
push or a pull runs.
"""
