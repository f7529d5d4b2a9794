"""Ridge geometry of sampling trajectories at validation time (docs/methods/ridge_phases.md).

The measurement is core.ridge.analysis.analyse_sampling; this callback runs it on any module that
offers ``sample(n, generator, return_trajectory=True)`` (a :class:`core.diffusion.solvers.SampleResult`)
and a datamodule with ``train_tensor()``. When the module has ``process`` (a scalar process) and
``score(x, t)``, the displacement of each analysed step is the drift part of the reverse SDE
(free of the sampler's isotropic noise); otherwise the raw increments over ``stride`` steps.
A module whose trajectories live in another space (a latent) provides ``ridge_reference()``,
the training set in that space.
"""

from __future__ import annotations

import math

import lightning as L
import torch

from core.ridge.analysis import (
    analyse_sampling,
    final_sample_metrics,
    ridge_time_by_spacing,
    sde_drift_displacement,
)
from core.ridge.figures import plot_projection, plot_ridge_2d, plot_series
from core.ridge.geometry import nearest_neighbour_spacing, unique_with_weights
from modules.media import log_figure, log_measurement


class RidgeCallback(L.Callback):
    """Samples with trajectories every ``every_n_steps`` (at validation) and logs ridge metrics.

    Logged (``ridge/...``): final-sample median normal offset and normalised normal score, eigengap,
    fraction near a training point / on the ridge away from training points, phase start times
    (``t_reach`` ...), last-20% tangent/normal shares; figures of trajectories (2-D) and series.
    ``ridge_time``: a float, or ``auto`` (sqrt(h)/a = ``spacing_factor`` x nearest-neighbour spacing).
    Thresholds are config values, fixed before the run.
    """

    def __init__(
        self,
        every_n_steps: int = 1000,
        n: int = 256,
        d_star: int = 1,
        ridge_time: float | str = "auto",
        spacing_factor: float = 1.0,
        reach: float = 0.5,
        align: float = 0.6,
        slide: float = 0.6,
        smooth: int = 3,
        persist: int = 2,
        n_steps_analysed: int = 50,
        near_radius: float = 0.1,
        ridge_radius: float = 0.05,
        max_train: int = 2000,
        seed: int = 0,
    ) -> None:
        if not (isinstance(ridge_time, (int, float)) or ridge_time == "auto"):
            raise ValueError(f"callbacks.ridge.ridge_time must be a number or 'auto', got {ridge_time!r}")
        self.every_n_steps, self.n, self.d_star, self.ridge_time = every_n_steps, n, d_star, ridge_time
        self.spacing_factor, self.n_steps_analysed, self.seed = spacing_factor, n_steps_analysed, seed
        self.thresholds = {
            "reach": reach,
            "align": align,
            "slide": slide,
            "smooth": smooth,
            "persist": persist,
        }
        self.near_radius, self.ridge_radius, self.max_train = near_radius, ridge_radius, max_train
        self._last_step = -1

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        due = self.every_n_steps > 0 and step % self.every_n_steps == 0
        last = trainer.max_steps > 0 and step >= trainer.max_steps
        if trainer.sanity_checking or step == self._last_step or not (due or last):
            return
        if not getattr(pl_module, "ridge_ready", True):  # e.g. a latent model still training its VAE
            return
        self._last_step = step
        self.measure(trainer, pl_module)

    def _reference(self, trainer, pl_module) -> torch.Tensor:
        if hasattr(pl_module, "ridge_reference"):
            ref = pl_module.ridge_reference()
        else:
            ref = trainer.datamodule.train_tensor()
        ref = ref.detach().double().cpu().reshape(len(ref), -1)
        g = torch.Generator().manual_seed(self.seed)
        return ref[torch.randperm(len(ref), generator=g)[: self.max_train]] if len(ref) > self.max_train else ref

    @torch.no_grad()
    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        if not trainer.is_global_zero:
            return {}
        train = self._reference(trainer, pl_module)
        if train.shape[1] <= self.d_star:
            raise ValueError(
                f"callbacks.ridge.d_star = {self.d_star} must be below the data dimension {train.shape[1]}"
            )
        res = pl_module.sample(self.n, generator=torch.Generator().manual_seed(self.seed), return_trajectory=True)
        traj = torch.stack([s.detach().double().cpu().reshape(self.n, -1) for s in res.trajectory])
        times = res.times.detach().double().cpu()
        process = pl_module.process
        t_r = (
            ridge_time_by_spacing(train, process, self.spacing_factor)
            if self.ridge_time == "auto"
            else float(self.ridge_time)
        )
        spacing = nearest_neighbour_spacing(unique_with_weights(train)[0])
        stride = max(1, (len(times) - 1) // self.n_steps_analysed)
        disp = sde_drift_displacement(pl_module, times) if hasattr(pl_module, "score") else None
        series, phases, summary = analyse_sampling(
            traj, times, train, process, self.d_star, t_r, spacing, self.thresholds, stride, disp
        )
        a_end = float(process.alpha(times[-1]))
        final = final_sample_metrics(traj[-1] / a_end, train, process, self.d_star, t_r)
        d_near = torch.cdist(traj[-1] / a_end, unique_with_weights(train)[0]).min(1).values
        near = d_near <= self.near_radius * spacing
        between = (~near) & (final["normal_offset"] <= self.ridge_radius * spacing)
        metrics = {
            "ridge/time": t_r,
            "ridge/eigengap": float(final["eigengap"].median()),
            "ridge/normal_offset": float(final["normal_offset"].median()),
            "ridge/normalized_normal_score": float(final["normalized_normal_score"].median()),
            "ridge/near_train_fraction": float(near.double().mean()),
            "ridge/on_ridge_between_fraction": float(between.double().mean()),
        }
        metrics.update({f"ridge/{k}": v for k, v in summary.items() if math.isfinite(v)})
        log_measurement(trainer, metrics)
        log_figure(trainer, "ridge/series", plot_series(series, phases, f"step {trainer.global_step}"))
        a = torch.tensor([float(process.alpha(t)) for t in times], dtype=torch.float64)
        late = traj[int((times > t_r).sum()) :] / a[int((times > t_r).sum()) :, None, None]  # t <= t_r
        if traj.shape[2] == 2:
            fig = plot_ridge_2d(
                late,
                train,
                process,
                t_r,
                self.d_star,
                traj[-1] / a_end,
                f"trajectories for t <= {t_r:.3g}, ridge of p_t at t = {t_r:.3g}",
            )
        else:
            fig = plot_projection(late, train, traj[-1] / a_end, f"principal-axis projection, t <= {t_r:.3g}")
        log_figure(trainer, "ridge/trajectories", fig)
        return metrics
