"""The two-layer ReLU denoiser extended to a diffusion model (arXiv 2512.20963; docs/methods/relu_memorization.md).

    h(x, sigma)      = relu(W (x - mu)) * exp(g(log sigma))        g: small MLP -> H gains
    x0_hat(x, sigma) = mu + W^T h + skip(sigma) (x - mu)           skip = sigmoid of one more MLP output

VE noise x = x0 + sigma eps with sigma log-uniform in [sigma_min, sigma_max] = [0.02, 2] (core.diffusion.processes.VE
with t ~ U(0, 1)), x0-MSE loss. Generation: the probability-flow ODE on a geometric sigma grid (uniform
in VE time, ``sample_steps`` = 60 Euler steps, core.diffusion.solvers), started from N(mu, sigma_max^2 I) (sigma_max
= 2 is not much larger than the digits' spread, so the prior is centred on the mean image), and a final
denoising step x0_hat(x, sigma_min). ``mu`` is the training mean (a buffer set at fit start).

Note (our analysis, not the paper's): without a bias, x0_hat - mu is positively homogeneous of degree 1
in x - mu at every sigma, so the denoiser cannot saturate towards a stored image the way the empirical
posterior mean does; copies of training images arise only through the ReLU gating of directions. At CPU
scale (3000 steps) we measured NN-ratio memorization rates of ~0.1-0.3 even at n = 2..5.

``sample(n, steering=Steering(v, alpha, sigma_start))`` adds alpha * v to relu(W (x - mu)) while
sigma <= sigma_start (core.diffusion.steering).

Test time (on_test_epoch_end, rank 0): ``eval_samples`` generations; their NN-ratio memorization rate
against the training set; the detection score (coefficient of variation of the hidden representation
of the lightly re-noised generation, core.eval.memorization.activation_cv) with its AUROC and TPR@1%FPR
against the NN-ratio labels, saved to ``detection.pt`` in the run folder for the two-model comparison;
and, when ``steering_alphas`` is set, the target-class rate and the FID-style distance (core.eval.features)
of steered generations per alpha.
"""

from __future__ import annotations

import torch
from torch import nn

from core.eval.memorization import activation_cv, detection_auroc, memorized, nearest_neighbor_ratio, tpr_at_fpr
from core.diffusion.processes import VE
from core.diffusion.solvers import SampleResult, ode_euler, probability_flow, time_grid
from core.diffusion.steering import Steering
from modules.base import GenLabModule
from modules.sampling import choose, generation, sample_options, unconditional


