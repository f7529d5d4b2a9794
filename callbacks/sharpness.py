"""SharpnessCallback: top Hessian eigenvalue and the optimiser's stability threshold during training.

Every ``every_n_steps`` optimiser steps, on rank 0, over a fixed probe batch (the first ``probe_size``
training examples; the loss noise fixed by a seeded generator through ``compute_loss(batch, generator)``):
  sharpness/lambda_max        top eigenvalue of the loss Hessian (warm-started Lanczos, core/optim/hessian.py)
  sharpness/lambda_max_err    its error bar r1 = ||H v - lambda_max v||: lambda_max is a lower bound and some
                              eigenvalue lies within r1 of it, so the top one is in [lambda_max, lambda_max + r1]
                              unless it escaped the Krylov space (docs/methods/eos_variational.md); also in
                              sharpness.csv, and precond_lambda_max_err beside precond_lambda_max
  sharpness/lr_times_lambda   lr * lambda_max (GD is at the edge when this is 2)
  sharpness/threshold         the threshold the relevant sharpness is compared with:
                              GD/SGD(momentum b): (2 + 2b)/lr on lambda_max;
                              variational GD (IVON b1=0, b2=1): 2/lr, with H_crit logged beside it;
                              Adam/AdamW/IVON(b1>0 or b2<1): (2 + 2 b1)/((1 - b1) lr) on the
                              preconditioned sharpness sharpness/precond_lambda_max = lambda_max(P^-1 H)
  sharpness/hcrit_proj        H_crit with |g|^2 = (g . v1)^2 averaged over the last ``window`` measurements
  sharpness/hcrit_full        H_crit with |g|^2 = full gradient norm^2 averaged over the same window
  sharpness/n_hvp             Hessian-vector products used by this estimate (cost in ~2 gradient evals each)
The model's parameters, ``.grad`` and train/eval mode are left as they are (tested), and so are the
global RNG and the module's NFE counter (callbacks.isolation.measuring). A plot of sharpness against
steps with the thresholds goes through modules.media at the end of fit.

Works on any module with ``compute_loss(batch, generator=None)`` (its loss noise then comes from the
callback's generator). Cost per measurement: ``n_hvp`` Hessian-vector products on the probe batch, each
a double backward pass (~2-3 gradient evaluations): Lanczos iterations until the top Ritz value settles
to ``rtol`` (at most ``max_iter``; warm-started from the previous eigenvector, so later measurements
need fewer), as many again for lambda_max(P^-1 H) under adaptive optimisers, plus one gradient.
"""

from __future__ import annotations

import math
from collections import deque

import torch
from lightning.pytorch import Callback

from callbacks.isolation import measuring
from core.optim.hessian import (
    HessianOperator,
    adam_preconditioner,
    critical_sharpness,
    ivon_preconditioner,
    lanczos_top_eigen,
    preconditioned_matvec,
)
from core.optim.ivon import IVON


def optimizer_stability(optimizer: torch.optim.Optimizer) -> dict:
    """Classify the optimiser: kind ('gd', 'vgd', 'adaptive'), effective lr, threshold, sigma^2, N_s."""
    group = optimizer.param_groups[0]
    lr = float(group["lr"])
    if lr <= 0:  # e.g. the last step of a cosine schedule: no finite threshold
        return dict(kind="none", lr=0.0, threshold=math.inf)
    if isinstance(optimizer, IVON):
        b1, b2, wd, h0 = group["beta1"], group["beta2"], group["weight_decay"], group["hess_init"]
        lr_eff = lr if optimizer.rescale_lr else lr / (h0 + wd)
        sigma_sq = 1.0 / (group["ess"] * (h0 + wd))
        if b1 == 0.0 and b2 == 1.0:
            return dict(kind="vgd", lr=lr_eff, threshold=2.0 / lr_eff, sigma_sq=sigma_sq,
                        n_samples=optimizer.mc_samples)
        return dict(kind="adaptive", lr=lr_eff, threshold=(2 + 2 * b1) / ((1 - b1) * lr_eff),
                    sigma_sq=sigma_sq, n_samples=optimizer.mc_samples)
    if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        b1 = group["betas"][0]
        return dict(kind="adaptive", lr=lr, threshold=(2 + 2 * b1) / ((1 - b1) * lr))
    if isinstance(optimizer, torch.optim.SGD):
        mom = float(group.get("momentum", 0.0))
        return dict(kind="gd", lr=lr, threshold=(2 + 2 * mom) / lr)
    raise ValueError(f"SharpnessCallback: no stability threshold known for {type(optimizer).__name__}; "
                     "expected SGD, Adam, AdamW or IVON")


