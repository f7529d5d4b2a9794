"""VariationalClassifier: a classifier (small ViT, tanh MLP or small CNN) trained with IVON or a
baseline optimiser (SGD, AdamW); docs/methods/eos_variational.md.

Validation/test report, at the posterior mean (``<stage>/accuracy``, ``nll``, ``ece``) and for the
posterior predictive p(y|x) ~ (1/S) sum_s softmax(f(x; theta_s)), theta_s ~ q (``<stage>/pp_*``; for
non-variational optimisers pp_* is the point prediction). ECE: 15 equal-width confidence bins, L1
(torchmetrics). The test stage also writes ``test_predictions.pt`` (pp probabilities and labels) so that
claims can bootstrap over test examples.

IVON runs under Lightning's automatic optimisation: ``IVON.step(closure)`` evaluates the closure
(training_step + backward) ``mc_samples`` times at sampled weights. With gradient accumulation
(``trainer.accumulate_grad_batches = k``) the k - 1 micro-batches Lightning runs outside ``step`` are each
wrapped here in ``sampled_params(train=True)`` (on_train_batch_start -> on_after_backward), so every
micro-batch sees its own posterior sample and IVON sums them (core/optim/ivon.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.aggregation import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from core.optim.ivon import IVON
from modules.base import GenLabModule, lr_factor, per_step
from modules.eos import make_mlp
from modules.nets.vit import ViT


def make_net(net: str, image_size: int, channels: int, num_classes: int, width: int, depth: int,
             patch: int, heads: int) -> nn.Module:
    if net == "vit":
        return ViT(image_size, patch, channels, num_classes, dim=width, depth=depth, heads=heads)
    if net == "mlp":
        return make_mlp(channels * image_size**2, [width] * depth, num_classes, "tanh")
    if net == "cnn":
        side = image_size // 4
        return nn.Sequential(nn.Unflatten(1, (channels, image_size, image_size)) if channels else nn.Identity(),
                             nn.Conv2d(channels, width // 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(width // 2, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(width * side * side, num_classes))
    if net == "resnet18":
        return resnet18_small(channels, image_size, num_classes)
    raise ValueError(f"module.net: expected 'vit', 'mlp', 'cnn' or 'resnet18', got {net!r}")


def resnet18_small(channels: int, image_size: int, num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 (random init) with the usual small-image stem: a 3x3 stride-1 first
    convolution and no max-pool, as in the CIFAR experiments of the paper; takes flat inputs."""
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return nn.Sequential(nn.Unflatten(1, (channels, image_size, image_size)), model)


