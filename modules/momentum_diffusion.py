"""Momentum diffusion: one module for VP, CLD, VSDM and VSMD (core/diffusion/phase_space.py holds the math and
the list of our VSMD reconstruction choices).

Training (t uniform on a grid of ``time_grid_size`` points in [t_min, T] whose kernels are cached
until A changes; noise keyed per example by core.utils.noise):

* order-1 processes (vp, vsdm): denoising score matching with the eps-parametrisation,
  |eps_theta(x_t, t) - eps|^2, score = -U diag(1/L_t) U^T eps_theta;
* order-2 processes (cld, vsmd): hybrid score matching (Dockhorn et al. 2022): the network sees
  u_t = (x_t, v_t) and predicts eps_v, the velocity part of the kernel noise; the velocity score
  is -U diag(1/L_vv,t) U^T eps_theta. v0 is integrated out in the kernel (v0 ~ N(0, gamma M)).
* learned processes (vsdm, vsmd): every ``a_every`` steps between ``a_start`` and
  ``a_stop_frac * max_steps``, ``a_traj`` backward trajectories (splitting sampler, ``a_steps``
  steps, started from the *reference* prior of the A = 0 process, i.e. the SB terminal constraint)
  drive one Adam step (``a_lr``) on core.diffusion.phase_space.variational_objective. Logged:
  ``train/a_objective`` (the objective), ``train/a_shift`` = |A - A_0|_F, ``train/lam_min|max``.

Generation: prior draw at T (x0-free part of the kernel) and ``sample_nfe`` score evaluations with
one of the process's samplers. Test: for each candidate (sampler, grid) of the process
(vp/vsdm: Euler-Maruyama or probability-flow Heun; cld/vsmd: stochastic or ODE splitting; each on
a uniform or quadratic grid) the one with the best validation metric is used on the test set, so
no process is judged by a poor sampler. The task decides the metric: ``shapes`` (sliced W2, MMD,
transport cost of PF-ODE paths), ``forecast`` (CRPS of conditional samples), ``images``
(Frechet distance on in-suite features, core.eval.features).

Modelling choices that are ours (VSMD has no public code; the process-level ones, 1-6, are listed in
core/diffusion/phase_space.py's docstring):

7. Loss: unweighted eps-MSE over t uniform in [t_min, T] for every process (no likelihood weighting),
   the same TimeMLP for all processes (input (x, v) for order 2, x for order 1, plus ``cond``).
8. A is trained with Adam (``a_lr``), not a decreasing SA step size; updates stop at ``a_stop_frac``
   of training so that the score network adapts to the final A. The Adam state is checkpointed.
9. Backward trajectories for the A update start from the A = 0 process's terminal law (the SB
   reference prior), not from the current process's, so A is pushed to carry data to that prior.
10. Conditional models (forecasting) condition the score network on the context window by input
   concatenation; the A update then uses the current batch's contexts.
11. The experiments run the momentum processes at constant beta = 2 (CLD's paper uses 4): with the
   x8-stretched axis the forward process alone then does not forget the data, which is the regime
   where a learned stiffness can help (VSDM's README likewise runs VSDM at half VP's beta_max).
"""

from __future__ import annotations

import torch

from core.eval.crps import crps_samples
from core.eval.features import extract_features, train_feature_net
from core.eval.frechet import frechet_distance
from core.eval.distances import mmd_rbf, sliced_w2
from core.diffusion.phase_space_solvers import data_part, sample_phase_space, splitting_sampler, steps_for_nfe
from core.diffusion.phase_space import make_phase_space_process, variational_objective
from core.diffusion.solvers import SampleResult, time_grid
from core.eval.transport import transport_cost
from modules.base import GenLabModule
from modules.sampling import choose, generation, sample_options
from modules.nets.mlp import TimeMLP

CANDIDATES = {1: [("em", "uniform"), ("em", "quadratic"), ("heun", "uniform"), ("heun", "quadratic")],
              2: [("split", "uniform"), ("split", "quadratic"), ("split_ode", "uniform"), ("split_ode", "quadratic")]}
TASKS = ("shapes", "forecast", "images")


