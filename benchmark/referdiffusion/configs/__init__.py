"""The shipped ReferDiffusion training configs (the paper's ablation rows), installed with the package.

``refcoco-edit train --config NAME`` (or ``builtin:NAME``) names one of them:

* ``1_finetune`` - plain InstructPix2Pix fine-tuned on RefCOCO-Edit (no REM, no RCL);
* ``2_rem``      - + the Region-Embedder Module and its mask / edit-embedding losses;
* ``3_rem_rcl``  - + the Region-Control Loss;
* ``4_selfsup``  - stage 1 of the full method (self-supervised "Paint a ..." samples); stage 2
  is ``3_rem_rcl`` started from its final model.

A checkout also has them as ``configs/referdiffusion/NAME.yaml`` (links to these files).
"""
from __future__ import annotations

from pathlib import Path

from refcoco_edit.benchmark.training.configs import PREFIX, ShippedConfigs

__all__ = ["PREFIX", "names", "path", "resolve"]

_SHIPPED = ShippedConfigs(Path(__file__).parent, "ReferDiffusion")
names = _SHIPPED.names
path = _SHIPPED.path
resolve = _SHIPPED.resolve
