"""Full-batch edge-of-stability training: GD and variational GD (IVON with b1 = 0, b2 = 1).

docs/methods/eos_variational.md. ``FullBatchEoS`` trains an MLP on a fixed training set with one full batch per
step. ``optimizer='gd'`` is plain gradient descent; ``optimizer='vgd'`` runs ``switch_step`` GD steps and
then variational GD: m <- m - lr mean_s grad L(m + eps_s), eps_s ~ N(0, sigma_sq I), s = 1..mc_samples,
which is IVON with beta1 = 0, beta2 = 1 (frozen h = 1 / sigma_sq), ess = 1 and no weight decay. Starting
VGD from GD's trajectory shows the sharpness leaving GD's edge 2/lr for the lower VL threshold H_crit.

Shared GD trunk (``trunk_dir``): every variant of a study with the same seed, model, data and
``switch_step`` runs the same deterministic full-batch GD for its first ``switch_step`` steps. The first
variant to reach ``switch_step`` saves the weights there (and the SharpnessCallback's state, so plots and
the Lanczos warm start continue) to ``<trunk_dir>/trunk-<key>.pt``; later variants load it at the start of
fit and continue from step ``switch_step`` (Lightning's step counters are advanced, so max_steps, the
sharpness cadence and the late window are unchanged). The key hashes everything the trunk depends on
(hparams other than optimizer/sigma_sq/mc_samples, seed, the training tensor), so a stale file is never
used; a loaded trunk equals a recomputed one bit for bit (tests/modules/test_eos.py). Variants that load
a trunk log train/loss only from ``switch_step`` on.

``ProductModel`` is the toy loss L = (prod_i w_i - y)^2 / 2 (depth 2: the two-parameter model
(u v - y)^2 / 2; deeper: a scalar deep linear network), whose curvature u^2 + v^2 changes along the
minimum manifold u v = y, so the sharpness a method settles at is a choice of the dynamics.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.optim.ivon import IVON
from modules.base import GenLabModule

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "elu": nn.ELU}


def make_mlp(in_dim: int, widths: list[int], out_dim: int, activation: str = "tanh") -> nn.Sequential:
    if activation not in ACTIVATIONS:
        raise ValueError(f"module.activation: {activation!r} is not one of {sorted(ACTIVATIONS)}")
    layers, d = [], in_dim
    for w in widths:
        layers += [nn.Linear(d, w), ACTIVATIONS[activation]()]
        d = w
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class ProductModel(nn.Module):
    """L(w) = (prod_i w_i - y)^2 / 2 for scalar weights w (depth,). Hessian at a minimum: outer(p, p)
    with p_i = prod_{j != i} w_j, so the sharpness there is sum_i p_i^2 (u^2 + v^2 at depth 2)."""

    def __init__(self, init: list[float], target: float = 1.0):
        super().__init__()
        if len(init) < 2:
            raise ValueError(f"ProductModel: init needs >= 2 weights, got {init}")
        self.w = nn.Parameter(torch.tensor(init, dtype=torch.float64))
        self.target = target

    def loss(self, w: torch.Tensor | None = None) -> torch.Tensor:
        w = self.w if w is None else w
        return 0.5 * (torch.prod(w) - self.target) ** 2

    def _partials(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """r = prod w - y, p_i = prod_{j != i} w_j, q_ij = prod_{k != i, j} w_k (q_ii = 0)."""
        w = self.w.detach()
        d = len(w)
        eye = torch.eye(d, dtype=torch.bool)
        p = torch.stack([torch.prod(w[~eye[i]]) for i in range(d)])
        q = torch.zeros(d, d, dtype=w.dtype)
        for i in range(d):
            for j in range(d):
                if i != j:
                    q[i, j] = torch.prod(w[~(eye[i] | eye[j])])
        return torch.prod(w) - self.target, p, q

    def gradient(self) -> torch.Tensor:
        """dL/dw_i = r p_i, shape (depth,)."""
        r, p, _ = self._partials()
        return r * p

    def hessian(self) -> torch.Tensor:
        """d2L/dw_i dw_j = p_i p_j + r q_ij, shape (depth, depth)."""
        r, p, q = self._partials()
        return torch.outer(p, p) + r * q


class FullBatchEoS(GenLabModule):
    """Full-batch GD / variational GD on an MLP classifier (MSE on one-hot targets or cross-entropy).

    Args:
        in_dim, widths, out_dim, activation: the MLP (784-200-200-10 tanh in the EoS literature).
        loss: 'mse' (0.5 sum over outputs, mean over examples) or 'ce'.
        optimizer: 'gd' or 'vgd'. lr: step size. sigma_sq: VGD posterior variance per weight.
        mc_samples: N_s, posterior samples per VGD step. switch_step: GD steps before VGD starts.
        center: subtract the training-set mean image (a buffer, so it is saved with the model).
        input_scale: multiplies the centred input (0.5 turns the suite's [-1, 1] pixels into the
            [0, 1]-pixel scale of the EoS literature, on which the step sizes below were chosen).
        trunk_dir: folder where variants share the GD trunk up to ``switch_step`` (module docstring);
            None or '' computes it in every variant.
    """

    def __init__(self, in_dim: int = 784, widths: list[int] = (200, 200), out_dim: int = 10,
                 activation: str = "tanh", loss: str = "mse", optimizer: str = "gd", lr: float = 0.2,
                 sigma_sq: float = 1e-4, mc_samples: int = 1, switch_step: int = 0, center: bool = True,
                 input_scale: float = 1.0, trunk_dir: str | None = None):
        super().__init__()
        if loss not in ("mse", "ce"):
            raise ValueError(f"module.loss: expected 'mse' or 'ce', got {loss!r}")
        if optimizer not in ("gd", "vgd"):
            raise ValueError(f"module.optimizer: expected 'gd' or 'vgd', got {optimizer!r}")
        if sigma_sq <= 0 or mc_samples < 1 or lr <= 0:
            raise ValueError(f"module: need lr > 0, sigma_sq > 0, mc_samples >= 1; got lr={lr}, "
                             f"sigma_sq={sigma_sq}, mc_samples={mc_samples}")
        self.save_hyperparameters()
        self.automatic_optimization = False  # two optimisers in sequence: GD, then VGD
        self.net = make_mlp(in_dim, list(widths), out_dim, activation)
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self._trunk_file: Path | None = None
        self.trunk_loaded = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x.reshape(len(x), -1) - self.input_mean) * self.hparams.input_scale)

    def compute_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training loss of the batch at the current weights (deterministic: generator unused). Always in
        float32/64: edge-of-stability dynamics and thresholds are not meant to include bf16 rounding, so a
        mixed-precision trainer (trainer=gpu) does not change them."""
        x = batch["x"]
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._loss(self(x.to(self.input_mean.dtype)), batch["y"])

    def _loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.hparams.loss == "ce":
            return F.cross_entropy(out, y)
        target = F.one_hot(y, out.shape[-1]).to(out.dtype)
        return 0.5 * ((out - target) ** 2).sum(-1).mean()

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.hparams.center and stage == "fit" and dm is not None and hasattr(dm, "train_tensor"):
            x = dm.train_tensor()
            self.input_mean.copy_(x.reshape(len(x), -1).mean(0).to(self.input_mean))

    # ------------------------------------------------------------------ shared GD trunk
    def _trunk_path(self) -> Path | None:
        hp = self.hparams
        dm = getattr(self.trainer, "datamodule", None)
        if not hp.trunk_dir or hp.switch_step <= 0 or dm is None or not hasattr(dm, "train_tensor"):
            return None
        if getattr(dm, "batch_size", 0) < len(dm.train_tensor()):  # full batch only: every step sees all data
            return None
        keep = {k: v for k, v in hp.items() if k not in ("optimizer", "sigma_sq", "mc_samples", "trunk_dir")}
        h = hashlib.sha256(json.dumps({**keep, "widths": list(hp.widths), "seed": int(self.noise_seed)},
                                      sort_keys=True, default=str).encode())
        h.update(dm.train_tensor().detach().cpu().contiguous().numpy().tobytes())
        for name, t in sorted(getattr(getattr(dm, "train_set", None), "extras", {}).items()):  # labels
            h.update(name.encode() + t.detach().cpu().contiguous().numpy().tobytes())
        h.update(str(next(self.parameters()).dtype).encode())
        return Path(hp.trunk_dir) / f"trunk-{h.hexdigest()[:16]}.pt"

    def _sharpness_callbacks(self) -> list:
        """The callbacks whose state belongs to the trunk (``saved_with_trunk``: the sharpness history)."""
        return [cb for cb in self.trainer.callbacks if getattr(cb, "saved_with_trunk", False)]

    def on_train_start(self) -> None:
        """Continue from a saved GD trunk when one exists for this configuration (fresh fits only)."""
        self._trunk_file = self._trunk_path() if self.global_step == 0 else None
        if self._trunk_file is None or not self._trunk_file.exists():
            return
        state = torch.load(self._trunk_file, map_location=self.device, weights_only=True)
        self.load_state_dict(state["module"])
        for cb, cb_state in zip(self._sharpness_callbacks(), state["callbacks"]):
            cb.load_state_dict(cb_state)
        fit, loop = self.trainer.fit_loop, self.trainer.fit_loop.epoch_loop
        steps = int(state["step"])
        # advance Lightning's counters as a resume would: global_step (manual optimisation), batches and
        # epochs (a shuffling batch sampler's order is keyed by the epoch: same summation order as a rerun)
        epochs = steps // max(int(self.trainer.num_training_batches), 1)
        loop.manual_optimization.optim_step_progress.total.ready = steps
        loop.manual_optimization.optim_step_progress.total.completed = steps
        for attr in ("ready", "started", "processed", "completed"):
            setattr(loop.batch_progress.total, attr, steps)
            setattr(fit.epoch_progress.total, attr, epochs)
            setattr(fit.epoch_progress.current, attr, epochs)
        loop._batches_that_stepped = steps
        for sampler in (getattr(self.trainer.train_dataloader, n, None) for n in ("sampler", "batch_sampler")):
            if hasattr(sampler, "set_epoch"):  # GlobalBatchSampler counts its own epochs
                sampler.set_epoch(epochs)
        self.trunk_loaded = True

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """Save the trunk at switch_step (callbacks' hooks ran first, so their state includes this step)."""
        f = self._trunk_file
        if f is None or self.global_step != self.hparams.switch_step or f.exists() or not self.trainer.is_global_zero:
            return
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_suffix(".tmp")
        torch.save({"step": self.global_step, "module": self.state_dict(),
                    "callbacks": [cb.state_dict() for cb in self._sharpness_callbacks()]}, tmp)
        tmp.replace(f)  # atomic: a concurrent reader never sees half a file

    def active_optimizer(self) -> torch.optim.Optimizer:
        """The optimiser that takes the next step (the sharpness callback's thresholds follow it)."""
        opts = self.trainer.optimizers
        vgd = self.hparams.optimizer == "vgd" and self.global_step >= self.hparams.switch_step
        return opts[1] if vgd else opts[0]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        opts = self.optimizers()
        vgd = self.hparams.optimizer == "vgd" and self.global_step >= self.hparams.switch_step
        opt = opts[1] if vgd else (opts[0] if isinstance(opts, list) else opts)

        def closure():
            opt.zero_grad()
            loss = self.compute_loss(batch)
            self.manual_backward(loss)
            return loss

        loss = opt.step(closure=closure)
        self.log("train/loss", loss.detach(), prog_bar=True)
        return loss

    def _eval_step(self, batch: dict, stage: str) -> None:
        out = self(batch["x"])
        self.log(f"{stage}/loss", self.compute_loss(batch))
        self.log(f"{stage}/accuracy", (out.argmax(-1) == batch["y"]).float().mean())

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def configure_optimizers(self):
        hp = self.hparams
        gd = torch.optim.SGD(self.parameters(), lr=hp.lr)
        if hp.optimizer == "gd":
            return gd
        # sigma^2 = 1 / (ess (h0 + delta)) with ess = 1, delta = 0; rescale_lr makes the step lr * g_hat
        vgd = IVON(self.parameters(), lr=hp.lr, ess=1.0, hess_init=1.0 / hp.sigma_sq, beta1=0.0, beta2=1.0,
                   weight_decay=0.0, mc_samples=hp.mc_samples, seed=int(self.noise_seed))
        return [gd, vgd]
