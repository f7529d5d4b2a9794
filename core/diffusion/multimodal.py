"""Multimodal diffusion with decoupled times (Rojas, Zhu, Zhu, Ye, Tao 2025, "Diffuse Everything").

The state is a tuple of parts, e.g. (numeric columns (B, n_num), categorical columns (B, n_cat)) for a
table or (image (B, C, H, W), caption tokens (B, L)) for text-image pairs. Continuous parts follow one
VP process (core.diffusion.processes.VP, parametrised by its log-mean: x_t = a_t x0 + sigma_t eps with
log a_t = -(beta_min t + (beta_max - beta_min) t^2 / 2) / 2; the paper's tabular code writes e^{-s}
with s twice this log-mean); discrete parts follow absorbing diffusion (core.diffusion.masked).

Every position of every part belongs to a *time group*; each group g has its own time t_g, so the
model p_theta(x0 | x_t) sees a time vector t (B, G). Training draws the t_g independently (Sec. 3 of
the paper), so one network learns the joint (all t_g equal on the way down) and every conditional
(condition = the other groups held at t = 0). The loss is, per part, eps-MSE for continuous parts
and the weighted cross-entropy m'(t)/m(t) [masked] (-log p) for discrete ones; the module sums them
as L_cont + lambda L_disc.

``model_fn(state: tuple, t_groups (B, G)) -> tuple`` returns, part by part, the eps prediction
(continuous) or logits (B, L, V) (discrete).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from core.diffusion.masked import MaskedDiffusion, draw
from core.utils.nfe import EvalCounter
from core.diffusion.processes import VP
from core.diffusion.solvers import SampleResult

ModelFn = Callable[[tuple, torch.Tensor], tuple]
KINDS = ("continuous", "discrete")


@dataclass(frozen=True)
class Part:
    """One part of the state: ``kind`` continuous or discrete; ``groups``: one time group for the whole
    part (int) or one per position along dim 1 (tuple), e.g. a table's columns."""

    kind: str
    groups: int | tuple[int, ...]

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Part kind must be one of {KINDS}, got {self.kind!r}")


