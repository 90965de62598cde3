"""What the tiny-torch-model test modules share: the offline environment of their subprocesses and
one intra-op thread while they run.

    from support.torch_env import OFFLINE, one_torch_thread  # noqa: F401 - an autouse fixture

``one_torch_thread`` is a module-scoped autouse fixture: imported into a test module, it applies to
that module only.
"""
from __future__ import annotations

import pytest

# no hub access in a subprocess (the tests' models are all local folders)
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch intra-op thread for the module (on 2 shared, busy cores, 2 threads thrash: measured
    0.03 s vs 0.1-2 s for one tiny-UNet forward), then the previous count back."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