class MomentumDiffusion(GenLabModule):
    """Args: ``process`` vp | cld | vsdm | vsmd; ``dim`` data dimension; ``cond_dim`` > 0 for
    conditional models (batches carry ``cond``); beta(t) = beta_min + t (beta_max - beta_min);
    ``mass`` M and ``init_velocity_var`` gamma (order 2); ``lam_min``/``lam_max`` clip D's
    eigenvalues; ``a_*`` the variational-score schedule; ``sample_nfe`` the evaluation budget
    (an eval-sweep parameter); ``task`` shapes | forecast | images."""

    def __init__(
        self,
        process: str = "vsmd",
        dim: int = 2,
        cond_dim: int = 0,
        hidden: int = 128,
        depth: int = 3,
        time_dim: int = 64,
        lr: float = 2e-3,
        warmup_steps: int = 100,
        beta_min: float = 4.0,
        beta_max: float = 4.0,
        mass: float = 0.25,
        init_velocity_var: float = 0.04,
        t_min: float = 1e-3,
        lam_min: float = 0.1,
        lam_max: float = 25.0,
        a_lr: float = 0.02,
        a_every: int = 50,
        a_start: int = 300,
        a_stop_frac: float = 0.8,
        a_traj: int = 512,
        a_steps: int = 20,
        sample_nfe: int = 50,
        task: str = "shapes",
        eval_samples: int = 2000,
        transport_paths: int = 500,
        forecast_samples: int = 100,
        image_side: int = 8,
        feature_steps: int = 600,
        time_grid_size: int = 500,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"module.task: expected one of {TASKS}, got {task!r}")
        self.save_hyperparameters()
        self.process = make_phase_space_process(process, dim, beta_min=beta_min, beta_max=beta_max, t_min=t_min,
                                                mass=mass, init_velocity_var=init_velocity_var,
                                                lam_min=lam_min, lam_max=lam_max)
        ref = {"vsdm": "vp", "vsmd": "cld"}.get(process, process)
        self.reference = make_phase_space_process(ref, dim, beta_min=beta_min, beta_max=beta_max, t_min=t_min,
                                                  mass=mass, init_velocity_var=init_velocity_var)
        self.stiffness = self.process.stiffness  # registered so it is saved and moved with the module
        self.order = self.process.order
        self.net = TimeMLP(self.order * dim + cond_dim, hidden, depth, time_dim, out_dim=dim)
        self.sample_nfe = sample_nfe
        self._a_opt = torch.optim.Adam(self.stiffness.parameters(), lr=a_lr) if self.stiffness is not None else None
        self._feature_net = None
        self._grid_kernel = None

    # -- network and score ----------------------------------------------------------------------
    def forward(self, u, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        parts = [u] if self.order == 1 else list(u)
        if self.hparams.cond_dim:
            if cond is None:
                raise ValueError(f"this model is conditional (cond_dim={self.hparams.cond_dim}); pass cond")
            parts.append(cond)
        return self.net(torch.cat(parts, 1), t)

    def score(self, u, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Score of the noised component (x for vp/vsdm, v for cld/vsmd) implied by eps_theta."""
        tk = t[:1] if bool((t == t[0]).all()) else t
        return self.process.kernel(tk).score_from_eps(self(u, t, cond))

    # -- training -------------------------------------------------------------------------------
    def compute_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        x0, cond = batch["x"], batch.get("cond")
        shape = tuple(x0.shape[1:])
        idx = batch["index"]
        u = self.example_uniform(idx, (), stream=0, generator=generator)
        eps = [self.example_normal(idx, shape, stream=1 + i, generator=generator) for i in range(self.order)]
        t, kernel = self._training_kernel(u)
        ut, _ = kernel.sample(x0, eps=eps[0] if self.order == 1 else tuple(eps))
        return (self(ut, t, cond) - eps[-1]).pow(2).mean()

    def _training_kernel(self, u: torch.Tensor):
        """Times on a fixed grid of ``time_grid_size`` points in [t_min, T] (uniforms u snapped to it)
        and their kernels, cached until A changes: per-batch matrix exponentials would dominate the
        step for d = 64 (VSDM's code trains on a time grid as well)."""
        n = self.hparams.time_grid_size
        if self._grid_kernel is None or self.process._eig is None:
            self.process.refresh()
            self._grid_t = torch.linspace(self.process.t_min, self.process.T, n)
            self._grid_kernel = self.process.kernel(self._grid_t)
        idx = (u.detach().cpu() * n).long().clamp(0, n - 1)
        return self._grid_t[idx].to(u), self._grid_kernel.select(idx)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        h, step = self.hparams, int(self.global_step)
        stop = h.a_stop_frac * max(int(self.trainer.max_steps), 1)
        if self._a_opt is not None and step >= h.a_start and step < stop and step % h.a_every == 0:
            self.variational_step(batch.get("cond"))
        return loss

    def variational_step(self, cond: torch.Tensor | None = None) -> float:
        """One stochastic-approximation step on A from fresh backward trajectories."""
        h = self.hparams
        n = len(cond) if cond is not None else h.a_traj
        gen = torch.Generator().manual_seed(self.noise_seed * 1_000_003 + int(self.global_step))
        times = time_grid(self.process.T, self.process.t_min, h.a_steps)
        u_T = self.reference.prior_sample(n, h.dim, gen)
        with torch.no_grad():
            res = splitting_sampler(u_T, times, process=self.process, score=lambda u, t: self.score(u, t, cond),
                                    generator=gen, return_trajectory=True)
        objective = variational_objective(self.process, times.flip(0), res.trajectory[::-1])
        self._a_opt.zero_grad()
        objective.backward()
        self._a_opt.step()
        self.process.refresh()
        self._grid_kernel = None
        lam, _ = self.process.eig()
        self.log("train/a_objective", objective.detach().float())
        self.log("train/a_shift", self.a_shift())
        self.log("train/lam_min", lam.min().float())
        self.log("train/lam_max", lam.max().float())
        return float(objective)

    def a_shift(self) -> float:
        """|A - A_0|_F with A_0 = 0 (0 for vp / cld)."""
        return 0.0 if self.stiffness is None else float(self.stiffness.A().detach().norm())

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        gen = torch.Generator().manual_seed(1234 + batch_idx)
        self.log("val/loss", self.compute_loss(batch, generator=gen), sync_dist=True)

    def configure_optimizers(self):
        h = self.hparams
        opt = torch.optim.Adam(self.net.parameters(), lr=h.lr)
        return self.warmup_cosine(opt, h.warmup_steps)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._a_opt is not None:
            checkpoint["a_optimizer"] = self._a_opt.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self._a_opt is not None and "a_optimizer" in checkpoint:
            self._a_opt.load_state_dict(checkpoint["a_optimizer"])
        self.process._eig = None  # recomputed from the loaded stiffness on first use
        self._grid_kernel = None

    # -- generation -----------------------------------------------------------------------------
    @generation
    def sample(
        self,
        n: int,
        *,
        steps: int | None = None,
        solver: str | None = None,
        generator: torch.Generator | None = None,
        cond: torch.Tensor | None = None,
        return_trajectory: bool = False,
        **guidance,
    ) -> SampleResult:
        """``n`` samples (SampleResult.x is (n, dim), the data part; the trajectory holds data parts).
        ``solver``: em | heun | split | split_ode (default: split for cld/vsmd, em for vp/vsdm);
        ``steps`` default: the steps that spend ``sample_nfe`` evaluations; ``cond``: forecast contexts.
        Options: ``grid`` (uniform | quadratic) and ``callback(step, t, state)``."""
        opts = sample_options(self, guidance, grid="uniform", callback=None)
        self.process.refresh()
        method = choose("MomentumDiffusion.sample: solver", solver, "split" if self.order == 2 else "em",
                        ("em", "heun", "split", "split_ode"))
        res = sample_phase_space(self.process, lambda u, t: self.score(u, t, cond), n, self.hparams.dim,
                                 steps or steps_for_nfe(method, self.sample_nfe), method, opts.grid, generator,
                                 counter=self.nfe, callback=opts.callback, return_trajectory=return_trajectory)
        res.x = data_part(res.x)
        if res.trajectory is not None:
            res.trajectory = [data_part(s) for s in res.trajectory]
        return res

    # -- evaluation -----------------------------------------------------------------------------
    def test_step(self, batch: dict, batch_idx: int) -> None:
        """Evaluation happens once per test epoch on the datamodule's val/test sets."""

    def on_test_epoch_end(self) -> None:
        dm = self.trainer.datamodule
        val, test = dm.val_set, dm.test_set
        h, nfe = self.hparams, int(self.sample_nfe)
        cands = [c for c in CANDIDATES[self.order] if not (c[0] == "heun" and nfe % 2)]
        scores = [self._evaluate(val, m, g, seed=1)[0] for m, g in cands]
        best = min(range(len(cands)), key=lambda i: scores[i])
        _, metrics, samples = self._evaluate(test, *cands[best], seed=2)
        self._log_media(samples, test, f"{h.process}_nfe{nfe}_{cands[best][0]}_{cands[best][1]}")
        metrics.update({"nfe": float(nfe), "sampler_index": float(best), "a_shift": self.a_shift()})
        if h.task == "shapes":
            metrics["transport"] = self._transport(nfe)
        if self.stiffness is not None:
            lam, _ = self.process.eig()
            metrics.update({"lam_min": float(lam.min()), "lam_max": float(lam.max())})
        for key, value in metrics.items():
            self.log(f"test/{key}", float(value), rank_zero_only=True)

    def _evaluate(self, ds, method: str, grid: str, seed: int) -> tuple[float, dict, torch.Tensor]:
        """(selection score, metrics, samples) of one sampler on a dataset (val for selection, test to report)."""
        h, gen = self.hparams, torch.Generator().manual_seed(seed)
        if h.task == "forecast":
            m = h.forecast_samples
            cond = ds.extras["cond"].repeat_interleave(m, 0)
            x = self.sample(len(cond), solver=method, generator=gen, cond=cond, grid=grid).x
            x = x.reshape(len(ds), m, -1).transpose(0, 1)
            crps = crps_samples(x, ds.x).mean()
            dm = self.trainer.datamodule
            scale = dm.std * (ds.x + ds.extras["last"][:, None]) + dm.mean  # targets in series units
            ncrps = crps * dm.std * ds.x.numel() / scale.abs().sum()
            return float(crps), {"crps": float(crps), "ncrps": float(ncrps)}, x
        x = self.sample(min(h.eval_samples, 4 * len(ds)), solver=method, generator=gen, grid=grid).x
        x = x.clamp(-1e4, 1e4)  # a diverged low-NFE sampler must give a large finite distance, not NaN
        swd = float(sliced_w2(x, ds.x, generator=torch.Generator().manual_seed(seed)))
        if h.task == "images":
            fd = self._frechet(x.clamp(-1, 1), ds.x)
            return fd, {"frechet": fd, "sliced_w2": swd}, x
        mmd = float(mmd_rbf(x[:1000], ds.x[:1000]))
        return swd, {"sliced_w2": swd, "mmd": mmd}, x

    def _log_media(self, x: torch.Tensor, ds, name: str) -> None:
        """Sample figure (scatter vs test data, image grid, or forecast fans) through modules.media."""
        if self.trainer is None or not self.trainer.is_global_zero:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from modules.media import log_figure, log_images

        task = self.hparams.task
        if task == "images":
            side = self.hparams.image_side
            log_images(self.trainer, f"test/samples/{name}", x[:64].clamp(-1, 1).reshape(-1, 1, side, side))
            return
        fig, ax = plt.subplots(figsize=(4, 4) if task == "shapes" else (7, 3))
        if task == "shapes":
            ax.scatter(*ds.x[:2000].T, s=1, c="0.7", label="test data")
            ax.scatter(*x[:2000].T.cpu(), s=1, c="C3", label="samples")
            ax.legend(loc="upper right", markerscale=5)
        else:  # forecast fans of the first test window: context, truth, 5-95% band of the samples
            c, y, q = ds.extras["cond"][0], ds.x[0], torch.quantile(x[:, 0].cpu(), torch.tensor([0.05, 0.5, 0.95]), 0)
            h = torch.arange(len(c), len(c) + len(y))
            ax.plot(range(len(c)), c, c="k")
            ax.plot(h, y, c="k", ls="--", label="truth")
            ax.fill_between(h, q[0], q[2], color="C3", alpha=0.3, label="5-95%")
            ax.plot(h, q[1], c="C3", label="median")
            ax.legend()
        ax.set_title(name, fontsize=8)
        log_figure(self.trainer, f"test/samples/{name}", fig)
        plt.close(fig)

    def _frechet(self, x: torch.Tensor, ref: torch.Tensor) -> float:
        if self._feature_net is None:
            dm, h = self.trainer.datamodule, self.hparams
            with torch.inference_mode(False), torch.enable_grad():  # trainer.test runs in inference mode
                self._feature_net = train_feature_net(dm.train_set.x.reshape(-1, 1, h.image_side, h.image_side),
                                                      dm.train_set.extras["y"], steps=h.feature_steps, seed=0)
        side = self.hparams.image_side
        f = lambda z: extract_features(self._feature_net, z.reshape(-1, 1, side, side))  # noqa: E731
        return frechet_distance(f(x), f(ref))

    def _transport(self, nfe: int) -> float:
        """Transport cost of probability-flow paths (Heun for order 1, ODE splitting for order 2) at
        equal NFE on a uniform grid, resampled on 100 common time points (core.eval.transport)."""
        method = "heun" if self.order == 1 else "split_ode"
        if method == "heun" and nfe % 2:
            return float("nan")
        gen = torch.Generator().manual_seed(3)
        steps = steps_for_nfe(method, nfe)
        res = self.sample(self.hparams.transport_paths, steps=steps, solver=method, generator=gen, return_trajectory=True)
        return float(transport_cost(torch.stack(res.trajectory).double(), res.times.double()[: steps + 1]))
