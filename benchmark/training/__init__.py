"""The training core shared by ReferDiffusion and FreeEdit: one loop, phases, checkpoints, bit-exact
resume, DDP through accelerate, logging.

* :mod:`.phases`      - the phase schedule (which module groups train, on which samples, at which LR);
* :mod:`.plugin`      - what a model gives the core (:class:`TrainingPlugin`);
* :mod:`.stream`      - the deterministic micro-batch stream (a pure function of seed, step, process);
* :mod:`.checkpoints` - checkpoint folders, atomic publishing, the trimmed log;
* :mod:`.core`        - :func:`run`, the loop;
* :mod:`.configs`     - the shipped YAML configs of a trainer, found by name;
* :mod:`.entry`       - a trainer's command-line entry (``--config``, overrides, exit codes).

Nothing here imports torch at module import time.
"""
from __future__ import annotations

from .core import RunSettings, run
from .phases import Phase, parse_phases
from .plugin import SampleSource, TrainingPlugin
from .stream import micro_batch_indices, micro_batch_seed

__all__ = ["RunSettings", "run", "Phase", "parse_phases", "SampleSource", "TrainingPlugin", "micro_batch_indices",
           "micro_batch_seed"]
