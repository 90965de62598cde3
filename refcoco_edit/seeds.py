"""Seeds derived from (global seed, keys): every random choice of a run is a pure function of
the run's seed and what it is about, so a resumed run is byte-identical to a clean one."""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np


def derive_seed(seed: int, *keys: Any) -> int:
    """A 63-bit seed from the global seed and any keys (sample_id, stage name, index...)."""
    text = "\x1f".join([str(int(seed))] + [str(k) for k in keys])
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") >> 1


def rng_for(seed: int, *keys: Any) -> np.random.Generator:
    """A numpy Generator seeded from (seed, *keys)."""
    return np.random.default_rng(derive_seed(seed, *keys))
