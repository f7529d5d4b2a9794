"""Plots samples of a generative module every N steps: a scatter over the data for 2-D modules,
an image grid for image modules."""

from __future__ import annotations

import lightning as L
import torch

from modules.media import log_figure, log_images


class SamplesCallback(L.Callback):
    """Calls ``pl_module.sample(n, generator=...)`` (modules/sampling.py's interface) on rank 0 every ``every_n_steps`` and at the end of
    training. 2-D samples are drawn over (a subsample of) ``datamodule.train_tensor()``; samples of
    shape (n, C, H, W), or flat (n, side*side), are shown as a grid."""

    def __init__(self, every_n_steps: int = 1000, n: int = 1000, seed: int = 0) -> None:
        self.every_n_steps, self.n, self.seed = every_n_steps, n, seed

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0:
            self.plot(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.plot(trainer, pl_module)

    @torch.no_grad()
    def plot(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        gen = torch.Generator().manual_seed(self.seed)
        x = pl_module.sample(self.n, generator=gen).x
        x = x.detach().float().cpu()
        if x.ndim == 2 and x.shape[1] == 2:
            self._scatter(trainer, x)
        elif x.ndim == 4 or (x.ndim == 2 and int(x.shape[1] ** 0.5) ** 2 == x.shape[1]):
            if x.ndim == 2:
                side = int(x.shape[1] ** 0.5)
                x = x.reshape(-1, 1, side, side)
            log_images(trainer, "samples/grid", x[:64])

    def _scatter(self, trainer: L.Trainer, x: torch.Tensor) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        dm = trainer.datamodule
        if dm is not None and hasattr(dm, "train_tensor"):
            data = dm.train_tensor()[: len(x)].cpu()
            ax.scatter(data[:, 0], data[:, 1], s=2, alpha=0.3, c="0.6", label="data")
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.6, c="C0", label="samples")
        ax.set_title(f"samples at step {trainer.global_step}")
        ax.set_aspect("equal")
        ax.legend(loc="upper right", markerscale=4)
        log_figure(trainer, "samples/scatter", fig)
