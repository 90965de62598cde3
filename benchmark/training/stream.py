"""The deterministic micro-batch stream and the image -> tensor helpers every trainer shares.

Micro-batch ``k`` of a run is a pure function of (seed, k, process index): epoch ``e`` of a
sample source visits ``randperm(n, seed + e)``, the global stream is the concatenation of the
epochs cut into global batches of ``batch_size * num_processes``, and each process takes its
slice; the noise, timesteps and condition dropout of micro-batch ``k`` come from a
``torch.Generator`` seeded with :func:`micro_batch_seed`. A resumed run therefore needs no data
state to continue bit for bit.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

__all__ = ["micro_batch_indices", "micro_batch_seed", "to_tensor", "resize"]


def micro_batch_indices(k: int, n: int, batch_size: int, seed: int, process_index: int = 0,
                        num_processes: int = 1) -> List[Tuple[int, int]]:
    """(epoch, sample index) pairs of micro-batch ``k`` for one process: the global stream is the
    concatenation of ``randperm(n)`` per epoch, cut into global batches of ``batch_size *
    num_processes``, and each process takes its slice."""
    import torch

    if n <= 0:
        raise ValueError("micro_batch_indices: the sample source is empty")
    gb = batch_size * num_processes
    start = k * gb + process_index * batch_size
    out = []
    perms = {}
    for pos in range(start, start + batch_size):
        epoch, j = divmod(pos, n)
        if epoch not in perms:
            perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        out.append((epoch, perms[epoch][j]))
    return out


def micro_batch_seed(seed: int, k: int, process_index: int) -> int:
    """The seed of micro-batch ``k``'s ``torch.Generator`` on process ``process_index``."""
    return int(np.random.SeedSequence([seed, k, process_index]).generate_state(1)[0])


def to_tensor(a: np.ndarray):
    """HxWx3 uint8 -> 3xHxW float tensor in [-1, 1] (the VAE's input range)."""
    import torch

    return torch.from_numpy(np.array(a, copy=True)).permute(2, 0, 1).float() / 127.5 - 1


def resize(a: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    """``a`` (an image, or a 0/1 mask as uint8) resized to ``size`` x ``size`` (area for images,
    nearest for masks); returned as is when it already has that size."""
    import cv2

    if a.shape[:2] == (size, size):
        return a
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return cv2.resize(a.astype(np.uint8), (size, size), interpolation=interp)
