"""Logging of an evaluation sweep (``study.eval_sweep``: the trained model re-tested at each value of a
module attribute, e.g. ``sample_nfe``) so that every re-evaluation is kept.

Each re-test logs the same keys at the same step as the first test; W&B would show only the last one.
During a re-test at ``param=value`` every logged key therefore carries the suffix ``/<param>_<value>``
(``test/sliced_w2/sample_nfe_6``), in every logger and in history.csv; after the sweep, a W&B table
``test/sweep/<param>`` (one row per value, one column per metric) and a line plot of each metric
against the swept value (``test/sweep/<metric>_vs_<param>``) show the curve the paper draws."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import lightning as L
from lightning.pytorch.loggers.logger import Logger

from callbacks.history import HistoryCallback

KEEP = ("epoch", "trainer/global_step")  # step keys, not measurements


def suffix_of(param: str, value: Any) -> str:
    return f"/{param}_{value:g}" if isinstance(value, float) else f"/{param}_{value}"


class SuffixedLogger(Logger):
    """Forwards to ``inner`` with ``suffix`` appended to every metric key (modules.media reads ``inner``
    to find the W&B logger for media)."""

    def __init__(self, inner: Logger, suffix: str) -> None:
        super().__init__()
        self.inner, self.suffix = inner, suffix

    @property
    def name(self) -> str | None:
        return self.inner.name

    @property
    def version(self) -> int | str | None:
        return self.inner.version

    @property
    def save_dir(self) -> str | None:
        return self.inner.save_dir

    @property
    def experiment(self) -> Any:
        return self.inner.experiment

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.inner.log_metrics({k if k in KEEP else k + self.suffix: v for k, v in metrics.items()}, step=step)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # the run's config was logged when it started

    def save(self) -> None:
        self.inner.save()


@contextmanager
def sweep_point(trainer: L.Trainer, param: str, value: Any) -> Iterator[None]:
    """Within it, everything the trainer logs carries the suffix of ``param=value``."""
    suffix = suffix_of(param, value)
    loggers = list(trainer.loggers)
    history = [cb for cb in trainer.callbacks if isinstance(cb, HistoryCallback)]
    trainer.loggers = [SuffixedLogger(lg, suffix) for lg in loggers]
    for cb in history:
        cb.key_suffix = suffix
    try:
        yield
    finally:
        trainer.loggers = loggers
        for cb in history:
            cb.key_suffix = ""


def log_sweep_table(trainer: L.Trainer, param: str, points: list[tuple[Any, dict[str, float]]]) -> None:
    """The sweep's curve in W&B: a table (``param`` and every metric of the re-tests) and a line plot of
    each metric against ``param``, at the trainer's step. A no-op without a W&B logger or off rank 0."""
    from modules.media import _wandb

    wb = _wandb(trainer)
    if wb is None or not trainer.is_global_zero or not points:
        return
    import wandb

    metrics = sorted({k for _, m in points for k in m if k.startswith("test/")})
    rows = [[value, *[m.get(k) for k in metrics]] for value, m in points]
    table = wandb.Table(columns=[param, *metrics], data=rows)
    out: dict[str, Any] = {f"test/sweep/{param}": table, "trainer/global_step": trainer.global_step}
    for key in metrics:
        name = key.removeprefix("test/").replace("/", "_")
        out[f"test/sweep/{name}_vs_{param}"] = wandb.plot.line(table, param, key, title=f"{key} vs {param}")
    wb.experiment.log(out)
