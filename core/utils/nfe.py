"""The suite's one counter of network evaluations and oracle calls.

Every sampler, RL rollout, search procedure and estimator charges its forward passes here, so
that "compute" means the same thing in every experiment:

* ``calls`` counts invocations of the wrapped function (one batched forward pass = 1 call);
* ``items`` counts the rows those calls processed (a batch of 64 = 64 items), which is the
  oracle-call count of the normalizing-constant estimators.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


class EvalCounter:
    """Counts evaluations of one or more functions.

    >>> counter = EvalCounter()
    >>> f = counter.wrap(lambda x: x + 1)
    >>> _ = f(torch.zeros(8, 2)); counter.calls, counter.items
    (1, 8)
    """

    def __init__(self) -> None:
        self.calls = 0
        self.items = 0

    def add(self, calls: int = 1, items: int = 0) -> None:
        self.calls += int(calls)
        self.items += int(items)

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.add(1, _batch_rows(args[0]) if args else 0)
            return fn(*args, **kwargs)

        return counted

    def reset(self) -> None:
        self.calls = 0
        self.items = 0

    def state_dict(self) -> dict[str, int]:
        return {"calls": self.calls, "items": self.items}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.calls, self.items = int(state["calls"]), int(state["items"])

    def __repr__(self) -> str:
        return f"EvalCounter(calls={self.calls}, items={self.items})"


def _batch_rows(x: Any) -> int:
    """Rows of the first argument: a tensor's leading dim, or the first part's of a tuple state."""
    if isinstance(x, (tuple, list)) and x:
        return _batch_rows(x[0])
    shape = getattr(x, "shape", None)
    return int(shape[0]) if shape else 0