def _expand(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-example (B,) or per-position (B, n) times -> broadcastable against x (B, n, ...)."""
    return t.reshape(*t.shape, *([1] * (x.ndim - t.ndim)))


class MultimodalProcess:
    """Tuple-state forward process with per-group times; see the module docstring."""

    def __init__(
        self,
        parts: Sequence[Part],
        n_groups: int,
        continuous: VP | None = None,
        discrete: MaskedDiffusion | None = None,
        t_min: float = 1e-3,
    ) -> None:
        self.parts = list(parts)
        self.n_groups = int(n_groups)
        for i, p in enumerate(self.parts):
            gs = (p.groups,) if isinstance(p.groups, int) else p.groups
            if any(g < 0 or g >= n_groups for g in gs):
                raise ValueError(f"part {i} names time groups {gs}; valid groups are 0..{n_groups - 1}")
            if p.kind == "discrete" and discrete is None:
                raise ValueError(f"part {i} is discrete but no MaskedDiffusion was given")
        self.continuous = continuous if continuous is not None else VP()
        self.discrete = discrete
        self.t_min = t_min

    # ----- times -----------------------------------------------------------------------------
    def part_time(self, i: int, t_groups: torch.Tensor) -> torch.Tensor:
        """Times of part i: (B,) for a single-group part, (B, n) for per-position groups."""
        g = self.parts[i].groups
        if isinstance(g, int):
            return t_groups[:, g]
        return t_groups[:, torch.as_tensor(g, device=t_groups.device)]

    def group_mask(self, i: int, groups: Sequence[int], device=None) -> torch.Tensor:
        """Bool over part i's positions (scalar for a single-group part): in one of ``groups``?"""
        g = self.parts[i].groups
        if isinstance(g, int):
            return torch.tensor(g in groups, device=device)
        return torch.tensor([x in groups for x in g], device=device)

    def draw_times(
        self, u: torch.Tensor, p_condition: float = 0.0, p_equal: float = 0.0, shared: bool = False
    ) -> torch.Tensor:
        """Training times (B, G) from uniforms u (B, G + 2).

        Independent t_g ~ U[t_min, 1]; with probability ``p_condition`` one group (chosen by
        u[:, G + 1]) is set to 0 (trains the conditionals); with probability ``p_equal`` all groups
        take group 0's time (trains the joint path); ``shared`` = one time for all groups always
        (the shared-time baseline)."""
        G = self.n_groups
        if u.shape[1] != G + 2:
            raise ValueError(f"draw_times needs uniforms of shape (B, {G + 2}), got {tuple(u.shape)}")
        t = self.t_min + u[:, :G] * (1.0 - self.t_min)
        if shared:
            return t[:, :1].expand(-1, G).clone()
        mode = u[:, G]
        equal = (mode >= p_condition) & (mode < p_condition + p_equal)
        t = torch.where(equal.unsqueeze(1), t[:, :1].expand(-1, G), t)
        cond_group = (u[:, G + 1] * G).long().clamp_max(G - 1)
        zero = (mode < p_condition).unsqueeze(1) & (torch.arange(G, device=u.device) == cond_group.unsqueeze(1))
        return torch.where(zero, torch.zeros_like(t), t)

    # ----- forward process and loss ------------------------------------------------------------
    def add_noise(self, x0: tuple, t_groups: torch.Tensor, noise: tuple) -> tuple:
        """x_t part by part; ``noise``: eps (like the part) for continuous, uniforms for discrete."""
        out = []
        for i, (p, x, z) in enumerate(zip(self.parts, x0, noise)):
            t = self.part_time(i, t_groups)
            if p.kind == "continuous":
                a, s = self.continuous.alpha(t), self.continuous.sigma(t)
                out.append(_expand(a, x) * x + _expand(s, x) * z)
            else:
                out.append(self.discrete.kernel(t).sample(x, u=z))
        return tuple(out)

    def losses(self, out: tuple, x0: tuple, x_t: tuple, noise: tuple, t_groups: torch.Tensor) -> list:
        """Per-part per-example losses [(B,), ...]: eps-MSE (mean over positions, positions at t = 0
        excluded since nothing is noised there) or the weighted cross-entropy of the mask process."""
        losses = []
        for i, p in enumerate(self.parts):
            t = self.part_time(i, t_groups)
            if p.kind == "continuous":
                if out[i].shape != x0[i].shape:
                    raise ValueError(f"part {i}: eps prediction {tuple(out[i].shape)} != {tuple(x0[i].shape)}")
                err = (out[i] - noise[i]).pow(2) * _expand((t > 0).float(), x0[i])
                losses.append(err.flatten(1).mean(1))
            else:
                losses.append(self.discrete.loss(out[i], x0[i], x_t[i], t))
        return losses

    # ----- sampling ----------------------------------------------------------------------------
    def prior(self, shapes: Sequence[tuple], generator: torch.Generator | None = None, device=None) -> tuple:
        """Fully noised state: N(0, 1) for continuous parts, all-mask for discrete ones."""
        return tuple(
            draw("normal", s, generator, device)
            if p.kind == "continuous"
            else torch.full(s, self.discrete.mask_id, dtype=torch.long, device=device)
            for p, s in zip(self.parts, shapes)
        )

    def sample(
        self,
        model_fn: ModelFn,
        shapes: Sequence[tuple],
        steps: int,
        *,
        generate: Sequence[int] | None = None,
        given: tuple | None = None,
        replacement: bool = False,
        guidance: float = 0.0,
        guidance_time: float = 1.0,
        guidance_window: tuple[float, float] = (0.0, 1.0),
        generator: torch.Generator | None = None,
        counter: EvalCounter | None = None,
        device=None,
        return_trajectory: bool = False,
        continuous_step: str = "euler_maruyama",
        clip_x0: float | None = None,
    ) -> SampleResult:
        """Reverse the process for the groups in ``generate`` (default: all = joint generation) on a
        uniform grid t = 1 -> 0, holding the other groups at their ``given`` clean values.

        Continuous parts: Euler-Maruyama on dx = [-beta x / 2 + beta eps_hat / sigma] dt + sqrt(beta) dW,
        and at the last step (to t = 0) the Tweedie denoise x0 = (x - sigma eps_hat) / a. Discrete parts:
        ancestral unmasking. The given groups are shown at t = 0 (decoupled-time conditioning) or, with
        ``replacement``, re-noised to the current time at every step (the only way a shared-time model
        can condition). Noisy guidance: out = out_c + w (out_c - out_u), where out_u is the same model with
        the given groups noised to ``guidance_time`` (1 = fully); on log-probabilities for discrete
        parts; only while t lies in ``guidance_window``.

        ``continuous_step="ancestral"`` replaces Euler-Maruyama by the exact Gaussian posterior step
        q(x_s | x_t, x0_hat) of the VP process (DDPM's sampler; it makes x0 clipping possible on images):
        a_ts = a_t / a_s, sigma_ts^2 = sigma_t^2 - a_ts^2 sigma_s^2, mean = a_ts sigma_s^2 / sigma_t^2 x_t
        + a_s sigma_ts^2 / sigma_t^2 x0_hat, variance sigma_ts^2 sigma_s^2 / sigma_t^2. ``clip_x0`` clamps
        x0_hat = (x_t - sigma_t eps_hat) / a_t to [-clip, clip] there and in the final denoise (data
        known to lie in a box, e.g. images in [-1, 1]). Plugging in the posterior mean x0_hat drops
        Var(x0 | x_t) from each step, so a few dozen steps slightly underdisperse (tests/core/
        test_multimodal_ancestral.py: std 0.44 instead of 0.5 at 40 steps, 0.48 at 100)."""
        if continuous_step not in ("euler_maruyama", "ancestral"):
            raise ValueError(f"continuous_step must be euler_maruyama or ancestral, got {continuous_step!r}")
        G = self.n_groups
        generate = list(range(G)) if generate is None else list(generate)
        cond_groups = [g for g in range(G) if g not in generate]
        if cond_groups and given is None:
            raise ValueError(f"groups {cond_groups} are not generated, so `given` values are required")
        B = shapes[0][0]
        x = self.prior(shapes, generator, device)
        gen = [self.group_mask(i, generate, device) for i in range(len(self.parts))]
        if given is not None:
            x = tuple(torch.where(_expand_mask(m, xi), xi, gi.to(xi.dtype)) for m, xi, gi in zip(gen, x, given))
        gen_vec = torch.zeros(G, dtype=torch.bool, device=device)
        gen_vec[generate] = True
        times = torch.linspace(1.0, 0.0, steps + 1)
        traj = [x] if return_trajectory else None
        nfe = 0

        def evaluate(state, t_cond):
            nonlocal nfe
            t_groups = torch.where(gen_vec, t_net, torch.full((G,), t_cond, device=device)).expand(B, G)
            if t_cond > 0:  # show the given groups noised to t_cond
                noise = self._fresh_noise(state, generator)
                noisy = self.add_noise(given, t_groups, noise)
                state = tuple(torch.where(_expand_mask(m, s), s, n) for m, s, n in zip(gen, state, noisy))
            if counter is not None:
                counter.add(1, B)
            nfe += 1
            return model_fn(state, t_groups)

        for k in range(steps):
            t, s = times[k], times[k + 1]
            t_net = t.clamp_min(self.t_min).to(device)
            out = evaluate(x, float(t_net) if replacement else 0.0)
            lo, hi = guidance_window
            if guidance > 0 and cond_groups and lo <= float(t) <= hi:
                out_u = evaluate(x, guidance_time)
                out = tuple(self._guide(p, c, u, guidance) for p, c, u in zip(self.parts, out, out_u))
            x = self._step(x, out, t_net, s, gen, generator, continuous_step, clip_x0)
            if traj is not None:
                traj.append(x)
        return SampleResult(x=x, times=times, nfe=nfe, trajectory=traj)

    def _fresh_noise(self, state: tuple, generator) -> tuple:
        return tuple(
            draw("normal", x.shape, generator, x.device)
            if p.kind == "continuous"
            else draw("uniform", x.shape, generator, x.device)
            for p, x in zip(self.parts, state)
        )

    @staticmethod
    def _guide(part: Part, cond: torch.Tensor, uncond: torch.Tensor, w: float) -> torch.Tensor:
        if part.kind == "continuous":
            return cond + w * (cond - uncond)
        lc, lu = torch.log_softmax(cond.float(), -1), torch.log_softmax(uncond.float(), -1)
        return lc + w * (lc - lu)

    def _step(
        self,
        x: tuple,
        out: tuple,
        t: torch.Tensor,
        s: torch.Tensor,
        gen: list,
        generator,
        continuous_step: str = "euler_maruyama",
        clip_x0: float | None = None,
    ) -> tuple:
        new = []
        vp = self.continuous
        for p, xi, oi, m in zip(self.parts, x, out, gen):
            if p.kind == "continuous":
                x0 = (xi - vp.sigma(t) * oi) / vp.alpha(t)
                if clip_x0 is not None:
                    x0 = x0.clamp(-clip_x0, clip_x0)
                if float(s) <= 0:
                    nxt = x0
                elif continuous_step == "ancestral":
                    a_t, a_s, sig_t, sig_s = vp.alpha(t), vp.alpha(s), vp.sigma(t), vp.sigma(s)
                    a_ts = a_t / a_s
                    var_ts = sig_t**2 - a_ts**2 * sig_s**2
                    mean = a_ts * sig_s**2 / sig_t**2 * xi + a_s * var_ts / sig_t**2 * x0
                    z = draw("normal", xi.shape, generator, xi.device)
                    nxt = mean + torch.sqrt(var_ts * sig_s**2 / sig_t**2) * z
                else:
                    beta, sig = vp.beta(t), vp.sigma(t)
                    dt = float(t - s)  # > 0; the reverse SDE runs with time step -dt
                    drift = -0.5 * beta * xi + beta * oi / sig
                    z = draw("normal", xi.shape, generator, xi.device)
                    nxt = xi - drift * dt + torch.sqrt(beta * dt) * z
                new.append(torch.where(_expand_mask(m, xi), nxt, xi))
            else:
                upd = _expand_mask(m, xi).expand_as(xi)
                new.append(self.discrete.reverse_step(oi, xi, t, s.clamp_min(0.0), generator, update=upd))
        return tuple(new)


def _expand_mask(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Position mask (scalar or (n,)) -> broadcastable against x (B, n, ...)."""
    if mask.ndim == 0:
        return mask
    return mask.reshape(1, -1, *([1] * (x.ndim - 2)))
