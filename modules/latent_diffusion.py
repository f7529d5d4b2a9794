"""Latent diffusion: a VAE, then a score network on its (standardised) latents (docs/methods/ridge_phases.md).

Training has two stages in one run: for the first ``vae_steps`` steps the VAE (modules/nets/vae.py)
minimises its negative ELBO; then it is frozen, the whole training set is encoded once (posterior
means, standardised by their mean and one global scale so the geometry stays isotropic), and the
score network m(z, t) ~ a_t E[z0 | z_t] (core.ridge.score_models.PosteriorMeanMLP; score = (m - z)/h_t)
minimises the DSM loss on the OU process weighted by 1/h_t:

    L = E_t E_{z0, eps} |m(a_t z0 + sqrt(h_t) eps, t) - a_t z0|^2 / h_t   (= h_t |s - grad log q|^2).

``vae_ckpt`` loads a trained VAE instead (a state dict of the VAE, or a Lightning checkpoint whose
keys start with ``vae.``) and skips the first stage. ``sample(n)`` integrates the reverse SDE in
latent space and decodes; its trajectory stays in latent space, and ``ridge_reference()`` gives the
training latents, so callbacks.ridge measures the latent ridge. Reusable by any flat-vector data.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from core.diffusion.processes import OU
from core.diffusion.solvers import SAMPLERS, SampleResult, sample_process
from core.ridge.score_models import TIME_SAMPLINGS
from modules.base import GenLabModule
from modules.sampling import choose, generation, sample_options, unconditional
from modules.nets.build import build_net, net_hparam


DEFAULT_VAE = {"_target_": "modules.nets.vae.VAE", "in_dim": 784, "hidden": [400, 200], "latent_dim": 32}
DEFAULT_SCORE_NET = {"_target_": "core.ridge.score_models.PosteriorMeanMLP", "hidden": 512, "layers": 2, "n_freq": 16}


class LatentDiffusion(GenLabModule):
    """VAE + latent score model.

    Args:
        vae: the VAE (modules.nets.vae.VAE: in_dim = flattened input size, 784 for MNIST; hidden;
            latent_dim), a config node or a built network.
        vae_steps, vae_lr, vae_beta: VAE stage length, learning rate and KL weight.
        vae_ckpt: path of a trained VAE ("" = train it here).
        score_net: the score MLP (core.ridge.score_models.PosteriorMeanMLP: hidden, layers, n_freq;
            2 x 512 with K Fourier time features), given its ``dim`` and ``process`` by the module.
        T, t_min: OU horizon and smallest time; time_sampling: ``uniform`` | ``log_uniform`` training times.
        lr: score-net learning rate; sample_steps: Euler-Maruyama steps on a geometric grid.
        image_side: side of the decoded square images (for grids); 0 = not images.
        ridge_d_star: > 0 adds the test-time latent ridge comparison (see :meth:`on_test_epoch_end`)
            for a ridge of this dimension; ridge_spacing_factor sets its time (sqrt(h)/a = factor x the
            nearest-neighbour spacing of the training latents); eval_samples: samples drawn at test.
    """

    def __init__(
        self,
        vae: dict | nn.Module | None = None,
        score_net: dict | nn.Module | None = None,
        vae_steps: int = 2000,
        vae_lr: float = 1e-3,
        vae_beta: float = 1.0,
        vae_ckpt: str = "",
        T: float = 10.0,
        t_min: float = 1e-3,
        time_sampling: str = "log_uniform",
        lr: float = 1e-3,
        sample_steps: int = 1000,
        image_side: int = 28,
        ridge_d_star: int = 0,
        ridge_spacing_factor: float = 1.0,
        eval_samples: int = 500,
    ) -> None:
        super().__init__()
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"module.time_sampling must be one of {TIME_SAMPLINGS}, got {time_sampling!r}")
        vae = DEFAULT_VAE if vae is None else vae
        score_net = DEFAULT_SCORE_NET if score_net is None else score_net
        self.save_hyperparameters(ignore=["vae", "score_net"])
        self.hparams.update(vae=net_hparam(vae), score_net=net_hparam(score_net))
        self.process = OU(T=T, t_min=t_min)
        self.vae = build_net(vae, "module.vae")
        self.latent_dim = self.vae.latent_dim
        self.net = build_net(score_net, "module.score_net", dim=self.latent_dim, process=self.process)
        self.sample_steps = sample_steps
        self.register_buffer("latent_shift", torch.zeros(self.latent_dim))
        self.register_buffer("latent_scale", torch.ones(()))
        self.register_buffer("vae_ready", torch.tensor(False))
        self._train_latents: torch.Tensor | None = None
        self._heldout: list[torch.Tensor] = []
        if vae_ckpt:
            self._load_vae(vae_ckpt)

    def _load_vae(self, path: str) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"module.vae_ckpt: no file at {path} (expected a VAE state dict)"
            ) from err
        state = state.get("state_dict", state)
        if any(k.startswith("vae.") for k in state):
            state = {k[4:]: v for k, v in state.items() if k.startswith("vae.")}
        self.vae.load_state_dict(state)
        self.vae_ready.fill_(True)

    # -- latents ------------------------------------------------------------------------------------
    @property
    def in_vae_stage(self) -> bool:
        return not bool(self.vae_ready)

    @property
    def ridge_ready(self) -> bool:
        """False during the VAE stage: there is no latent score to measure yet."""
        return not self.in_vae_stage

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised latent posterior means (B, latent_dim)."""
        mu, _ = self.vae.encode(x.reshape(len(x), -1).to(self.device))
        return (mu - self.latent_shift) / self.latent_scale

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z * self.latent_scale + self.latent_shift)

    @torch.no_grad()
    def _freeze_vae(self) -> None:
        """End of the VAE stage: fix the standardisation from the encoded training set."""
        x = self.trainer.datamodule.train_tensor()
        mu, _ = self.vae.encode(x.reshape(len(x), -1).to(self.device))
        self.latent_shift.copy_(mu.mean(0))
        self.latent_scale.fill_(float((mu - mu.mean(0)).pow(2).mean().sqrt()))
        self.vae_ready.fill_(True)
        self._train_latents = None

    def ridge_reference(self) -> torch.Tensor:
        """Training latents (n, latent_dim), the data of the latent ridge."""
        if self._train_latents is None:
            self._train_latents = self.encode(self.trainer.datamodule.train_tensor()).cpu()
        return self._train_latents

    # -- training -----------------------------------------------------------------------------------
    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(z, t)

    def _times(self, u: torch.Tensor) -> torch.Tensor:
        p = self.process
        if self.hparams.time_sampling == "uniform":
            return p.t_min + u * (p.T - p.t_min)
        return torch.exp(math.log(p.t_min) + u * (math.log(p.T) - math.log(p.t_min)))

    def score_loss(self, z0: torch.Tensor, u: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of |m(z_t, t) - a_t z0|^2 / h_t; u (B,) uniforms, eps like z0."""
        t = self._times(u)
        a, h = self.process.alpha(t)[:, None], self.process.sigma(t)[:, None] ** 2
        z_t = a * z0 + h.sqrt() * eps
        return ((self.net(z_t, t) - a * z0).pow(2).sum(1, keepdim=True) / h).mean()

    def compute_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        x = batch["x"].reshape(len(batch["x"]), -1)
        shape = (len(x), self.latent_dim)
        idx, g = batch["index"], generator
        eps_vae = self.example_normal(idx, shape[1:], stream=0, generator=g)
        u, eps = self.example_uniform(idx, (), stream=1, generator=g), self.example_normal(idx, shape[1:], 2, g)
        if self.in_vae_stage:
            loss, _ = self.vae.loss(x, eps_vae, self.hparams.vae_beta)
            return loss
        return self.score_loss(self.encode(x), u, eps)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if self.in_vae_stage and self.global_step >= self.hparams.vae_steps:
            self._freeze_vae()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        stage = "vae" if self.in_vae_stage else "score"
        loss = self.compute_loss(batch)
        self.log(f"train/{stage}_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        gen = torch.Generator().manual_seed(4321 + batch_idx)
        stage = "vae" if self.in_vae_stage else "score"
        self.log(f"val/{stage}_loss", self.compute_loss(batch, generator=gen), sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._heldout.append(batch["x"].detach().reshape(len(batch["x"]), -1).cpu())

    @torch.no_grad()
    def on_test_epoch_end(self) -> None:
        """Latent ridge comparison (ridge_d_star > 0): the median normalised normal score
        |E E^T s| / |s| of the ridge of the training latents (core.ridge.geometry, d* = ridge_d_star) at three
        point sets: diffusion samples, a Gaussian fitted to the training latents, and held-out
        encoded test data; plus nearest-neighbour distances to the training latents (memorisation
        context) and a decoded grid of samples ordered by that ridge distance."""
        heldout_x = torch.cat(self._heldout) if self._heldout else None
        self._heldout = []
        h = self.hparams
        if h.ridge_d_star <= 0 or heldout_x is None or not self.trainer.is_global_zero:
            return
        from core.ridge.geometry import nearest_neighbour_spacing, ridge_geometry, time_for_noise_to_signal

        train = self.ridge_reference().double()
        spacing = nearest_neighbour_spacing(train)
        t_r = time_for_noise_to_signal(self.process, h.ridge_spacing_factor * spacing)
        a_r = float(self.process.alpha(torch.tensor(t_r)))
        gen = torch.Generator().manual_seed(777)
        res = self.sample_latents(h.eval_samples, generator=gen)
        sets = {
            "diffusion": res.x.cpu().double() / float(self.process.alpha(torch.tensor(self.process.t_min)))
        }
        cov = torch.cov(train.T) + 1e-6 * torch.eye(train.shape[1], dtype=torch.float64)
        sets["gaussian"] = (
            train.mean(0)
            + torch.randn(h.eval_samples, train.shape[1], generator=gen, dtype=torch.float64)
            @ torch.linalg.cholesky(cov).T
        )
        sets["heldout"] = self.encode(heldout_x).cpu().double()
        self.log("test/ridge_time", t_r, rank_zero_only=True)
        self.log("test/nn_spacing", spacing, rank_zero_only=True)
        gap = ridge_geometry(a_r * train, train, self.process, t_r, h.ridge_d_star).relative_eigengap
        self.log("test/eigengap_train", float(gap.median()), rank_zero_only=True)
        scores = {}
        for name, z in sets.items():
            geo = ridge_geometry(a_r * z, train, self.process, t_r, h.ridge_d_star)
            scores[name] = geo.normalized_normal_score
            self.log(f"test/nns_{name}", float(scores[name].median()), rank_zero_only=True)
            self.log(f"test/nns_{name}_q25", float(scores[name].quantile(0.25)), rank_zero_only=True)
            self.log(f"test/nns_{name}_q75", float(scores[name].quantile(0.75)), rank_zero_only=True)
            self.log(f"test/eigengap_{name}", float(geo.relative_eigengap.median()), rank_zero_only=True)
            self.log(
                f"test/offset_{name}",
                float((geo.h * geo.normal_score_norm).median()) / a_r,
                rank_zero_only=True,
            )
            self.log(
                f"test/nn_dist_{name}",
                float(torch.cdist(z, train).min(1).values.median()),
                rank_zero_only=True,
            )
            self.log(f"test/n_{name}", float(len(z)), rank_zero_only=True)
        if h.image_side > 0:
            from modules.media import log_images

            order = torch.argsort(scores["diffusion"])[:64]
            imgs = self.decode(sets["diffusion"][order].float().to(self.device)).cpu()
            side = h.image_side
            log_images(
                self.trainer,
                "ridge/samples_by_ridge_distance",
                imgs.reshape(-1, 1, side, side),
                [f"{float(scores['diffusion'][i]):.3f}" for i in order],
            )

    def configure_optimizers(self):
        h = self.hparams
        return torch.optim.Adam(
            [{"params": self.vae.parameters(), "lr": h.vae_lr}, {"params": self.net.parameters(), "lr": h.lr}]
        )

    # -- generation ---------------------------------------------------------------------------------
    def score(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Latent score (m(z, t) - z) / h_t."""
        return self.net.score(z, t)

    @generation
    def sample_latents(self, n: int, *, steps: int | None = None, solver: str | None = None,
                       generator: torch.Generator | None = None, return_trajectory: bool = False,
                       callback=None) -> SampleResult:
        """``n`` latents (n, latent_dim) by ``solver`` (em | euler | heun, default em) on a geometric grid."""
        return sample_process(
            self.process,
            self.nfe.wrap(self.score),
            (n, self.latent_dim),
            steps or self.sample_steps,
            sampler=choose("LatentDiffusion.sample: solver", solver, "em", tuple(SAMPLERS)),
            grid="geometric",
            generator=generator,
            device=self.device,
            return_trajectory=return_trajectory,
            callback=callback,
        )

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
        """Decoded samples: ``x`` (n, data_dim) in [-1, 1]; ``trajectory`` (if asked) in latent space.
        Option ``callback(step, t, z)`` on the latent states."""
        unconditional(self, cond)
        opts = sample_options(self, guidance, callback=None)
        res = self.sample_latents(n, steps=steps, solver=solver, generator=generator,
                                  return_trajectory=return_trajectory, callback=opts.callback)
        res.x = self.decode(res.x.to(self.device))
        return res
