"""IVON: improved variational online Newton (Shen et al., 2024) as a ``torch.optim.Optimizer``.

IVON keeps a diagonal Gaussian posterior q(theta) = N(m, diag(sigma^2)) with
sigma^2 = 1 / (ess * (h + delta)), where ``ess`` is the effective sample size (usually the training-set
size), ``h`` a running Hessian-diagonal estimate and ``delta`` the weight decay (prior precision / ess).
One step (docs/methods/eos_variational.md; equations of the IVON paper, Alg. 1), for MC samples s = 1..S:

    eps_s ~ N(0, sigma^2),  theta_s = m + eps_s,   g_s = grad L(theta_s)
    g_hat = mean_s g_s
    f     = ess (h + delta) mean_s(eps_s * g_s)                          (Price / Stein Hessian estimate)
    h    <- b2 h + (1 - b2) f + 0.5 (1 - b2)^2 (h - f)^2 / (h + delta)    (keeps h > 0)
    mu   <- b1 mu + (1 - b1) g_hat
    m    <- m - lr (h0 + delta) clip((mu / (1 - b1^t) + delta m) / (h + delta), +-clip_radius)

With b1 = 0 and b2 = 1 the Hessian estimate is frozen at h0 and IVON is "variational GD" (used in the
edge-of-stability study): m <- m - lr (g_hat + delta m), g_hat averaged over S perturbations of fixed
isotropic variance sigma^2 = 1 / (ess (h0 + delta)).

Lightning / PyTorch usage. Between steps the parameters hold the posterior mean m, so validation,
checkpoints and ``state_dict`` see the mean. ``step(closure)`` evaluates the closure S times, each under
freshly sampled weights (``sampled_params(train=True)``); this is what Lightning's automatic
optimisation calls (its closure runs training_step, zero_grad, backward). A manual loop may instead wrap
its own forward/backward in ``sampled_params(train=True)`` S times and call ``step()``.
Gradient accumulation: a micro-batch run outside ``step`` inside ``sampled_params(train=True)`` (the
module does this, see modules/variational_classifier.py) is evaluated at its own posterior sample and its
gradient (the increase of ``.grad`` since the context was entered, or since ``zero_grad``) is summed into
the window; the closure that ``step`` then evaluates adds the last micro-batch. Each micro-batch carries
1/k of the loss, so the sums are unbiased for g and for the Hessian diagonal (one sample per micro-batch;
``mc_samples`` must then be 1).
Noise and DDP: with ``seed=None`` the noise comes from the global torch RNG (as the reference package
``ivon-opt`` does; identical across ranks only if every rank consumes it identically). With an integer
``seed`` each sample's noise comes from a generator keyed by (seed, step, sample, group), so every rank
draws the same perturbation; DDP all-reduces the gradient during backward, so all ranks hold identical
m, h, mu and the run equals one process on the global batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64 finaliser on a Python int: decorrelates nearby integer keys."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def keyed_seed(*keys: int) -> int:
    """A 63-bit seed that is a pure function of the integer keys (seed, step, sample, group)."""
    h = 0
    for k in keys:
        h = _mix64(h ^ (int(k) & _MASK64))
    return h & ((1 << 63) - 1)


class IVON(torch.optim.Optimizer):
    """IVON optimizer (see module docstring for the update and usage).

    Args:
        params: parameters or param groups (all on one device, one dtype per group).
        lr: learning rate alpha. ess: effective sample size lambda (> 0).
        hess_init: h0 > 0. beta1, beta2: in [0, 1]. weight_decay: delta >= 0.
        mc_samples: S >= 1 posterior samples per step. clip_radius: elementwise update clip (> 0).
        rescale_lr: multiply lr by (h0 + delta) (the reference default) so that lr is GD-like.
        debias: divide the momentum by 1 - b1^t.
        seed: None -> global RNG; int -> noise keyed by (seed, step, sample, group) (DDP-safe).
    """

    def __init__(
        self,
        params,
        lr: float,
        ess: float,
        hess_init: float = 1.0,
        beta1: float = 0.9,
        beta2: float = 0.99999,
        weight_decay: float = 1e-4,
        mc_samples: int = 1,
        clip_radius: float = math.inf,
        rescale_lr: bool = True,
        debias: bool = True,
        seed: int | None = None,
    ):
        checks = {
            "lr": lr >= 0.0, "ess": ess > 0.0, "hess_init": hess_init > 0.0,
            "beta1": 0.0 <= beta1 <= 1.0, "beta2": 0.0 <= beta2 <= 1.0,
            "weight_decay": weight_decay >= 0.0, "mc_samples": int(mc_samples) == mc_samples >= 1,
            "clip_radius": clip_radius > 0.0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            vals = {k: v for k, v in locals().items() if k in bad}
            raise ValueError(f"IVON: invalid hyperparameter(s) {vals}; expected lr>=0, ess>0, hess_init>0, "
                             "beta1/beta2 in [0,1], weight_decay>=0, integer mc_samples>=1, clip_radius>0")
        defaults = dict(lr=lr, ess=ess, hess_init=hess_init, beta1=beta1, beta2=beta2,
                        weight_decay=weight_decay, clip_radius=clip_radius, step=0)
        super().__init__(params, defaults)
        self.mc_samples = int(mc_samples)
        self.rescale_lr = rescale_lr
        self.debias = debias
        self.seed = seed
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state[p]
                st["momentum"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["hess"] = torch.full_like(p, hess_init)
        # Mutable run-time state lives in one dict that is never rebound: Lightning's LightningOptimizer
        # wraps an optimizer by copying its __dict__ (shallow), so flags set through the wrapper (e.g. its
        # zero_grad in a manual-optimisation closure) must land in an object both share.
        self._rt = {"window": None, "sampling": False, "grads_zeroed": False}
        self._reset_window()

    # ------------------------------------------------------------------ posterior
    def posterior_std(self, group: dict) -> list[Tensor]:
        """Per-parameter sigma = 1 / sqrt(ess (h + delta)), same shapes as the group's params."""
        return [(group["ess"] * (self.state[p]["hess"] + group["weight_decay"])).rsqrt()
                for p in group["params"]]

    def _generator(self, sample_index: int, group_index: int, device: torch.device):
        if self.seed is None:
            return None
        g = torch.Generator(device=device)
        g.manual_seed(keyed_seed(self.seed, self.param_groups[0]["step"], sample_index, group_index))
        return g

    def _draw_noise(self, sample_index: int, generator: torch.Generator | None) -> list[list[Tensor]]:
        """eps ~ N(0, sigma^2): one flat normal draw per group (the reference's draw order)."""
        noise = []
        for gi, group in enumerate(self.param_groups):
            params = group["params"]
            if not params:
                noise.append([])
                continue
            numel = sum(p.numel() for p in params)
            gen = generator if generator is not None else self._generator(sample_index, gi, params[0].device)
            z = torch.randn(numel, device=params[0].device, dtype=params[0].dtype, generator=gen)
            per_param, off = [], 0
            for p, std in zip(params, self.posterior_std(group)):
                per_param.append(z[off:off + p.numel()].view_as(p) * std)
                off += p.numel()
            noise.append(per_param)
        return noise

    @contextmanager
    def sampled_params(self, train: bool = False, generator: torch.Generator | None = None) -> Iterator[None]:
        """Temporarily set the parameters to theta = m + eps, eps ~ q; restore m on exit.

        train=True records the gradient of this sample (``.grad`` minus its value on entry, or all of
        ``.grad`` when ``zero_grad`` ran inside) for the next ``step``. ``generator`` overrides the noise
        source (e.g. posterior-predictive evaluation with a fixed generator).
        """
        if self._rt["sampling"]:
            raise RuntimeError("IVON.sampled_params: already inside a sample (nested sampling, e.g. a closure "
                               "that samples itself passed to step(closure)); sample in one place only")
        window = self._rt["window"]
        noise = self._draw_noise(window["draws"], generator)
        if generator is None:  # an evaluation with its own generator must not shift the training noise
            window["draws"] += 1
        means = []
        baseline = []
        with torch.no_grad():
            for group, eps in zip(self.param_groups, noise):
                for p, e in zip(group["params"], eps):
                    means.append(p.detach().clone())
                    baseline.append(None if p.grad is None else p.grad.detach().clone())
                    p.add_(e)
        self._rt["sampling"], self._rt["grads_zeroed"] = True, False
        try:
            yield
        finally:
            self._rt["sampling"] = False
            with torch.no_grad():
                i = 0
                for group, eps in zip(self.param_groups, noise):
                    for p, e in zip(group["params"], eps):
                        p.copy_(means[i])
                        if train:
                            g = torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
                            if baseline[i] is not None and not self._rt["grads_zeroed"]:
                                g -= baseline[i]
                            self._accumulate(p, g, e)
                        i += 1
            if train:
                window["count"] += 1

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none=set_to_none)
        self._rt["grads_zeroed"] = True  # a sample's gradient is then all of .grad, not an increase

    def _accumulate(self, p: Tensor, g: Tensor, eps: Tensor) -> None:
        acc = self._rt["window"]["sums"].setdefault(p, [torch.zeros_like(p), torch.zeros_like(p)])
        acc[0] += g
        acc[1] += eps * g

    def _reset_window(self) -> None:
        self._rt["window"] = {"count": 0, "draws": 0, "sums": {}}

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One IVON update. closure: re-evaluates loss and calls backward (Lightning's closure does)."""
        loss = None
        outside = self._rt["window"]["count"]  # samples recorded before step: accumulation micro-batches
        if closure is not None:
            if outside > 0 and self.mc_samples > 1:
                raise RuntimeError("IVON: gradient accumulation (samples recorded outside step) needs "
                                   f"mc_samples=1, got mc_samples={self.mc_samples}")
            losses = []
            for _ in range(self.mc_samples):
                with torch.enable_grad(), self.sampled_params(train=True):
                    losses.append(closure())
            loss = sum(losses) / len(losses) if losses[0] is not None else None
            divisor = self.mc_samples if outside == 0 else 1
        else:
            if outside == 0:
                raise RuntimeError("IVON.step() without a closure needs gradients recorded inside "
                                   "`with optimizer.sampled_params(train=True):` first")
            divisor = outside
        self._update(divisor)
        self._reset_window()
        return loss

    @torch.no_grad()
    def _update(self, divisor: int) -> None:
        sums = self._rt["window"]["sums"]
        for group in self.param_groups:
            group["step"] += 1
            b1, b2, wd, ess = group["beta1"], group["beta2"], group["weight_decay"], group["ess"]
            lr = group["lr"] * (group["hess_init"] + wd) if self.rescale_lr else group["lr"]
            debias = 1.0 - b1 ** group["step"] if self.debias else 1.0
            for p in group["params"]:
                st = self.state[p]
                g_sum, nxg_sum = sums.get(p, (torch.zeros_like(p), torch.zeros_like(p)))
                g_hat, nxg = g_sum / divisor, nxg_sum / divisor
                h = st["hess"]
                st["momentum"].mul_(b1).add_(g_hat, alpha=1.0 - b1)
                f = nxg * (h + wd) * ess
                h_new = b2 * h + (1.0 - b2) * f + 0.5 * (1.0 - b2) ** 2 * (h - f).square() / (h + wd)
                st["hess"] = h_new
                direction = (st["momentum"] / debias + wd * p) / (h_new + wd)
                p.sub_(lr * direction.clamp(-group["clip_radius"], group["clip_radius"]))

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def predictive_mean(self, predict: Callable[[], Tensor], n_samples: int,
                        generator: torch.Generator | None = None) -> Tensor:
        """Posterior-predictive average (1/n) sum_s predict() under theta_s ~ q (e.g. softmax probs)."""
        if n_samples < 1:
            raise ValueError(f"IVON.predictive_mean: n_samples must be >= 1, got {n_samples}")
        total = None
        for _ in range(n_samples):
            with self.sampled_params(train=False, generator=generator):
                out = predict()
            total = out if total is None else total + out
        return total / n_samples
