"""DiffusionSampler: a learned score for the reverse-diffusion normalizing-constant estimator.

Guo, Tao, Chen 2025 (arXiv 2502.04575), section 5, with the score network option. The network
D_theta(x, t) predicts the posterior mean E[X_0 | X_t = x] of the OU forward process
(dX = -X dt + sqrt(2) dW), and the score is s_theta(x, t) = (e^{-t} D_theta(x, t) - x) / h_t,
h_t = 1 - e^{-2t}.

Training is by SELF-CONSISTENCY, not on target samples (a normalizing-constant problem has none):
each step runs the current reverse process (:func:`core.estimators.rds.reverse_diffusion_log_z`'s integrator,
no gradient) from N(0, h_T I), picks ``train_points`` visited (y, t) pairs, and regresses D_theta
on the training-free self-normalised importance-sampling estimate of E[X_0 | y] (M proposals from
N(e^t y, (e^{2t} - 1) I), weights e^{-V}); loss = mean e^{-2t} / h_t |D_theta - m_hat|^2, i.e. the
squared score error scaled by h_t. Every V evaluation is counted: ``train/oracle_calls`` is the
running total, so the amortised budget is visible next to the estimate.

Test: the reverse-diffusion estimator with s_theta (weights stay unbiased for any score; a better
score only lowers their variance) on ``eval_repeats x eval_chains`` chains; metrics
``test/z_ratio_mean``, ``test/abs_log_z_error``, ``test/weights_tv`` (mixtures), oracle calls.
"""

from __future__ import annotations

import math

import torch

from core.estimators.logmeanexp import summarize_log_weights
from core.utils.nfe import EvalCounter
from core.estimators.rds import SNISScore, forward_time_grid, reverse_diffusion_log_z
from core.estimators.densities import CountedTarget, GaussianMixture, make_target
from modules.base import GenLabModule
from modules.nets.mlp import TimeMLP


class DiffusionSampler(GenLabModule):
    """Learned-score reverse-diffusion estimator of log Z (see module docstring)."""

    def __init__(
        self,
        target: str = "four_mode_gmm",
        target_kwargs: dict | None = None,
        hidden: int = 128,
        depth: int = 3,
        lr: float = 1e-3,
        T: float = 3.0,
        delta: float = 5e-3,
        steps: int = 50,
        train_chains: int = 64,
        train_points: int = 256,
        train_snis_samples: int = 64,
        eval_chains: int = 256,
        eval_repeats: int = 8,
        rds_weight: str = "paper",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.target = make_target(target, **(target_kwargs or {}))
        self.counter = EvalCounter()
        self.oracle = CountedTarget(self.target, self.counter)
        self.net = TimeMLP(self.target.dim, hidden, depth)
        self.register_buffer("times", forward_time_grid(T, delta, steps))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Posterior-mean prediction D_theta(x, t): x (B, d), t (B,) forward times -> (B, d)."""
        return self.net(x.float(), (t / self.hparams.T).float()).to(x.dtype)

    def score(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """s_theta(x, t) = (e^{-t} D_theta(x, t) - x) / h_t for the estimator; x (B, d)."""
        self.nfe.add(1, x.shape[0])
        d = self(x, torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device))
        return (math.exp(-t) * d - x) / -math.expm1(-2 * t)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/oracle_calls", float(self.counter.items))
        return loss

    def compute_loss(self, batch=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Self-consistency loss on points visited by the current reverse process (module docstring)."""
        if generator is None:
            generator = torch.Generator().manual_seed(self.noise_seed * 1_000_003 + int(self.global_step))
        hp = self.hparams
        y, t = self._visited_points(hp.train_chains, generator)
        pick = torch.randperm(y.shape[0], generator=generator)[: hp.train_points]
        y, t = y[pick], t[pick]
        snis = SNISScore(self.oracle, hp.train_snis_samples, generator)
        targets = torch.empty_like(y)
        for tk in t.unique():  # points share the grid's times: one batched SNIS call per time
            rows = t == tk
            targets[rows] = self._snis_mean(snis, y[rows], float(tk))
        pred = self(y.to(self.device), t.to(self.device))
        h = -torch.expm1(-2 * t)
        weight = (torch.exp(-2 * t) / h).to(pred.dtype).to(self.device)
        return (weight[:, None] * (pred - targets.to(pred))).pow(2).sum(1).mean() / self.target.dim

    @staticmethod
    def _snis_mean(snis: SNISScore, y: torch.Tensor, t: float) -> torch.Tensor:
        z, log_w = snis.posterior_proposals(y, t, snis.num_samples)
        return (torch.softmax(log_w, 1)[..., None] * z).sum(1)

    @torch.no_grad()
    def _visited_points(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """States y_k (n * K, d) of the current reverse process and their forward times (n * K,)."""
        hp = self.hparams
        y = math.sqrt(-math.expm1(-2 * hp.T)) * torch.randn(
            n, self.target.dim, generator=generator, dtype=torch.float64
        )
        ys, ts = [], []
        for k in range(hp.steps):
            t, dt = float(self.times[k]), float(self.times[k] - self.times[k + 1])
            ys.append(y.clone())
            ts.append(torch.full((n,), t, dtype=torch.float64))
            s = self.score(y.to(self.device), t).cpu().double()
            xi = torch.randn(y.shape, generator=generator, dtype=torch.float64)
            y = math.exp(dt) * y + 2 * math.expm1(dt) * s + math.sqrt(math.expm1(2 * dt)) * xi
        return torch.cat(ys), torch.cat(ts)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate("val", seed=1)

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate("test", seed=2)

    @torch.no_grad()
    def _evaluate(self, stage: str, seed: int) -> dict[str, float]:
        hp = self.hparams
        generator = torch.Generator().manual_seed(self.noise_seed * 7919 + seed)
        eval_oracle = CountedTarget(self.target)

        def score(x: torch.Tensor, t: float) -> torch.Tensor:
            return self.score(x.to(self.device), t).cpu().double()

        res = reverse_diffusion_log_z(
            eval_oracle,
            score,
            hp.eval_repeats * hp.eval_chains,
            hp.T,
            hp.delta,
            hp.steps,
            weight=hp.rds_weight,
            generator=generator,
        )
        summary = summarize_log_weights(res.log_w.reshape(hp.eval_repeats, hp.eval_chains), self.target.log_z)
        metrics = summary.as_metrics(stage)
        metrics[f"{stage}/oracle_calls_per_chain"] = res.oracle_calls_per_chain
        metrics[f"{stage}/train_oracle_calls"] = float(self.counter.items)
        if isinstance(self.target, GaussianMixture) and self.target.num_components > 1:
            rec = self.target.recovered_mode_weights(res.x, res.log_w)
            metrics[f"{stage}/weights_tv"] = 0.5 * float((rec - self.target.mode_weights).abs().sum())
        for key, value in metrics.items():
            self.log(key, value, rank_zero_only=True)
        return metrics

    def configure_optimizers(self):
        return torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr)

    def sample(
        self, n: int, generator: torch.Generator | None = None, return_trajectory: bool = False, **opts
    ):
        """n importance-weighted samples: (x (n, d), log_w (n,)) from the estimator's reverse process."""
        hp = self.hparams
        res = reverse_diffusion_log_z(
            CountedTarget(self.target),
            lambda x, t: self.score(x.to(self.device), t).cpu().double(),
            n,
            hp.T,
            hp.delta,
            hp.steps,
            weight=hp.rds_weight,
            generator=generator,
        )
        return res.x, res.log_w
