"""Training objectives of a masked diffusion LM that also verifies its own answers (Prism's model).

* ``generation_loss`` -- MDLM (Sahoo et al. 2024; core.diffusion.masked.MaskedDiffusion.loss): per example
  a time t ~ U(0, 1], each answer slot masked with probability m(t), weight m'(t)/m(t) on the masked
  positions' cross-entropy; prompts are never masked. The network is conditioned on the mask ratio.
* ``verification_loss`` -- "problem + candidate ? [MASK]" -> Y/N: two-way cross-entropy over the (no, yes)
  logits at the [MASK] slot (a masked LM predicts only at masks), optionally class-balanced.
* ``own_samples`` -- the model's own completions labelled by the exact checker (the second round's
  negatives: the mistakes this model actually makes).
``task`` is any core.tasks.checkable task; ``net(tokens (B, L) long, ratio (B,)) -> logits (B, L, V)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.diffusion.masked import MaskedDiffusion, confidence_decode


def generation_loss(net, task, proc: MaskedDiffusion, p: torch.Tensor, t: torch.Tensor,
                    u: torch.Tensor) -> torch.Tensor:
    """MDLM loss on problems p (B, .): times t (B,) in (0, 1], uniforms u (B, gen_len) pick the masked
    answer slots (u < m(t)); returns the mean over the batch of the weighted masked cross-entropy."""
    x0, slots = task.targets(p), task.prompts(p) == task.mask_id
    if u.shape != x0.shape:
        raise ValueError(f"u must have the targets' shape {tuple(x0.shape)}, got {tuple(u.shape)}")
    xt = torch.where(slots & (u < proc.schedule.mask_prob(t)[:, None]), task.mask_id, x0)
    ratio = (xt == task.mask_id).float().mean(1)
    return proc.loss(net(xt, ratio), x0, xt, t, valid=slots).mean()


def verification_loss(net, queries: torch.Tensor, verdict: torch.Tensor, mask_id: int, yes_id: int, no_id: int,
                      balanced: bool = False) -> torch.Tensor:
    """Two-way cross-entropy over the (no, yes) logits at the last ([MASK]) position. ``balanced``: each
    class present in the batch weighs half (the model's own samples are mostly wrong or mostly right, and
    a verifier that learns the base rate says nothing about which candidate is right)."""
    ratio = (queries == mask_id).float().mean(1)
    logits = net(queries, ratio)[:, -1][:, [no_id, yes_id]]
    y = (verdict == yes_id).long()
    if not balanced:
        return F.cross_entropy(logits, y)
    nll = F.cross_entropy(logits, y, reduction="none")
    per_class = [nll[y == c].mean() for c in (0, 1) if bool((y == c).any())]
    return torch.stack(per_class).mean()


@torch.no_grad()
def own_samples(net, task, n: int, g: torch.Generator, temperature: float = 0.7,
                group: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(queries (n', verify_len), verdicts (n',)): ``group`` completions at ``temperature`` of each of
    n // group training problems (right and wrong answers to one problem side by side), n' = group * (n // group)."""
    p = task.sample_problems(max(1, n // group), "train", g).repeat_interleave(group, 0)
    x = confidence_decode(net, task.prompts(p), task.n_steps, task.mask_id, temperature=temperature,
                          generator=g).x
    return task.labelled(x, p)
