"""Text-to-image conditional rectified flow on Shapes scenes (the base model of the RL experiments).

Path (core.diffusion.processes.LinearPath): x_t = (1 - t) x0 + t eps, t = 0 data, t = 1 noise; the network
predicts the velocity v_theta(x_t, t, c) ~ eps - x0 with loss E |v_theta - (eps - x0)|^2
(Liu et al. 2023; Lipman et al. 2023). Classifier-free guidance (Ho & Salimans 2022): captions
are replaced by the empty caption with probability ``cond_drop`` in training, and sampling uses
v = v(x, t, {}) + w (v(x, t, c) - v(x, t, {})) (w = 1: no guidance). Generation integrates
dx/dt = v from t = 1 to 0 with core.diffusion.solvers (Euler / Heun ODE, or Euler-Maruyama on the reverse
SDE of :meth:`TextToImage.sde_coefficients`).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from core.diffusion.processes import LinearPath
from core.diffusion.solvers import euler_maruyama, get_sampler, time_grid
from core.tasks.shapes.grammar import Tokenizer, caption
from core.tasks.shapes.prompts import sample_training_metadata
from modules.base import GenLabModule
from modules.nets.cond_unet import CondUNet
from modules.nets.text_encoder import CaptionEncoder


class CaptionedVelocity(nn.Module):
    """The caption encoder and the UNet as one module (so EMA and checkpoints treat them together)."""

    def __init__(self, unet: CondUNet, encoder: CaptionEncoder) -> None:
        super().__init__()
        self.unet, self.encoder = unet, encoder

    def forward(self, x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        text, pooled = self.encoder(tokens)
        return self.unet(x, t, text, CaptionEncoder.padding_mask(tokens), pooled)


def cfg_velocity(net: nn.Module, tokens: torch.Tensor, guidance: float):
    """Velocity closure (x (N, 3, H, W), t (N,)) -> (N, 3, H, W) of a captioned velocity network:
    v(x, t, c) when ``guidance`` = 1, else v(x, t, {}) + w (v(x, t, c) - v(x, t, {})) as one batched
    forward of 2N rows (the empty caption is all-padding tokens)."""
    null = torch.zeros_like(tokens)

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if guidance == 1.0:
            return net(x, t, tokens)
        v_cond, v_null = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([tokens, null])).chunk(2)
        return v_null + guidance * (v_cond - v_null)

    return velocity


class TextToImage(GenLabModule):
    """Conditional rectified flow; see the module docstring. Images in the model's space are in
    [-1, 1]; :meth:`generate` returns them in [0, 1] for the evaluator."""

    def __init__(
        self,
        image_size: int = 32,
        base_channels: int = 32,
        channel_mults: list[int] = (1, 2, 2),
        attn_levels: int = 2,
        patch: int = 2,
        text_dim: int = 128,
        text_depth: int = 2,
        text_heads: int = 4,
        max_len: int = 12,
        cond_drop: float = 0.1,
        lr: float = 2e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        ema_decay: float = 0.999,
        sample_steps: int = 20,
        sampler: str = "euler",
        guidance: float = 3.0,
        sde_noise: float = 0.7,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if sampler not in ("euler", "heun", "em"):
            raise ValueError(f"TextToImage: sampler must be euler, heun or em, got {sampler!r}")
        self.tokenizer = Tokenizer(max_len)
        self.path = LinearPath(t_min=0.0)
        unet = CondUNet(3, base_channels, tuple(channel_mults), text_dim, attn_levels, text_heads, patch)
        self.model = CaptionedVelocity(
            unet, CaptionEncoder(len(self.tokenizer), max_len, text_dim, text_depth, text_heads)
        )
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.image_size, self.sample_steps, self.sampler, self.guidance = (
            image_size,
            sample_steps,
            sampler,
            guidance,
        )

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor, use_ema: bool = False
    ) -> torch.Tensor:
        """v_theta(x_t, t, c): x (B, 3, H, W), t (B,), tokens (B, L) -> (B, 3, H, W)."""
        return (self.ema if use_ema else self.model)(x, t, tokens)

    def compute_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """E_{t, eps} |v_theta(x_t, t, c) - (eps - x0)|^2 with captions dropped w.p. ``cond_drop``.
        Noise is keyed by (seed, step, example index) unless a ``generator`` fixes it."""
        x0, tokens, index = batch["x"], batch["tokens"], batch["index"]
        b = len(x0)
        if generator is None:
            t = self.example_uniform(index, (1,), stream=1)[:, 0]
            eps = self.example_normal(index, tuple(x0.shape[1:]), stream=0)
            drop = self.example_uniform(index, (1,), stream=2)[:, 0] < self.hparams.cond_drop
        else:
            t = torch.rand(b, generator=generator).to(x0)
            eps = torch.randn(x0.shape, generator=generator).to(x0)
            drop = torch.rand(b, generator=generator).to(x0.device) < self.hparams.cond_drop
        tokens = torch.where(drop[:, None], torch.zeros_like(tokens), tokens)
        xt, _ = self.path.kernel(t).sample(x0, eps=eps)
        v = self(xt, t, tokens)
        return ((v - (eps - x0)) ** 2).mean()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # EMA with the usual warm-up so that early checkpoints are not dominated by the init
        decay = min(self.hparams.ema_decay, (1 + self.global_step) / (10 + self.global_step))
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.model.parameters()):
                e.lerp_(p, 1 - decay)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val/loss", self.compute_loss(batch), sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.log("test/loss", self.compute_loss(batch), sync_dist=True)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(
            self.model.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        warm = max(1, self.hparams.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- generation -------------------------------------------------------------------------
    def guided_velocity(self, tokens: torch.Tensor, guidance: float, use_ema: bool = True):
        """The EMA (or live) network's CFG velocity closure; see :func:`cfg_velocity`."""
        return cfg_velocity(self.ema if use_ema else self.model, tokens, guidance)

    def sde_coefficients(self, velocity):
        """Reverse-time SDE with the flow's marginals: dx = [v - (g^2 / 2) s] dt + g dW (dt < 0), with
        score s = -(x + (1 - t) v) / t on the linear path and g(t) = ``sde_noise`` * t, so that
        g^2 s = -sde_noise^2 t (x + (1 - t) v) stays bounded at both ends."""
        a = self.hparams.sde_noise

        def drift(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            v = velocity(x, t)
            tt = t.view(-1, *([1] * (x.ndim - 1)))
            return v + 0.5 * a**2 * tt * (x + (1 - tt) * v)

        def diffusion(t: torch.Tensor) -> torch.Tensor:
            return a * t

        return drift, diffusion

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        return_trajectory: bool = False,
        captions: list[str] | None = None,
        guidance: float | None = None,
        num_steps: int | None = None,
        sampler: str | None = None,
        use_ema: bool = True,
    ):
        """Images (n, 3, H, W) in [-1, 1] for ``captions`` (default: n captions drawn from the
        training grammar with the generator's seed). Returns a core.diffusion.solvers.SampleResult when
        ``return_trajectory``, else the final images."""
        if captions is None:
            seed = int(torch.randint(2**31, (1,), generator=generator)) if generator is not None else 0
            rng = np.random.default_rng(seed)
            captions = [sample_training_metadata(rng)["prompt"] for _ in range(n)]
        if len(captions) != n:
            raise ValueError(f"sample: {len(captions)} captions for n={n}")
        guidance = self.guidance if guidance is None else float(guidance)
        steps = self.sample_steps if num_steps is None else int(num_steps)
        sampler = self.sampler if sampler is None else sampler
        tokens = self.tokenizer.encode(captions).to(self.device)
        drift = self.guided_velocity(tokens, guidance, use_ema)
        x = torch.randn((n, 3, self.image_size, self.image_size), generator=generator).to(self.device)
        if sampler == "em":
            drift_sde, diffusion = self.sde_coefficients(drift)
            res = euler_maruyama(
                x,
                time_grid(1.0, 0.0, steps),
                drift=drift_sde,
                diffusion=diffusion,
                generator=generator,
                counter=self.nfe,
                return_trajectory=return_trajectory,
            )
        else:
            res = get_sampler(sampler)(
                x,
                time_grid(1.0, 0.0, steps),
                drift=drift,
                counter=self.nfe,
                return_trajectory=return_trajectory,
            )
        res.x = res.x.clamp(-1, 1)
        return res if return_trajectory else res.x

    @torch.no_grad()
    def generate(
        self,
        prompts: list,
        num_steps: int | None = None,
        guidance: float | None = None,
        sampler: str | None = None,
        generator: torch.Generator | None = None,
        batch_size: int = 256,
    ) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] for prompts (captions, or GenEval metadata dicts)."""
        captions = [p if isinstance(p, str) else p.get("prompt") or caption(p) for p in prompts]
        was_training = self.training
        self.eval()
        out = [
            self.sample(
                len(chunk), generator, captions=chunk, guidance=guidance, num_steps=num_steps, sampler=sampler
            )
            for chunk in (captions[i : i + batch_size] for i in range(0, len(captions), batch_size))
        ]
        self.train(was_training)
        return (torch.cat(out) + 1) / 2
