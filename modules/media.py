"""What modules and callbacks log outside Lightning's ``self.log``: measurements (scalars taken at one
step) through ``log_measurement``, and media (figures, image lists, tables) to W&B when a WandbLogger is
attached, otherwise to files in the run's output folder (``trainer.default_root_dir``/media). Rank 0
only. A measurement and its media share the step (``trainer.global_step``) and the key prefix.

It lives at the modules level rather than in callbacks/ or suite/: it needs the Trainer and its
loggers (so not core/), LightningModules log samples through it (so not callbacks/, which modules
never import), and suite/ sits above modules. Callbacks, on the same level, import it from here.
The pure image-grid making is core.utils.figures."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

from core.utils.figures import to_uint8_grid


def _wandb(trainer: L.Trainer):
    for logger in trainer.loggers:
        logger = getattr(logger, "inner", logger)  # an evaluation sweep wraps the loggers (suite/sweep_log.py)
        if isinstance(logger, WandbLogger):
            return logger
    return None


def log_measurement(trainer: L.Trainer, values: dict[str, float]) -> None:
    """Log one measurement once, at the step where it was taken (``trainer.global_step``).

    The values go straight to every logger (W&B receives ``trainer/global_step`` in the same row and no
    ``step=``, which W&B drops when it is below the run's step, as after a resume), to callbacks with an
    ``on_measurement(trainer, step, values)`` hook (history.csv), and into ``trainer.callback_metrics``
    (what results.json and the claims read), as float32 tensors like ``self.log`` keeps them. Lightning's
    ``self.log(..., on_step=True)`` from a callback would instead keep the value in its results and
    re-send it with every later logging step, at a step one below the measurement's, until the next
    measurement. Callers call it on global rank 0."""
    if not values:
        return
    values = {k: float(v) for k, v in values.items()}
    for key, value in values.items():
        trainer.callback_metrics[key] = torch.tensor(value, dtype=torch.get_default_dtype())
    if not trainer.is_global_zero:
        return
    step = trainer.global_step
    for logger in trainer.loggers:
        logger.log_metrics(values, step=step)
    for callback in trainer.callbacks:
        hook = getattr(callback, "on_measurement", None)
        if callable(hook):
            hook(trainer, step, values)


def media_dir(trainer: L.Trainer) -> Path:
    path = Path(trainer.default_root_dir) / "media"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _fname(key: str, step: int, ext: str) -> str:
    return f"{key.replace('/', '_')}_step{step:07d}.{ext}"


def log_figure(trainer: L.Trainer, key: str, fig) -> None:
    """Log a matplotlib figure (and close it)."""
    import matplotlib.pyplot as plt

    if trainer.is_global_zero:
        wb = _wandb(trainer)
        if wb is not None:
            import wandb

            wb.experiment.log({key: wandb.Image(fig), "trainer/global_step": trainer.global_step})
        else:
            fig.savefig(media_dir(trainer) / _fname(key, trainer.global_step, "png"), dpi=110, bbox_inches="tight")
    plt.close(fig)


def log_images(trainer: L.Trainer, key: str, images: torch.Tensor, captions: list[str] | None = None,
               nrow: int = 8) -> None:
    """Log images (B, C, H, W) in [-1, 1]: a W&B image list with captions, or one PNG grid."""
    if not trainer.is_global_zero:
        return
    wb = _wandb(trainer)
    if wb is not None:
        import wandb

        imgs = [wandb.Image(to_uint8_grid(im[None], 1), caption=(captions[i] if captions else None))
                for i, im in enumerate(images)]
        wb.experiment.log({key: imgs, "trainer/global_step": trainer.global_step})
        return
    from PIL import Image

    path = media_dir(trainer) / _fname(key, trainer.global_step, "png")
    Image.fromarray(to_uint8_grid(images, nrow).squeeze()).save(path)
    if captions:
        path.with_suffix(".txt").write_text("\n".join(captions) + "\n")


def log_table(trainer: L.Trainer, key: str, columns: list[str], rows: list[list]) -> None:
    """Log a table: a W&B Table (torch image tensors become wandb.Image), or a CSV file."""
    if not trainer.is_global_zero:
        return
    wb = _wandb(trainer)
    if wb is not None:
        import wandb

        def cell(v):
            return wandb.Image(to_uint8_grid(v[None], 1)) if isinstance(v, torch.Tensor) and v.ndim == 3 else v

        table = wandb.Table(columns=columns, data=[[cell(v) for v in row] for row in rows])
        wb.experiment.log({key: table, "trainer/global_step": trainer.global_step})
        return
    with open(media_dir(trainer) / _fname(key, trainer.global_step, "csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["<image>" if isinstance(v, torch.Tensor) and v.ndim >= 2 else v for v in row])
