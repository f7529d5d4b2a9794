"""Spread of the hidden representation and the encoder rows of a two-layer ReLU model.

For modules that expose ``representation(x, generator) -> h (B, H)`` (the hidden activations of a
lightly noised input), ``weight`` (H, d), the encoder rows, and ``data_mean`` (d,): ReLUDAE and
ReLUDiffusion.
"""

from __future__ import annotations

import lightning as L
import torch

from callbacks.periodic import EveryNSteps
from core.eval.memorization import activation_spread, active_row_cosine
from modules.media import log_images, log_measurement


class RepresentationCallback(EveryNSteps):
    """Every ``every_n_steps`` (and at ``max_steps``) on rank 0, on up to ``n`` training examples:
    log ``representation/{cv,std,l4_l2,active_frac}`` (core.eval.memorization) and
    ``representation/row_cosine`` (mean max cosine of active rows to the centred training images),
    and an image of the ``n_rows`` encoder rows with the largest norms."""

    def __init__(self, every_n_steps: int = 1000, n: int = 512, n_rows: int = 64, seed: int = 0) -> None:
        self.every_n_steps, self.n, self.n_rows, self.seed = every_n_steps, n, n_rows, seed
        self.last: dict[str, float] = {}

    @torch.no_grad()
    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        if not trainer.is_global_zero:
            return {}
        for attr in ("representation", "weight", "data_mean"):
            if not hasattr(pl_module, attr):
                raise ValueError(
                    f"RepresentationCallback needs a module with `{attr}` (ReLUDAE, ReLUDiffusion); "
                    f"{type(pl_module).__name__} has none"
                )
        gen = torch.Generator().manual_seed(self.seed)
        train = trainer.datamodule.train_tensor().float()
        train = train[torch.randperm(len(train), generator=gen)[: self.n]].to(pl_module.device)
        h = pl_module.representation(train, generator=gen).cpu()
        weight = pl_module.weight.detach().float().cpu()
        self.last = {f"representation/{k}": v for k, v in activation_spread(h).items()}
        self.last["representation/row_cosine"] = active_row_cosine(
            weight, train.cpu() - pl_module.data_mean.cpu()
        )
        log_measurement(trainer, self.last)
        side = int(round(weight.shape[1] ** 0.5))
        if side * side == weight.shape[1]:
            rows = weight[weight.norm(dim=1).argsort(descending=True)[: self.n_rows]]
            rows = rows / rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)  # each row to [-1, 1]
            log_images(trainer, "representation/encoder_rows", rows.reshape(-1, 1, side, side), nrow=8)
        return self.last