class VariationalClassifier(GenLabModule):
    """Args: net ('vit'|'mlp'|'cnn') and its sizes; loss 'ce' or 'mse' (one-hot, 0.5 sum, for EoS);
    optimizer 'ivon'|'adamw'|'sgd'; lr, weight_decay; IVON's ess (None = training-set size), hess_init,
    beta1, beta2, mc_samples, clip_radius; eval_samples: posterior samples of the predictive;
    lr_schedule 'cosine' (per step, over trainer.max_steps, to 0) or 'constant'; warmup_steps: linear
    warm-up of the rate from lr/warmup_steps to lr over the first steps (then the schedule; the IVON
    paper warms up when hess_init is small, since the first steps' h is then far from its settled value)."""

    def __init__(self, net: str = "vit", image_size: int = 28, channels: int = 1, num_classes: int = 10,
                 width: int = 64, depth: int = 3, patch: int = 4, heads: int = 4, loss: str = "ce",
                 optimizer: str = "ivon", lr: float = 0.1, weight_decay: float = 1e-4, momentum: float = 0.0,
                 ess: float | None = None, hess_init: float = 0.5, beta1: float = 0.9, beta2: float = 0.99999,
                 mc_samples: int = 1, clip_radius: float = 1e-3, eval_samples: int = 8,
                 lr_schedule: str = "cosine", warmup_steps: int = 0):
        super().__init__()
        for key, val, ok in [("loss", loss, ("ce", "mse")), ("optimizer", optimizer, ("ivon", "adamw", "sgd")),
                             ("lr_schedule", lr_schedule, ("cosine", "constant"))]:
            if val not in ok:
                raise ValueError(f"module.{key}: expected one of {ok}, got {val!r}")
        if eval_samples < 1:
            raise ValueError(f"module.eval_samples: expected >= 1, got {eval_samples}")
        if warmup_steps < 0:
            raise ValueError(f"module.warmup_steps: expected >= 0, got {warmup_steps}")
        self.save_hyperparameters()
        self.net = make_net(net, image_size, channels, num_classes, width, depth, patch, heads)
        self._accum_ctx = None
        self.metrics = nn.ModuleDict()
        for stage in ("val", "test"):
            for kind in ("", "pp_"):
                self.metrics[f"{stage}_{kind}acc"] = MulticlassAccuracy(num_classes, average="micro")
                self.metrics[f"{stage}_{kind}ece"] = MulticlassCalibrationError(num_classes, n_bins=15, norm="l1")
                self.metrics[f"{stage}_{kind}nll"] = MeanMetric()
        self._test_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def compute_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training loss at the current weights (deterministic; generator unused)."""
        logits = self(batch["x"])
        if self.hparams.loss == "ce":
            return F.cross_entropy(logits, batch["y"])
        target = F.one_hot(batch["y"], logits.shape[-1]).to(logits.dtype)
        return 0.5 * ((logits - target) ** 2).sum(-1).mean()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        self.log("train/loss", loss.detach(), prog_bar=True)
        return loss

    # ------------------------------------------------------------------ evaluation
    def _predict(self, x: torch.Tensor, batch_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(probs at the mean, posterior-predictive probs), both (B, K)."""
        probs = F.softmax(self(x), -1)
        opt = self._ivon()
        if opt is None:
            return probs, probs
        gen = torch.Generator(device=x.device).manual_seed(self.noise_seed * 100_003 + batch_idx)
        pp = opt.predictive_mean(lambda: F.softmax(self(x), -1), self.hparams.eval_samples, generator=gen)
        return probs, pp

    def _eval_step(self, batch: dict, batch_idx: int, stage: str) -> None:
        probs, pp = self._predict(batch["x"], batch_idx)
        y = batch["y"]
        for kind, p in (("", probs), ("pp_", pp)):
            self.metrics[f"{stage}_{kind}acc"].update(p, y)
            self.metrics[f"{stage}_{kind}ece"].update(p, y)
            self.metrics[f"{stage}_{kind}nll"].update(-torch.log(p.gather(1, y[:, None]).clamp_min(1e-12)).squeeze(1))
        if stage == "test":
            self._test_outputs.append((pp.detach().cpu(), y.cpu()))

    def _log_epoch(self, stage: str) -> None:
        for kind in ("", "pp_"):
            for name in ("acc", "ece", "nll"):
                metric = self.metrics[f"{stage}_{kind}{name}"]
                label = "accuracy" if name == "acc" else name
                self.log(f"{stage}/{kind}{label}", metric.compute(), sync_dist=False)
                metric.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
        if self._test_outputs and self.trainer.is_global_zero:
            probs = torch.cat([p for p, _ in self._test_outputs])
            labels = torch.cat([y for _, y in self._test_outputs])
            torch.save({"probs": probs, "labels": labels}, Path(self.trainer.default_root_dir) / "test_predictions.pt")
        self._test_outputs = []

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        hp = self.hparams
        if hp.optimizer == "ivon":
            ess = hp.ess
            if ess is None:
                dm = self.trainer.datamodule
                dm.setup("fit")
                ess = float(len(dm.train_set))
            opt = IVON(self.parameters(), lr=hp.lr, ess=ess, hess_init=hp.hess_init, beta1=hp.beta1,
                       beta2=hp.beta2, weight_decay=hp.weight_decay, mc_samples=hp.mc_samples,
                       clip_radius=hp.clip_radius if hp.clip_radius > 0 else math.inf, seed=int(self.noise_seed))
        elif hp.optimizer == "adamw":
            opt = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        if hp.lr_schedule == "constant" and hp.warmup_steps == 0:
            return opt
        total = max(int(self.trainer.max_steps), 1)
        if hp.warmup_steps == 0:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        end = total if hp.lr_schedule == "cosine" else None  # warm-up, then cosine to 0 or constant
        return per_step(opt, lambda step: lr_factor(step, hp.warmup_steps, end))

    def _ivon(self) -> IVON | None:
        if self._trainer is None or not self.trainer.optimizers:
            return None
        opt = self.trainer.optimizers[0]
        return opt if isinstance(opt, IVON) else None

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        """Gradient accumulation: micro-batches run outside IVON.step get their own posterior sample."""
        k = self.trainer.accumulate_grad_batches
        opt = self._ivon()
        if opt is None or k <= 1:
            return
        last = (batch_idx + 1) % k == 0 or batch_idx + 1 == self.trainer.num_training_batches
        if not last:
            self._accum_ctx = opt.sampled_params(train=True)
            self._accum_ctx.__enter__()

    def on_after_backward(self) -> None:
        if self._accum_ctx is not None:
            ctx, self._accum_ctx = self._accum_ctx, None
            ctx.__exit__(None, None, None)
