"""The shipped FreeEdit training configs, installed with the package.

``refcoco-edit train --model freeedit --config NAME`` (or ``builtin:NAME``) names one of them:

* ``freeedit``            - the three phases: base (projection + U-Net), detail (+ detail extractor
  + DRRA), quality (tuning on the best-scored accepted triplets; needs ``quality.scores``);
* ``freeedit_no_quality`` - the first two phases only (no score run needed).
"""
from __future__ import annotations

from pathlib import Path

from refcoco_edit.benchmark.training.configs import PREFIX, ShippedConfigs

__all__ = ["PREFIX", "names", "path", "resolve"]

_SHIPPED = ShippedConfigs(Path(__file__).parent, "FreeEdit")
names = _SHIPPED.names
path = _SHIPPED.path
resolve = _SHIPPED.resolve
