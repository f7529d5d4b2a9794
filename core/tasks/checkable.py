"""Tasks whose answers can be checked exactly (Prism's test beds), built from a plain spec.

``make_task({"name": "arith", "op": "mul", "a_digits": 3, "b_digits": 1})`` or ``{"name": "sudoku",
"n_blanks": 11}``. Every task offers the same interface (core.tasks.arith's docstring lists it)."""

from __future__ import annotations

import dataclasses

from core.tasks.arith import ArithTask
from core.tasks.sudoku import SudokuTask

TASKS = {"arith": ArithTask, "sudoku": SudokuTask}


def make_task(spec: dict, key: str = "task"):
    """Build the task named ``spec["name"]`` with the rest of ``spec`` as its fields; an unknown name or
    field raises ValueError naming ``key`` and the valid choices."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in TASKS:
        raise ValueError(f"{key}.name {name!r}: expected one of {sorted(TASKS)}")
    cls = TASKS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(spec) - fields)
    if unknown:
        raise ValueError(f"{key}: {name} has no field(s) {unknown}; its fields are {sorted(fields)}")
    return cls(**spec)
