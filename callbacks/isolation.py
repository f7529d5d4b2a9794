"""A measurement leaves the run as it found it.

The measurement callbacks (memorization, GenEval, sharpness) draw their noise from their own seeded
generators. Code they call may still touch shared state: a helper that seeds the global torch RNG
(core.eval.features.train_feature_net does), a layer that draws from it, or the module's network
evaluation counter (``pl_module.nfe``). ``measuring(pl_module)`` restores all three on exit, so
training and the module's own evaluation continue exactly as without the callback
(tests/callbacks/test_measurement_matrix.py checks the loss curve bit for bit).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def measuring(pl_module: torch.nn.Module) -> Iterator[None]:
    """The global CPU RNG, the RNG of the module's CUDA device and ``pl_module.nfe`` are restored
    when the block exits."""
    param = next(pl_module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    counter = getattr(pl_module, "nfe", None)
    counted = counter.state_dict() if hasattr(counter, "state_dict") else None
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        if counted is not None:
            counter.load_state_dict(counted)