class ReLUDiffusion(GenLabModule):
    """Args:
    dim: data dimension (196 for 14x14 MNIST).
    width: hidden units H.
    sigma_min, sigma_max: the VE noise range.
    gain_hidden: width of the MLP g(log sigma).
    lr, weight_decay: AdamW settings.
    sample_steps: Euler steps of the geometric-sigma sampler.
    detect_sigma: noise level of the light re-noising used by the detection score.
    center: subtract the training mean (the encoder has no bias; see modules.relu_dae).
    eval_samples: generations measured at test time.
    steering_alphas: strengths evaluated at test time (empty: no steering evaluation).
    steering_target: the digit whose mean activation is the steering direction.
    steering_sigma_start: steering acts while sigma <= this (the later sampling steps).
    steering_samples, feature_steps: generations per alpha; training steps of the feature network.
    """

    def __init__(
        self,
        dim: int = 196,
        width: int = 256,
        sigma_min: float = 0.02,
        sigma_max: float = 2.0,
        gain_hidden: int = 64,
        lr: float = 2e-3,
        weight_decay: float = 0.0,
        sample_steps: int = 60,
        detect_sigma: float = 0.1,
        center: bool = True,
        eval_samples: int = 500,
        steering_alphas: list[float] | None = None,
        steering_target: int = 0,
        steering_sigma_start: float = 0.5,
        steering_samples: int = 300,
        feature_steps: int = 600,
    ) -> None:
        super().__init__()
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"module: need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.save_hyperparameters()
        self.weight = nn.Parameter(
            torch.randn(width, dim) / dim**0.5
        )  # global RNG: run.py's seed sets the init
        self.gain = nn.Sequential(nn.Linear(1, gain_hidden), nn.SiLU(), nn.Linear(gain_hidden, width + 1))
        self.register_buffer("data_mean", torch.zeros(dim))
        self.process = VE(sigma_min, sigma_max)
        self._test_x: list[torch.Tensor] = []

    # -- model ------------------------------------------------------------------------------------
    def _gains(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.gain(torch.log(sigma).reshape(-1, 1))
        return torch.exp(out[:, :-1]), torch.sigmoid(out[:, -1:])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """relu(W (x - mu)), the sigma-free part of the representation: (B, d) -> (B, H)."""
        return torch.relu((x - self.data_mean) @ self.weight.T)

    def _hidden_and_skip(self, x, sigma, steering):
        gains, skip = self._gains(sigma)
        pre = self.encode(x)
        if steering is not None:
            pre = steering.shift(pre, float(sigma.max()))
        return pre * gains, skip

    def hidden(self, x: torch.Tensor, sigma: torch.Tensor, steering: Steering | None = None) -> torch.Tensor:
        """h(x, sigma) (B, H); ``sigma`` is (B,). Steering shifts relu(W (x - mu)) before the gain."""
        return self._hidden_and_skip(x, sigma, steering)[0]

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, steering: Steering | None = None) -> torch.Tensor:
        """x0_hat(x, sigma): x (B, d), sigma (B,) -> (B, d)."""
        if x.ndim != 2 or x.shape[1] != self.hparams.dim:
            raise ValueError(
                f"ReLUDiffusion expects flat inputs (B, {self.hparams.dim}), got {tuple(x.shape)}"
            )
        h, skip = self._hidden_and_skip(x, sigma, steering)
        return self.data_mean + h @ self.weight + skip * (x - self.data_mean)

    def compute_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean over the batch of |x0_hat(x0 + sigma eps, sigma) - x0|^2 / d, sigma log-uniform."""
        x0 = batch["x"]
        u = self.example_uniform(batch["index"], (), stream=0, generator=generator)
        eps = self.example_normal(batch["index"], tuple(x0.shape[1:]), stream=1, generator=generator)
        sigma = self.process.sigma(u)
        return (self(x0 + sigma[:, None] * eps, sigma) - x0).pow(2).mean()

    # -- Lightning hooks --------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if self.hparams.center and self.global_step == 0:
            self.data_mean.copy_(self.trainer.datamodule.train_tensor().float().mean(0).to(self.device))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        gen = torch.Generator().manual_seed(1234 + batch_idx)
        self.log("val/loss", self.compute_loss(batch, generator=gen), sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._test_x.append(batch["x"].detach().cpu())

    def on_test_epoch_end(self) -> None:
        heldout = torch.cat(self._test_x)
        self._test_x = []
        if not self.trainer.is_global_zero:
            return
        metrics = self.memorization_report(self.trainer.datamodule.train_tensor().float())
        if self.hparams.steering_alphas:
            metrics.update(self.steering_report(heldout))
        for name, value in metrics.items():
            self.log(f"test/{name}", value, rank_zero_only=True)

    @torch.no_grad()
    def memorization_report(self, train: torch.Tensor) -> dict[str, float]:
        """NN-ratio memorization of ``eval_samples`` generations and the representation detector."""
        gen = torch.Generator().manual_seed(4321)
        x = self.sample(self.hparams.eval_samples, generator=gen).x.cpu()
        ratio, _ = nearest_neighbor_ratio(x, train.cpu())
        labels = memorized(ratio)
        scores = activation_cv(self.representation(x.to(self.device), generator=gen).cpu())
        torch.save(
            {"scores": scores, "labels": labels, "ratio": ratio},
            f"{self.trainer.default_root_dir}/detection.pt",
        )
        out = {
            "memorization_rate": float(labels.float().mean()),
            "ratio_median": float(ratio.median()),
            "detection_score_mean": float(scores.mean()),
        }
        auroc, tpr = detection_auroc(scores, labels), tpr_at_fpr(scores, labels, 0.01)
        if auroc is not None:  # undefined when all or none of the generations are memorised
            out["detection_auroc"], out["detection_tpr_at_1fpr"] = auroc, tpr
        return out

    @torch.no_grad()
    def steering_report(self, heldout: torch.Tensor) -> dict[str, float]:
        """Target-class rate and FID-style distance to held-out digits of steered generations per alpha,
        measured with the suite's MNIST feature network trained on the offline training split."""
        from modules.media import log_images
        from core.eval.features import class_rates, extract_features, train_feature_net
        from core.eval.frechet import frechet_distance
        from core.diffusion.steering import concept_direction, steering_sweep
        from datamodules.mnist import downsample, load_mnist

        h, dm = self.hparams, self.trainer.datamodule
        train_x, train_y = dm.train_tensor().float(), dm.train_set.extras["y"]
        v = concept_direction(self.encode(train_x.to(self.device)).cpu(), train_y, h.steering_target)
        side = int(round(h.dim**0.5))
        if side * side != h.dim or 28 % side:
            raise ValueError(
                f"module.dim={h.dim}: steering evaluation needs square MNIST images (784, 196 or 49)"
            )
        # trainer.test runs under inference mode; the feature network is trained here, so leave it
        with torch.inference_mode(False), torch.enable_grad():
            pool_x, pool_y, _, _ = load_mnist(getattr(dm, "root", None))
            pool_x = downsample(pool_x, side) if side != 28 else pool_x
            net = train_feature_net(
                pool_x.clone(), pool_y.clone(), num_classes=10, steps=h.feature_steps, seed=0
            )
        images = lambda x: x.cpu().reshape(-1, 1, side, side)  # noqa: E731
        ref = extract_features(net, images(heldout))

        def sample(steering):
            return self.sample(
                h.steering_samples, generator=torch.Generator().manual_seed(99), steering=steering
            ).x

        results, grids = steering_sweep(
            sample,
            v.to(self.device),
            list(h.steering_alphas),
            h.steering_sigma_start,
            h.steering_target,
            classifier=lambda x: net(images(x)),
            features=lambda x: extract_features(net, images(x)),
            frechet=frechet_distance,
            reference_features=ref,
        )
        out = {}
        for alpha, r in results.items():
            out[f"steer_rate_a{alpha:g}"], out[f"steer_fd_a{alpha:g}"] = r["class_rate"], r["fd"]
            log_images(self.trainer, f"steering/alpha={alpha:g}", images(grids[alpha][:64]).clamp(-1, 1))
        out["real_target_rate"] = float(class_rates(net, images(heldout))[h.steering_target])
        return out

    def configure_optimizers(self):
        return torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )

    # -- generation and detection -----------------------------------------------------------------
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
        """``n`` samples (n, dim): Euler (``solver`` euler) on the probability-flow ODE over a geometric
        sigma grid, then a final denoising step. Option ``steering`` (core.diffusion.steering.Steering)
        shifts the hidden activations in the later steps."""
        unconditional(self, cond)
        choose("ReluDiffusion.sample: solver", solver, "euler", ("euler",))
        steering = sample_options(self, guidance, steering=None).steering
        proc = self.process

        def x0_hat(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            self.nfe.add(1, len(x))
            return self(x, proc.sigma(t), steering)

        def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return (x0_hat(x, t) - x) / proc.sigma(t)[:, None] ** 2

        times = time_grid(proc.T, proc.t_min, steps or self.hparams.sample_steps, "uniform")
        noise = torch.randn((n, self.hparams.dim), generator=generator).to(self.data_mean)
        x = self.data_mean + self.hparams.sigma_max * noise
        res = ode_euler(x, times, drift=probability_flow(proc, score), return_trajectory=return_trajectory)
        final = x0_hat(res.x, torch.full((n,), float(times[-1])))
        traj = None if res.trajectory is None else [*res.trajectory, final]
        return SampleResult(x=final, times=times, nfe=res.nfe + 1, trajectory=traj)

    @torch.no_grad()
    def representation(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """h(x + s eps, s) at the light re-noising level s = ``detect_sigma``: (B, d) -> (B, H). Its spread
        is the memorization detection score (spiky = memorised)."""
        s = self.hparams.detect_sigma
        eps = torch.randn(x.shape, generator=generator).to(x)
        return self.hidden(x + s * eps, torch.full((len(x),), s, device=x.device, dtype=x.dtype))
