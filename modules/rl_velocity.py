"""Reuse of velocity evaluations in RL fine-tuning (modules/diffusion_rl.py): a recorder that keeps
every (x, t, v) a velocity closure computed, a replay that answers from those records only, and the
velocity KL to the reference on the recorded inputs, so old per-step log-probs and KL terms cost no
extra network pass."""

from __future__ import annotations

import torch

class Recorder:
    """Wraps a velocity closure and keeps (x, t, v) of every call, so the same outputs can be reused
    (old per-step log-probs from the rollout, KL terms from the estimator's own passes) without
    evaluating the network again."""

    def __init__(self, velocity) -> None:
        self.velocity, self.records = velocity, []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = self.velocity(x, t)
        self.records.append((x, t, v))
        return v


class Replay:
    """A velocity closure that returns recorded outputs for inputs it has seen (matched by time and
    checked on x), and refuses anything else rather than silently calling a network."""

    def __init__(self, records: list) -> None:
        self.table = {round(float(t[0]), 6): (x, v) for x, t, v in records}

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        key = round(float(t[0]), 6)
        if key not in self.table:
            raise KeyError(f"Replay: no recorded velocity at t={key}")
        x_rec, v = self.table[key]
        if x_rec.shape != x.shape or not torch.allclose(x_rec, x):
            raise ValueError("Replay: asked for a velocity at an x that was not recorded")
        return v


def velocity_kl(records: list, reference) -> torch.Tensor:
    """Mean over recorded rows of 0.5 |v_theta - v_ref|^2 (summed over pixels): the KL of the
    elbo/nft paths, on the noised samples the estimator already evaluated (one reference pass)."""
    total, rows = 0.0, 0
    for x, t, v in records:
        with torch.no_grad():
            v_ref = reference(x, t)
        total = total + 0.5 * (v - v_ref).pow(2).flatten(1).sum(1).sum()
        rows += len(x)
    return total / max(rows, 1)
