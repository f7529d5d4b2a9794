"""Online RL fine-tuning of the Shapes text-to-image flow (docs/methods/rl_elbo.md; Choi et al.,
arXiv 2602.04663), with every axis of the paper's design space as a config switch.

Per training step (one "rollout step"): B training prompts x G images are sampled by the old
policy pi_old (rollout ``sampler``: the FlowGRPO SDE or the deterministic Euler ODE, with or
without CFG), rewarded by the exact Shapes evaluator's partial credit, and turned into group
advantages A (reward standardised within each prompt's group, clipped to +-``adv_clip``). Then
``inner_updates`` optimiser steps on

* ``objective=epg``:      L = -E[sg(rho) A log pi_theta(x)],   rho = pi_theta / pi_old;
* ``objective=ppo_clip``: L = -E[min(rho A, clip(rho, 1 +- eps) A)] (GRPO);
* ``objective=nft``:      DiffusionNFT's forward-process loss on the final samples (no likelihood),

with log rho from the ``likelihood`` estimator: ``per_step`` (Gaussian log-densities of the SDE
transitions, one ratio per step as FlowGRPO) or ``elbo`` (ELBO_theta(x0) - ELBO_old(x0) from the
final sample only, on shared (t, eps) draws). An optional KL to the frozen reference (``kl_coef``):
per_step: the analytic Gaussian KL of the transitions |mu_theta - mu_ref|^2 / (2 std^2); elbo and
nft: 0.5 |v_theta - v_ref|^2 on the same noised final samples the estimator already evaluates.
The math lives in core/rl/objectives.py; this file composes it with the networks and the evaluator.

Compute accounting: every forward pass of the policy, old-policy and reference networks made in
training is charged to ``self.nfe`` (the suite's EvalCounter) by a forward hook on the networks, so
CFG's doubled rows, ELBO Monte-Carlo passes, old/reference passes and update passes all count the
same way (``items`` = image-rows through the network, ``calls`` = batched forward passes). Per-step
old log-probs are read from the rollout's own velocity evaluations (the rollout *is* the old
policy, as FlowGRPO stores them at sampling) and cost nothing extra. Training stops once
``nfe_budget`` items are spent. Evaluation (callbacks/rl_watch.py) is not charged.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import nn

from core.diffusion.flow import FlowSample, flow_sample
from core.diffusion.losses import denoising_error
from core.diffusion.processes import LinearPath
from core.diffusion.solvers import time_grid
from core.optim.ema import ema_update_
from core.rl.objectives import (
    elbo,
    elbo_draws,
    epg_loss,
    group_advantages,
    nft_loss,
    nft_reward_prob,
    per_step_kl,
    per_step_logprob,
    ppo_clip_loss,
)
from core.tasks.shapes import evaluate
from modules.base import GenLabModule
from modules.rl_design import SAMPLERS, T_RANGE, check_design, load_base, training_prompt_pool
from modules.rl_velocity import Recorder, Replay, velocity_kl
from modules.sampling import PromptGeneration, choose, generation, sample_options
from modules.t2i import cfg_passes, cfg_velocity

PATH = LinearPath(t_min=0.0)  # x_t = (1 - t) x0 + t eps, the base model's path
__all__ = ["DiffusionRL", "Recorder", "Replay", "check_design", "velocity_kl"]


class DiffusionRL(PromptGeneration, GenLabModule):
    """See the module docstring. ``base_ckpt``: the t2i_shapes checkpoint (its EMA weights start the
    policy, the old policy and the frozen reference)."""

    def __init__(
        self,
        base_ckpt: str,
        objective: str = "epg",
        likelihood: str = "elbo",
        sampler: str = "sde",
        prompts_per_step: int = 4,
        group_size: int = 8,
        rollout_steps: int = 10,
        noise_level: float = 0.7,
        cfg_rollouts: bool = True,
        guidance: float = 3.0,
        kl_coef: float = 0.0,
        elbo_mc: int = 2,
        elbo_weighting: str = "uniform",
        clip_range: float = 1e-4,
        adv_clip: float = 5.0,
        nft_beta: float = 1.0,
        lr: float = 1e-4,
        inner_updates: int = 1,
        micro_batch: int = 16,
        old_policy: str = "copy",
        old_refresh_every: int = 1,
        old_ema_decay: float = 0.9,
        max_grad_norm: float = 1.0,
        logprob_per_dim: bool = True,
        nfe_budget: int = 0,
        prompt_pool: int = 2000,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_design(objective, likelihood, sampler, old_policy, elbo_weighting)
        for key, value in (("prompts_per_step", prompts_per_step), ("rollout_steps", rollout_steps),
                           ("elbo_mc", elbo_mc), ("inner_updates", inner_updates), ("micro_batch", micro_batch),
                           ("old_refresh_every", old_refresh_every)):
            if value < 1:
                raise ValueError(f"module.{key}: must be >= 1, got {value}")
        if group_size < 2:
            raise ValueError(f"module.group_size: group advantages need >= 2 images per prompt, got {group_size}")
        base = load_base(base_ckpt)
        self.tokenizer, self.image_size = base.tokenizer, base.image_size
        self.policy = copy.deepcopy(base.ema).requires_grad_(True)
        self.old = copy.deepcopy(base.ema).requires_grad_(False)
        self.reference = base.ema.requires_grad_(False)
        for net in (self.policy, self.old, self.reference):
            net.register_forward_pre_hook(self._charge)
        self.automatic_optimization = False
        self.charging = False  # True only inside training_step: evaluation is not part of the budget
        self.rl_step, self.train_wall_s = 0, 0.0
        self.guidance = float(guidance) if cfg_rollouts else 1.0
        # FlowGRPO/DDPO average the Gaussian log-density over pixels (log pi / D) before forming ratios;
        # the same scale for the ELBO and the KL keeps clip ranges and kl_coef comparable across estimators
        self.scale = 1.0 / (3 * self.image_size**2) if logprob_per_dim else 1.0
        self.pool = training_prompt_pool(prompt_pool)

    def _charge(self, net: nn.Module, args: tuple) -> None:
        if self.charging:
            self.nfe.add(1, len(args[0]))

    @property
    def budget_spent(self) -> bool:
        return self.hparams.nfe_budget > 0 and self.nfe.items >= self.hparams.nfe_budget

    def forward(self, x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """v_theta(x_t, t, c) of the policy (no CFG): x (B, 3, H, W), t (B,), tokens (B, L)."""
        return self.policy(x, t, tokens)

    # ---- one RL step ------------------------------------------------------------------------
    def on_train_batch_start(self, batch: dict, batch_idx: int) -> int | None:
        if self.budget_spent:  # e.g. resuming a finished run: end the epoch and the fit
            self.trainer.should_stop = True
            return -1
        return None

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        t0, self.charging = time.perf_counter(), True
        try:  # log-ratios of nearly equal policies: float32 even under a bf16 trainer preset
            with torch.autocast(self.device.type, enabled=False):
                stats = self.rl_update()
        finally:
            self.charging = False
        self.rl_step += 1
        self.train_wall_s += time.perf_counter() - t0
        n = self.hparams.prompts_per_step * self.hparams.group_size
        stats.update({"nfe": float(self.nfe.items), "nfe_calls": float(self.nfe.calls),
                      "wall_s": self.train_wall_s, "rl_step": float(self.rl_step)})
        for name, value in stats.items():
            self.log(f"train/{name}", value, batch_size=n, prog_bar=name in ("reward", "nfe"))
        if self.budget_spent:
            self.trainer.should_stop = True
        return {"loss": torch.tensor(stats["loss"])}  # detached: for the NaN guard and the logs

    def rl_update(self) -> dict[str, float]:
        hp = self.hparams
        if hp.old_policy == "copy" and self.rl_step % hp.old_refresh_every == 0:
            self.old.load_state_dict(self.policy.state_dict())
        metas, tokens = self.step_prompts()
        gen = torch.Generator().manual_seed(int(self.noise_seed) * 1_000_003 + self.rl_step)
        traj, records = self.rollout(tokens, gen)
        images = (traj.x.clamp(-1, 1) + 1) / 2
        rewards = evaluate(images.detach().float().cpu(), metas, strict=False).reward.to(self.device)
        adv = group_advantages(rewards.view(hp.prompts_per_step, hp.group_size), clip=hp.adv_clip).flatten()
        if hp.objective == "nft":
            stats = self.nft_updates(traj.x.detach(), tokens, adv, gen)
        elif hp.likelihood == "per_step":
            stats = self.per_step_updates(traj, records, tokens, adv)
        else:
            stats = self.elbo_updates(traj.x.detach(), tokens, adv, gen)
        return {"reward": float(rewards.mean()), "reward_std": float(rewards.std()),
                "pass_rate": float((rewards >= 1.0).float().mean()), **stats}

    def step_prompts(self) -> tuple[list[dict], torch.Tensor]:
        """B prompts from the training pool (keyed by seed and step, so a resume sees the same ones),
        each repeated G times: metadata list (B*G) and tokens (B*G, L)."""
        hp = self.hparams
        rng = np.random.default_rng([int(self.noise_seed), self.rl_step, 5])
        chosen = [self.pool[i] for i in rng.choice(len(self.pool), hp.prompts_per_step, replace=False)]
        metas = [m for m in chosen for _ in range(hp.group_size)]
        return metas, self.tokenizer.encode([m["prompt"] for m in metas]).to(self.device)

    @torch.no_grad()
    def rollout(self, tokens: torch.Tensor, generator: torch.Generator) -> tuple[FlowSample, list]:
        """Images of the old policy from x1 ~ N(0, I) at t = 1 to t = 0 (``rollout_steps`` steps of the
        configured ``sampler``) and the rollout's recorded velocity evaluations."""
        hp = self.hparams
        rec = Recorder(cfg_velocity(self.old, tokens, self.guidance))
        return self.flow(len(tokens), rec, hp.sampler, hp.rollout_steps, generator), rec.records

    def flow(self, n: int, velocity, solver: str, steps: int, generator) -> FlowSample:
        """x1 ~ N(0, I) (n, 3, S, S) integrated by core.diffusion.flow: ``sde`` = FlowGRPO's SDE at
        ``noise_level`` (its transition stds kept for the per-step likelihood), ``ode`` = Euler."""
        x1 = torch.randn((n, 3, self.image_size, self.image_size), generator=generator).to(self.device)
        return flow_sample(
            x1, time_grid(1.0, 0.0, steps, device=self.device), velocity=velocity,
            solver="sde" if solver == "sde" else "euler", sde_noise="flowgrpo", noise_level=self.hparams.noise_level,
            generator=generator, return_trajectory=True,
        )

    def micro_batches(self, n: int):
        return [torch.arange(i, min(i + self.hparams.micro_batch, n), device=self.device)
                for i in range(0, n, self.hparams.micro_batch)]

    def policy_loss(self, logratio: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
        if self.hparams.objective == "epg":
            return epg_loss(logratio, adv)
        return ppo_clip_loss(logratio, adv, self.hparams.clip_range)

    def optimiser_step(self, opt) -> None:
        if self.hparams.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.hparams.max_grad_norm)
        opt.step()
        if self.hparams.old_policy == "ema":
            ema_update_(self.old.parameters(), self.policy.parameters(), self.hparams.old_ema_decay)

    def per_step_updates(self, traj: FlowSample, records: list, tokens: torch.Tensor, adv: torch.Tensor) -> dict:
        """FlowGRPO-style: one ratio per SDE transition k; loss and backward one (micro-batch, step)
        at a time so only one step's graph is alive."""
        hp, opt, n = self.hparams, self.optimizers(), len(tokens)
        noisy = traj.noisy_steps
        steps = len(noisy)
        with torch.no_grad():  # (K, N) from the rollout's own velocities: no network pass
            old_lp = torch.stack([per_step_logprob(traj, Replay(records), hp.noise_level, steps=[k]) for k in noisy])
        ref = None
        for _ in range(hp.inner_updates):
            opt.zero_grad()
            loss_sum = kl_sum = abs_lr = 0.0
            for rows in self.micro_batches(n):
                sub = traj.rows(rows)
                velocity = cfg_velocity(self.policy, tokens[rows], self.guidance)
                if hp.kl_coef > 0:
                    ref = cfg_velocity(self.reference, tokens[rows], self.guidance)
                for i, k in enumerate(noisy):
                    rec = Recorder(velocity)
                    logratio = self.scale * (per_step_logprob(sub, rec, hp.noise_level, steps=[k]) - old_lp[i, rows])
                    loss = self.policy_loss(logratio, adv[rows])
                    if ref is not None:
                        kl = self.scale * per_step_kl(sub, Replay(rec.records), ref, hp.noise_level, steps=[k]).mean()
                        loss = loss + hp.kl_coef * kl
                        kl_sum += float(kl.detach()) * len(rows) / n / steps
                    self.manual_backward(loss * len(rows) / n / steps)
                    loss_sum += float(loss.detach()) * len(rows) / n / steps
                    abs_lr += float(logratio.detach().abs().sum()) / n / steps
            self.optimiser_step(opt)
        return {"loss": loss_sum, "kl": kl_sum, "abs_logratio": abs_lr}

    def elbo_updates(self, x0: torch.Tensor, tokens: torch.Tensor, adv: torch.Tensor, gen) -> dict:
        """log rho = ELBO_theta(x0) - ELBO_old(x0) on (t, eps) draws shared by both and kept for all
        inner updates of this rollout (the old ELBO is computed once)."""
        hp, opt, n = self.hparams, self.optimizers(), len(tokens)
        t, eps = elbo_draws(n, tuple(x0.shape[1:]), hp.elbo_mc, generator=gen, t_range=T_RANGE, device=self.device)
        with torch.no_grad():
            old = torch.cat([elbo(cfg_velocity(self.old, tokens[r], self.guidance), x0[r], t[:, r], eps[:, r],
                                  weighting=hp.elbo_weighting, t_range=T_RANGE) for r in self.micro_batches(n)])
        for _ in range(hp.inner_updates):
            opt.zero_grad()
            loss_sum = kl_sum = abs_lr = 0.0
            for rows in self.micro_batches(n):
                rec = Recorder(cfg_velocity(self.policy, tokens[rows], self.guidance))
                new = elbo(rec, x0[rows], t[:, rows], eps[:, rows], weighting=hp.elbo_weighting, t_range=T_RANGE)
                logratio = self.scale * (new - old[rows])
                loss = self.policy_loss(logratio, adv[rows])
                if hp.kl_coef > 0:
                    ref = cfg_velocity(self.reference, tokens[rows], self.guidance)
                    kl = self.scale * velocity_kl(rec.records, ref)
                    loss = loss + hp.kl_coef * kl
                    kl_sum += float(kl.detach()) * len(rows) / n
                self.manual_backward(loss * len(rows) / n)
                loss_sum += float(loss.detach()) * len(rows) / n
                abs_lr += float(logratio.detach().abs().sum()) / n
            self.optimiser_step(opt)
        return {"loss": loss_sum, "kl": kl_sum, "abs_logratio": abs_lr}

    def nft_updates(self, x0: torch.Tensor, tokens: torch.Tensor, adv: torch.Tensor, gen) -> dict:
        """DiffusionNFT: r = clamp(A / 10 + 0.5, 0, 1) and the implicit positive / negative policies
        v+- around v_old, on x_t = (1 - t) x0 + t eps with ``elbo_mc`` fresh draws per sample and update."""
        hp, opt, n = self.hparams, self.optimizers(), len(tokens)
        reward_prob = nft_reward_prob(adv)
        loss_sum = kl_sum = 0.0
        for _ in range(hp.inner_updates):
            t, eps = elbo_draws(n, tuple(x0.shape[1:]), hp.elbo_mc, generator=gen, device=self.device)
            opt.zero_grad()
            loss_sum = kl_sum = 0.0
            for rows in self.micro_batches(n):
                m = len(rows)
                tt, ee = t[:, rows].reshape(-1), eps[:, rows].reshape(-1, *x0.shape[1:])
                x0_rep, tok = x0[rows].repeat(hp.elbo_mc, 1, 1, 1), tokens[rows].repeat(hp.elbo_mc, 1)
                xt = (1 - tt).view(-1, 1, 1, 1) * x0_rep + tt.view(-1, 1, 1, 1) * ee
                with torch.no_grad():
                    v_old = cfg_velocity(self.old, tok, self.guidance)(xt, tt)
                rec = Recorder(cfg_velocity(self.policy, tok, self.guidance))
                v_theta = rec(xt, tt)
                loss = nft_loss(v_theta, v_old, xt, x0_rep, tt, reward_prob[rows].repeat(hp.elbo_mc), hp.nft_beta)
                if hp.kl_coef > 0:
                    kl = self.scale * velocity_kl(rec.records, cfg_velocity(self.reference, tok, self.guidance))
                    loss = loss + hp.kl_coef * kl
                    kl_sum += float(kl.detach()) * m / n
                self.manual_backward(loss * m / n)
                loss_sum += float(loss.detach()) * m / n
            self.optimiser_step(opt)
        return {"loss": loss_sum, "kl": kl_sum}

    # ---- evaluation, optimiser, checkpoint ----------------------------------------------------
    def compute_loss(self, batch: dict, generator: torch.Generator | None = None, net: nn.Module | None = None):
        """Flow-matching loss E |v(x_t, t, c) - (eps - x0)|^2 of the policy (or ``net``) on real
        captioned images: how far fine-tuning moved the model off the data it was trained on."""
        x0, tokens = batch["x"], batch["tokens"]
        t = self.example_uniform(batch["index"], (1,), stream=1, generator=generator)[:, 0]
        eps = self.example_normal(batch["index"], tuple(x0.shape[1:]), stream=0, generator=generator)
        err = denoising_error(lambda x, s: (net or self.policy)(x, s, tokens), PATH, x0, t, eps, target="velocity")
        return err.pow(2).mean()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.log("test/flow_loss", self.compute_loss(batch))
        self.log("test/base_flow_loss", self.compute_loss(batch, net=self.reference))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.policy.parameters(), lr=self.hparams.lr, weight_decay=0.0)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rl_state"] = {"nfe": self.nfe.state_dict(), "rl_step": self.rl_step,
                                  "train_wall_s": self.train_wall_s}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("rl_state", {})
        if state:
            self.nfe.load_state_dict(state["nfe"])
            self.rl_step, self.train_wall_s = int(state["rl_step"]), float(state["train_wall_s"])

    @generation
    def sample(
        self,
        n: int,
        *,
        steps: int | None = None,
        solver: str | None = None,
        generator: torch.Generator | None = None,
        cond: list[str] | None = None,
        return_trajectory: bool = False,
        **guidance,
    ) -> FlowSample:
        """Images x (n, 3, H, W) in [-1, 1] for the captions ``cond`` (default: prompts of the training
        pool), ``steps`` default the rollouts' count, ``solver`` ode (default) | sde. Options: ``net``
        (policy | reference (the base model) | old) and ``guidance`` (CFG weight, default the rollouts')."""
        opts = sample_options(self, guidance, net="policy", guidance=None)
        captions = cond or [self.pool[i % len(self.pool)]["prompt"] for i in range(n)]
        if len(captions) != n:
            raise ValueError(f"sample: {len(captions)} captions for n={n}")
        model = {"policy": self.policy, "reference": self.reference, "old": self.old}[opts.net]
        tokens = self.tokenizer.encode(captions).to(self.device)
        w = self.guidance if opts.guidance is None else float(opts.guidance)
        solver = choose("DiffusionRL.sample: solver", solver, "ode", SAMPLERS)
        res = self.flow(n, cfg_velocity(model, tokens, w), solver, steps or self.hparams.rollout_steps, generator)
        if not return_trajectory:
            res.trajectory = None
        res.x = res.x.clamp(-1, 1)
        res.nfe *= cfg_passes(w)
        return res
