"""Text-to-image conditional rectified flow on Shapes scenes (the base model of the RL experiments).

Path (core.diffusion.processes.LinearPath): x_t = (1 - t) x0 + t eps, t = 0 data, t = 1 noise; the network
predicts the velocity v_theta(x_t, t, c) ~ eps - x0 with loss E |v_theta - (eps - x0)|^2
(Liu et al. 2023; Lipman et al. 2023). Classifier-free guidance (Ho & Salimans 2022): captions
are replaced by the empty caption with probability ``cond_drop`` in training, and sampling uses
v = v(x, t, {}) + w (v(x, t, c) - v(x, t, {})) (w = 1: no guidance). Generation integrates
dx/dt = v from t = 1 to 0 with core.diffusion.flow (Euler / Heun ODE, or Euler-Maruyama on the reverse
SDE with g(t) = a t).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from core.diffusion.flow import FlowSample, flow_sample
from core.diffusion.losses import denoising_error
from core.diffusion.processes import LinearPath
from core.diffusion.solvers import time_grid
from core.optim.ema import ema_decay, ema_update_
from core.tasks.shapes.grammar import Tokenizer
from core.tasks.shapes.prompts import sample_training_metadata
from modules.base import GenLabModule, lr_factor, per_step
from modules.sampling import PromptGeneration, choose, generation, sample_options
from modules.nets.build import build_net, net_hparam
from modules.nets.cond_unet import CondUNet
from modules.nets.text_encoder import CaptionEncoder

SOLVERS = ("euler", "heun", "em")


class CaptionedVelocity(nn.Module):
    """The caption encoder and the UNet as one module (so EMA and checkpoints treat them together)."""

    def __init__(self, unet: CondUNet, encoder: CaptionEncoder) -> None:
        super().__init__()
        self.unet, self.encoder = unet, encoder

    def forward(self, x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        text, pooled = self.encoder(tokens)
        return self.unet(x, t, text, CaptionEncoder.padding_mask(tokens), pooled)


def cfg_passes(guidance: float) -> int:
    """Network passes per sample and step of :func:`cfg_velocity`: 1 without guidance, else 2."""
    return 1 if guidance == 1.0 else 2


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


DEFAULT_UNET = {"_target_": "modules.nets.cond_unet.CondUNet", "base": 32, "channel_mults": [1, 2, 2],
                "attn_levels": 2, "heads": 4, "patch": 2}
DEFAULT_TEXT_ENCODER = {"_target_": "modules.nets.text_encoder.CaptionEncoder", "dim": 128, "depth": 2, "heads": 4}


def _width(text_encoder: dict | nn.Module) -> int:
    """The caption encoder's width ``dim`` (the UNet's ``text_dim``), read before it is built."""
    dim = text_encoder.dim if isinstance(text_encoder, nn.Module) else text_encoder.get("dim")
    if not isinstance(dim, int):
        raise ValueError(f"module.text_encoder.dim: required (the UNet cross-attends to it), got {dim!r}")
    return dim


class TextToImage(PromptGeneration, GenLabModule):
    """Conditional rectified flow; see the module docstring. Images in the model's space are in
    [-1, 1]; :meth:`generate` returns them in [0, 1] for the evaluator. ``unet`` (CondUNet, given
    in_channels and the encoder's width as text_dim) and ``text_encoder`` (CaptionEncoder, given the
    tokenizer's vocabulary and ``max_len``) are config nodes or built networks (modules/nets/build.py)."""

    def __init__(
        self,
        image_size: int = 32,
        unet: dict | nn.Module | None = None,
        text_encoder: dict | nn.Module | None = None,
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
        unet = DEFAULT_UNET if unet is None else unet
        text_encoder = DEFAULT_TEXT_ENCODER if text_encoder is None else text_encoder
        self.save_hyperparameters(ignore=["unet", "text_encoder"])
        self.hparams.update(unet=net_hparam(unet), text_encoder=net_hparam(text_encoder))
        if sampler not in SOLVERS:
            raise ValueError(f"TextToImage: sampler must be euler, heun or em, got {sampler!r}")
        self.tokenizer = Tokenizer(max_len)
        self.path = LinearPath(t_min=0.0)
        # the UNet first, as always (initialisation order); it cross-attends to the encoder's width
        unet = build_net(unet, "module.unet", in_channels=3, text_dim=_width(text_encoder))
        self.model = CaptionedVelocity(
            unet, build_net(text_encoder, "module.text_encoder", vocab_size=len(self.tokenizer), max_len=max_len)
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
        t = self.example_uniform(index, (1,), stream=1, generator=generator)[:, 0]
        eps = self.example_normal(index, tuple(x0.shape[1:]), stream=0, generator=generator)
        drop = self.example_uniform(index, (1,), stream=2, generator=generator)[:, 0] < self.hparams.cond_drop
        tokens = torch.where(drop[:, None], torch.zeros_like(tokens), tokens)
        err = denoising_error(lambda x, s: self(x, s, tokens), self.path, x0, t, eps, target="velocity")
        return err.pow(2).mean()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # EMA with the usual warm-up so that early checkpoints are not dominated by the init
        ema_update_(self.ema.parameters(), self.model.parameters(), ema_decay(self.hparams.ema_decay, self.global_step))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val/loss", self.compute_loss(batch), sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.log("test/loss", self.compute_loss(batch), sync_dist=True)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(
            self.model.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        warm = max(1, self.hparams.warmup_steps)
        return per_step(opt, lambda s: lr_factor(s, warm))

    # ---- generation -------------------------------------------------------------------------
    def guided_velocity(self, tokens: torch.Tensor, guidance: float, use_ema: bool = True):
        """The EMA (or live) network's CFG velocity closure; see :func:`cfg_velocity`."""
        return cfg_velocity(self.ema if use_ema else self.model, tokens, guidance)

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
        """Images x (n, 3, H, W) in [-1, 1] for the captions ``cond`` (default: n captions drawn from the
        training grammar with the generator's seed). ``solver``: euler | heun (the ODE) or em
        (Euler-Maruyama on the SDE with g(t) = ``sde_noise`` t; core.diffusion.flow). Options:
        ``guidance`` (CFG weight w, default the configured one; w = 1: none) and ``use_ema`` (True)."""
        opts = sample_options(self, guidance, guidance=None, use_ema=True)
        captions = cond
        if captions is None:
            seed = int(torch.randint(2**31, (1,), generator=generator)) if generator is not None else 0
            rng = np.random.default_rng(seed)
            captions = [sample_training_metadata(rng)["prompt"] for _ in range(n)]
        if len(captions) != n:
            raise ValueError(f"sample: {len(captions)} captions for n={n}")
        w = self.guidance if opts.guidance is None else float(opts.guidance)
        steps = self.sample_steps if steps is None else int(steps)
        solver = choose("TextToImage.sample: solver", solver, self.sampler, SOLVERS)
        tokens = self.tokenizer.encode(captions).to(self.device)
        x = torch.randn((n, 3, self.image_size, self.image_size), generator=generator).to(self.device)
        res = flow_sample(
            x,
            time_grid(1.0, 0.0, steps),
            velocity=self.guided_velocity(tokens, w, opts.use_ema),
            solver="sde" if solver == "em" else solver,
            sde_noise="linear",
            noise_level=self.hparams.sde_noise,
            generator=generator,
            counter=self.nfe,
            return_trajectory=return_trajectory,
        )
        res.x = res.x.clamp(-1, 1)
        res.nfe *= cfg_passes(w)
        return res