def _concat_batches(batches: list, n: int):
    first = batches[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(batches)[:n]
    if isinstance(first, dict):
        return {k: _concat_batches([b[k] for b in batches], n) for k in first}
    if isinstance(first, list | tuple):
        return type(first)(_concat_batches([b[i] for b in batches], n) for i in range(len(first)))
    return first


class SharpnessCallback(Callback):
    """See module docstring. every_n_steps: cadence; probe_size: examples in the fixed probe batch;
    rtol: Lanczos relative accuracy; window: measurements averaged for |g|^2 in H_crit;
    start_step: first step measured; precond: also measure lambda_max(P^-1 H) for adaptive optimisers."""

    # its history is part of a module's saved GD trunk (modules.eos): restored with the weights
    saved_with_trunk = True

    def __init__(self, every_n_steps: int = 50, probe_size: int = 1000, rtol: float = 1e-3,
                 max_iter: int = 100, window: int = 5, start_step: int = 0, probe_seed: int = 0,
                 precond: bool = True, plot: bool = True):
        if every_n_steps < 1 or probe_size < 1 or window < 1:
            raise ValueError("SharpnessCallback: every_n_steps, probe_size and window must be >= 1, got "
                             f"{every_n_steps}, {probe_size}, {window}")
        self.every_n_steps, self.probe_size, self.rtol, self.max_iter = every_n_steps, probe_size, rtol, max_iter
        self.window, self.start_step, self.probe_seed = window, start_step, probe_seed
        self.precond, self.plot = precond, plot
        self.history: list[dict] = []
        self._probe = None
        self._v = None
        self._v_pre = None
        self._grad_window: deque = deque(maxlen=window)
        self._last_step = -1

    # ------------------------------------------------------------------ probe
    def _probe_batch(self, trainer, pl_module):
        if self._probe is None:
            from lightning.pytorch.utilities import move_data_to_device
            dm = getattr(trainer, "datamodule", None)
            dataset = getattr(dm, "train_set", None) if dm is not None else None
            if dm is not None and hasattr(dm, "probe_batch"):
                batch = dm.probe_batch(self.probe_size)
            elif dataset is not None and hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"):
                # the first probe_size examples, read from the dataset: iterating the train loader would
                # advance its shuffling epoch and change the training run's data order
                from torch.utils.data import default_collate
                batch = default_collate([dataset[i] for i in range(min(self.probe_size, len(dataset)))])
            else:
                batches, count = [], 0
                for b in trainer.train_dataloader:
                    batches.append(b)
                    x = b["index"] if isinstance(b, dict) and "index" in b else (
                        b[0] if isinstance(b, list | tuple) else next(iter(b.values())) if isinstance(b, dict) else b)
                    count += len(x)
                    if count >= self.probe_size:
                        break
                batch = _concat_batches(batches, self.probe_size)
            self._probe = move_data_to_device(batch, next(pl_module.parameters()).device)
        return self._probe

    # ------------------------------------------------------------------ measurement
    def measure(self, trainer, pl_module) -> dict:
        """One sharpness measurement at the current parameters; returns the logged values."""
        if not hasattr(pl_module, "compute_loss"):
            raise AttributeError(f"SharpnessCallback: {type(pl_module).__name__} has no compute_loss(batch, generator)")
        batch = self._probe_batch(trainer, pl_module)
        params = [p for p in pl_module.parameters() if p.requires_grad]
        device = params[0].device

        def loss_fn():
            gen = torch.Generator(device=device).manual_seed(self.probe_seed)
            return pl_module.compute_loss(batch, generator=gen)

        op = HessianOperator(loss_fn, params)
        seed = self.probe_seed + 2 * len(self.history)  # a fresh random direction mixed into each warm start
        res = lanczos_top_eigen(op.matvec, op.dim, v0=self._v, rtol=self.rtol, max_iter=self.max_iter,
                                generator=torch.Generator().manual_seed(seed))
        lam = float(res.eigenvalues[0])
        self._v = res.eigenvectors[:, 0].float()
        grad = op.gradient().to("cpu", torch.float64)
        g_proj_sq = float(grad @ self._v.double()) ** 2
        self._grad_window.append((g_proj_sq, float(grad @ grad)))
        opt = pl_module.active_optimizer() if hasattr(pl_module, "active_optimizer") else trainer.optimizers[0]
        info = optimizer_stability(opt)
        out = {"lambda_max": lam, "lr_times_lambda": info["lr"] * lam, "threshold": info["threshold"],
               "grad_proj_sq": g_proj_sq, "grad_sq": float(grad @ grad), "n_hvp": float(res.n_matvec),
               "lambda_max_err": float(res.residuals[0]),
               "loss": float(op.loss)}
        out["sigma_sq"] = info.get("sigma_sq", 0.0)
        out["mc_samples"] = float(info.get("n_samples", 0))
        if info["kind"] == "vgd":
            gp = sum(w[0] for w in self._grad_window) / len(self._grad_window)
            gf = sum(w[1] for w in self._grad_window) / len(self._grad_window)
            out["hcrit_proj"] = critical_sharpness(info["lr"], info["sigma_sq"], info["n_samples"], gp)
            out["hcrit_full"] = critical_sharpness(info["lr"], info["sigma_sq"], info["n_samples"], gf)
        if info["kind"] == "adaptive" and self.precond:
            p_diag = ivon_preconditioner(opt, params) if isinstance(opt, IVON) else adam_preconditioner(opt, params)
            if p_diag is not None:
                pre = lanczos_top_eigen(preconditioned_matvec(op.matvec, p_diag), op.dim, v0=self._v_pre,
                                        rtol=self.rtol, max_iter=self.max_iter,
                                        generator=torch.Generator().manual_seed(seed + 1))
                self._v_pre = pre.eigenvectors[:, 0].float()
                out["precond_lambda_max"] = float(pre.eigenvalues[0])
                out["precond_lambda_max_err"] = float(pre.residuals[0])
                out["lr_times_precond_lambda"] = info["lr"] * out["precond_lambda_max"]
        return out

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self._last_step or step < self.start_step or step % self.every_n_steps != 0:
            return
        self._last_step = step  # once per optimiser step, also under gradient accumulation
        if trainer.is_global_zero:
            with measuring(pl_module):
                values = self.measure(trainer, pl_module)
            self.history.append({"step": step, **values})
            from modules.media import log_measurement  # once, at this step (not re-sent by Lightning)
            log_measurement(trainer, {f"sharpness/{k}": v for k, v in values.items() if math.isfinite(v)})

    def on_train_end(self, trainer, pl_module):
        if self.history and trainer.is_global_zero:
            self._write_csv(trainer)
            if self.plot:
                self._log_plot(trainer)

    def late_summary(self, max_step: int, late_fraction: float = 0.2) -> dict:
        """Means over measurements in the last ``late_fraction`` of ``max_step`` steps ("late training"),
        leaving out measurements taken at lr = 0.

        H_crit here uses |g|^2 averaged over that whole late window (projected on v1, and full norm).
        """
        # measurements at lr = 0 (the last step of a decay-to-zero schedule) have no threshold: left out
        late = [h for h in self.history if h["step"] >= (1 - late_fraction) * max_step
                and math.isfinite(h["threshold"])]
        if not late:
            return {}
        mean = lambda key: sum(h[key] for h in late) / len(late)  # noqa: E731
        out = {"late_lambda_max": mean("lambda_max"), "late_threshold": mean("threshold"),
               "late_lr_times_lambda": mean("lr_times_lambda"), "late_n": float(len(late)),
               "late_lambda_max_std": (sum((h["lambda_max"] - mean("lambda_max")) ** 2 for h in late)
                                       / max(len(late) - 1, 1)) ** 0.5}
        if all("precond_lambda_max" in h for h in late):
            out["late_precond_lambda_max"] = mean("precond_lambda_max")
            out["late_lr_times_precond_lambda"] = mean("lr_times_precond_lambda")
        if "hcrit_proj" in late[-1]:
            lr = late[-1]["lr_times_lambda"] / late[-1]["lambda_max"] if late[-1]["lambda_max"] else None
            if lr:
                hp = critical_sharpness(lr, late[-1]["sigma_sq"], int(late[-1]["mc_samples"]), mean("grad_proj_sq"))
                hf = critical_sharpness(lr, late[-1]["sigma_sq"], int(late[-1]["mc_samples"]), mean("grad_sq"))
                out.update(late_hcrit_proj=hp, late_hcrit_full=hf,
                           late_ratio_hcrit_proj=out["late_lambda_max"] / hp if hp > 0 else float("nan"),
                           late_ratio_hcrit_full=out["late_lambda_max"] / hf if hf > 0 else float("nan"))
        return out

    def on_test_epoch_end(self, trainer, pl_module):
        """Late-training summaries land in results.json through trainer.test (run.py calls it)."""
        max_step = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else trainer.global_step
        for k, v in self.late_summary(max_step).items():
            if math.isfinite(v):
                pl_module.log(f"sharpness/{k}", v, rank_zero_only=True)

    def _write_csv(self, trainer):
        import csv
        import os
        keys = sorted({k for h in self.history for k in h} - {"step"})
        os.makedirs(trainer.default_root_dir, exist_ok=True)
        path = os.path.join(trainer.default_root_dir, "sharpness.csv")
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, ["step"] + keys)
            writer.writeheader()
            writer.writerows(self.history)

    def _log_plot(self, trainer):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        steps = [h["step"] for h in self.history]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(steps, [h["lambda_max"] for h in self.history], label=r"$\lambda_{max}(H)$")
        ax.plot(steps, [h["threshold"] for h in self.history], "k--", label="threshold")
        for key, style, label in [("hcrit_proj", "r:", r"$H_{crit}$ (g on $v_1$)"),
                                  ("hcrit_full", "m:", r"$H_{crit}$ (full g)"),
                                  ("precond_lambda_max", "g-", r"$\lambda_{max}(P^{-1}H)$")]:
            if key in self.history[-1]:
                ax.plot(steps, [h.get(key, float("nan")) for h in self.history], style, label=label)
        ax.set_xlabel("step")
        ax.set_ylabel("sharpness")
        ax.legend(fontsize=7)
        fig.tight_layout()
        try:
            from modules.media import log_figure
            log_figure(trainer, "sharpness/plot", fig)
        except ImportError:  # media helpers not available: save beside the logs
            import os
            fig.savefig(os.path.join(trainer.default_root_dir, "sharpness.png"), dpi=100)
        plt.close(fig)

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        return {"history": list(self.history), "grad_window": list(self._grad_window),
                "v": None if self._v is None else self._v.clone(),
                "v_pre": None if self._v_pre is None else self._v_pre.clone(), "last_step": self._last_step}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state["history"])
        self._grad_window = deque([tuple(w) for w in state["grad_window"]], maxlen=self.window)
        self._v, self._v_pre, self._last_step = state["v"], state["v_pre"], state["last_step"]
