"""Two-layer ReLU denoising autoencoder with tied weights (arXiv 2512.20963; docs/methods/relu_memorization.md).

    f(x) = mu + W^T relu(W (x - mu)),   loss = E |f(x0 + sigma eps) - x0|^2 / d,   one sigma (0.2).

``mu`` is the training-set mean image (a buffer set at fit start): the network has no bias, so
without centring every MNIST image shares a -1 background, all encoder rows fire on every image and
nothing can be stored per sample (we measured row cosines ~0.3 at n = 5 on raw [-1, 1] pixels).
Memorising regime: tiny n and long full-batch training; generalising regime: large n.

Test-time measures (on_test_epoch_end): denoising loss on the training and held-out sets and their
gap, the spread of the hidden representation of (noisy) training images, and the mean max cosine of
the active encoder rows to the mean-centred training images (core.eval.memorization).
"""

from __future__ import annotations

import torch
from torch import nn

from core.eval.memorization import activation_spread, active_row_cosine
from modules.base import GenLabModule

OPTIMIZERS = ("adam", "rmsprop", "sgd")


class ReLUDAE(GenLabModule):
    """Args:
    dim: input dimension (784 for 28x28, 196 for 14x14).
    width: hidden units H (rows of W).
    sigma: the single training noise level.
    optimizer: ``adam`` | ``rmsprop`` | ``sgd`` (full batch when the datamodule gives one batch).
    lr, weight_decay: optimiser settings (L2 weight decay clears the rows that store nothing).
    init_scale: W ~ init_scale * N(0, 1/d).
    center: subtract the training mean (see the module docstring).
    eval_noise_seed: fixed noise for the test-time losses and representations.
    """

    def __init__(
        self,
        dim: int = 784,
        width: int = 100,
        sigma: float = 0.2,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 1e-3,
        init_scale: float = 1.0,
        center: bool = True,
        eval_noise_seed: int = 1234,
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"module.optimizer={optimizer!r}; choose one of {OPTIMIZERS}")
        if sigma <= 0 or width < 1 or dim < 1:
            raise ValueError(f"module: need sigma > 0, width >= 1, dim >= 1; got {sigma}, {width}, {dim}")
        self.save_hyperparameters()
        self.weight = nn.Parameter(
            init_scale * torch.randn(width, dim) / dim**0.5
        )  # global RNG: run.py's seed sets the init
        self.register_buffer("data_mean", torch.zeros(dim))
        self._test_x: list[torch.Tensor] = []

    # -- model ------------------------------------------------------------------------------------
    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """h = relu(W (x - mu)): x (B, d) -> (B, H)."""
        return torch.relu((x - self.data_mean) @ self.weight.T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """f(x) = mu + W^T h(x): (B, d) -> (B, d)."""
        return self.data_mean + self.hidden(x) @ self.weight

    @torch.no_grad()
    def representation(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Hidden activations of the noisy input x + sigma eps (training noise level): (B, d) -> (B, H)."""
        eps = torch.randn(x.shape, generator=generator).to(x)
        return self.hidden(x + self.hparams.sigma * eps)

    def denoising_loss(self, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Per-example |f(x0 + sigma eps) - x0|^2 / d, shape (B,)."""
        return (self(x0 + self.hparams.sigma * eps) - x0).pow(2).mean(1)

    def compute_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        x0 = batch["x"]
        if x0.ndim != 2 or x0.shape[1] != self.hparams.dim:
            raise ValueError(f"ReLUDAE expects flat inputs (B, {self.hparams.dim}), got {tuple(x0.shape)}")
        eps = self.example_normal(batch["index"], tuple(x0.shape[1:]), generator=generator)
        return self.denoising_loss(x0, eps).mean()

    # -- Lightning hooks --------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if self.hparams.center and self.global_step == 0:
            self.data_mean.copy_(self.trainer.datamodule.train_tensor().float().mean(0).to(self.device))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        gen = torch.Generator().manual_seed(self.hparams.eval_noise_seed + batch_idx)
        self.log("val/loss", self.compute_loss(batch, generator=gen), sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._test_x.append(batch["x"].detach().cpu())

    @torch.no_grad()
    def representation_report(self, x_train: torch.Tensor, x_test: torch.Tensor) -> dict[str, float]:
        """Losses, their gap, activation spread and active-row cosine, with fixed noise."""
        gen = torch.Generator().manual_seed(self.hparams.eval_noise_seed)
        x_train, x_test = x_train.float().to(self.device), x_test.float().to(self.device)
        eps_tr = torch.randn(x_train.shape, generator=gen).to(x_train)
        eps_te = torch.randn(x_test.shape, generator=gen).to(x_test)
        train_loss = float(self.denoising_loss(x_train, eps_tr).mean())
        test_loss = float(self.denoising_loss(x_test, eps_te).mean())
        spread = activation_spread(self.hidden(x_train + self.hparams.sigma * eps_tr))
        spread_test = activation_spread(self.hidden(x_test + self.hparams.sigma * eps_te))
        w = self.weight.detach().cpu()
        return {
            "train_loss": train_loss,
            "test_loss": test_loss,
            "generalization_gap": test_loss - train_loss,
            "spread_cv": spread["cv"],
            "spread_l4_l2": spread["l4_l2"],
            "spread_std": spread["std"],
            "active_frac": spread["active_frac"],
            "test_spread_cv": spread_test["cv"],
            "row_cosine": active_row_cosine(w, (x_train.cpu() - self.data_mean.cpu())),
        }

    def on_test_epoch_end(self) -> None:
        x_test = torch.cat(self._test_x)
        self._test_x = []
        report = self.representation_report(self.trainer.datamodule.train_tensor(), x_test)
        for name, value in report.items():
            self.log(f"test/{name}", value, rank_zero_only=True)

    def configure_optimizers(self):
        h = self.hparams
        if h.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=h.lr, weight_decay=h.weight_decay)
        if h.optimizer == "rmsprop":
            return torch.optim.RMSprop(self.parameters(), lr=h.lr, weight_decay=h.weight_decay)
        return torch.optim.SGD(self.parameters(), lr=h.lr, weight_decay=h.weight_decay)
