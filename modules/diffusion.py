"""Score-based diffusion on vectors: the module of the first experiment, ``diffusion_2d``.

Training minimises the denoising loss E_t E_eps w(t) |net(x_t, t) - target|^2 of core.diffusion.losses with
x_t = a_t x0 + sigma_t eps (t = 0 is data), noise and times keyed per example (core.utils.noise).
Sampling integrates the reverse SDE (Euler-Maruyama) or the probability-flow ODE (Euler / Heun)
from the prior at T down to t_min (core.diffusion.solvers).
"""

from __future__ import annotations

import torch

from core.diffusion.losses import denoising_loss, sample_times
from core.eval.distances import sliced_w2
from core.diffusion.parametrization import check_target, to_score
from core.diffusion.processes import make_process
from core.diffusion.solvers import SAMPLERS, SampleResult, sample_process
from modules.base import GenLabModule
from modules.sampling import choose, generation, sample_options, unconditional
from modules.nets.mlp import TimeMLP


class Diffusion(GenLabModule):
    """Diffusion model for (B, dim) data with a :class:`~modules.nets.mlp.TimeMLP` network.

    Args:
        dim: data dimension.
        process: ``vp`` | ``ou`` | ``ve`` | ``linear`` (core.diffusion.processes).
        target: what the network predicts: ``eps`` | ``x0`` | ``score`` | ``velocity``.
        loss_weight: ``none`` | ``snr`` | ``sigma_sq`` | ``inv_sigma_sq`` (core.diffusion.losses).
        hidden, depth, time_dim: network size.
        lr, weight_decay, warmup_steps: AdamW with linear warm-up then cosine decay to 10%.
        sample_steps, sampler, time_grid: generation settings (sampler ``em`` | ``euler`` | ``heun``).
        eval_samples, eval_repeats: test-time sample size and independent repeats of the metric.
    """

    def __init__(
        self,
        dim: int = 2,
        process: str = "vp",
        target: str = "eps",
        loss_weight: str = "none",
        hidden: int = 128,
        depth: int = 3,
        time_dim: int = 64,
        lr: float = 2e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        sample_steps: int = 200,
        sampler: str = "em",
        time_grid: str = "uniform",
        eval_samples: int = 2000,
        eval_repeats: int = 5,
    ) -> None:
        super().__init__()
        check_target(target)
        self.save_hyperparameters()
        self.process = make_process(process)
        self.net = TimeMLP(dim, hidden, depth, time_dim)
        self.sample_steps, self.sampler = sample_steps, sampler
        self._heldout: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t)

    def compute_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean denoising loss of a batch; ``generator`` fixes noise and times (Hessian probes),
        otherwise they are keyed by (seed, step, example index)."""
        x0 = batch["x"]
        u = self.example_uniform(batch["index"], (), stream=0, generator=generator)
        eps = self.example_normal(batch["index"], tuple(x0.shape[1:]), stream=1, generator=generator)
        t = sample_times(u, self.process)
        h = self.hparams
        return denoising_loss(self, self.process, x0, t, eps, h.target, h.loss_weight).mean()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        gen = torch.Generator().manual_seed(1234 + batch_idx)
        self.log("val/loss", self.compute_loss(batch, generator=gen), sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._heldout.append(batch["x"].detach().cpu())

    def on_test_epoch_end(self) -> None:
        """Sliced W2 of samples to held-out data, with two references: samples of a Gaussian
        fitted to the training data, and a training subsample of the same size (the data floor)."""
        heldout = torch.cat(self._heldout)
        self._heldout = []
        train = self.trainer.datamodule.train_tensor()
        n = min(self.hparams.eval_samples, len(heldout), len(train))
        model, gauss, floor = [], [], []
        mean, cov = train.mean(0), torch.cov(train.T).reshape(train.shape[1], train.shape[1])
        chol = torch.linalg.cholesky(cov + 1e-6 * torch.eye(len(mean)))
        for r in range(self.hparams.eval_repeats):
            gen = torch.Generator().manual_seed(10_000 + r)
            res = self.sample(n, generator=gen)
            x = res.x.cpu()
            g = mean + torch.randn(n, len(mean), generator=gen) @ chol.T
            sub = train[torch.randperm(len(train), generator=gen)[:n]]
            ref = heldout[torch.randperm(len(heldout), generator=gen)[:n]]
            model.append(sliced_w2(x, ref, generator=gen))
            gauss.append(sliced_w2(g, ref, generator=gen))
            floor.append(sliced_w2(sub, ref, generator=gen))
        for name, vals in (("sliced_w2", model), ("gauss_sliced_w2", gauss), ("floor_sliced_w2", floor)):
            v = torch.stack(vals)
            self.log(f"test/{name}", v.mean(), rank_zero_only=True)
            self.log(f"test/{name}_std", v.std() if len(v) > 1 else torch.tensor(0.0), rank_zero_only=True)
        self.log("test/nfe_per_sample", float(res.nfe), rank_zero_only=True)  # Heun: 2 per step

    def configure_optimizers(self):
        return self.adamw_warmup_cosine()

    # -- generation -----------------------------------------------------------------------------
    def score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """grad log p_t(x) implied by the network output (core.diffusion.parametrization)."""
        return to_score(self.hparams.target, self.process, self.net(x, t), x, t)

    @generation
    def sample(
        self,
        n: int,
        *,
        steps: int | None = None,
        solver: str | None = None,
        generator: torch.Generator | None = None,
        cond: None = None,
        return_trajectory: bool = False,
        **guidance,
    ) -> SampleResult:
        """Draw ``n`` samples; ``SampleResult.x`` is (n, dim), trajectory (steps + 1 states) if asked.
        ``solver``: em | euler | heun (core.diffusion.solvers); option ``callback(step, t, x)``."""
        unconditional(self, cond)
        opts = sample_options(self, guidance, callback=None)
        return sample_process(
            self.process, self.nfe.wrap(self.score), (n, self.hparams.dim), steps or self.sample_steps,
            sampler=choose("Diffusion.sample: solver", solver, self.sampler, tuple(SAMPLERS)),
            grid=self.hparams.time_grid, generator=generator, device=self.device,
            return_trajectory=return_trajectory, callback=opts.callback,
        )
