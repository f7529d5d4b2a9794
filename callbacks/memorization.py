"""Nearest-neighbour memorization of generated samples, every N training steps.

Works with any module that offers ``sample(n, generator=...)`` returning an object with ``.x`` (a
tensor, or a tuple whose first part is the image, as the joint text-image module returns) and any
datamodule with ``train_tensor()``: samples and training data are flattened to (n, d), so it runs on
the 2-D toy diffusion as well as on image models.

Cost per measurement: one ``sample(n)`` call at the module's default steps and an (n, N_train)
distance matrix. The samples come from the callback's own generator (``seed``), under
callbacks.isolation.measuring: the run's RNG and NFE counter are left as they were.
"""

from __future__ import annotations

import lightning as L
import torch

from callbacks.isolation import measuring
from callbacks.periodic import EveryNSteps
from modules.media import log_figure, log_images, log_measurement
from core.eval.memorization import MEMORIZATION_THRESHOLD, memorized, nearest_neighbor_ratio


def _tensor(x) -> torch.Tensor:
    """The samples (or training data) as a CPU float tensor: ``.x`` of a SampleResult, and the first
    part (the image) of a tuple."""
    x = getattr(x, "x", x)
    x = x[0] if isinstance(x, (tuple, list)) else x
    return x.detach().float().cpu()


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(len(x), -1)


def _as_images(x: torch.Tensor) -> torch.Tensor | None:
    """(n, C, H, W) as it is; (n, side*side) -> (n, 1, side, side) when the features form a square
    image; else None."""
    if x.ndim == 4:
        return x
    side = int(round(x[0].numel() ** 0.5))
    if x.ndim != 2 or side * side != x.shape[1] or side < 4:
        return None
    return x.reshape(len(x), 1, side, side)


class MemorizationCallback(EveryNSteps):
    """Every ``every_n_steps`` (and at step ``max_steps``) on rank 0: draw ``n`` samples, find their
    two nearest training points, and log

    * ``memorization/rate``: fraction with |x - NN1| / |x - NN2| < ``threshold`` (1/3);
    * ``memorization/ratio_median`` and ``memorization/ratio_q10``: the NN-ratio distribution;
    * a histogram of the ratios and, for image data, samples beside their nearest training images.
    """

    def __init__(
        self,
        every_n_steps: int = 1000,
        n: int = 256,
        threshold: float = MEMORIZATION_THRESHOLD,
        n_pairs: int = 16,
        seed: int = 0,
    ) -> None:
        if n < 1 or not 0 < threshold <= 1:
            raise ValueError(
                f"MemorizationCallback: need n >= 1 and 0 < threshold <= 1, got {n}, {threshold}"
            )
        self.every_n_steps, self.n, self.threshold, self.n_pairs, self.seed = (
            every_n_steps,
            n,
            threshold,
            n_pairs,
            seed,
        )
        self.last: dict[str, float] = {}

    @torch.no_grad()
    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        if not trainer.is_global_zero:
            return {}
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "train_tensor"):
            raise ValueError("MemorizationCallback needs a datamodule with train_tensor()")
        train = _tensor(dm.train_tensor())
        if len(train) < 2:
            raise ValueError(f"MemorizationCallback needs >= 2 training examples, got {len(train)}")
        with measuring(pl_module):
            samples = _tensor(pl_module.sample(self.n, generator=torch.Generator().manual_seed(self.seed)))
        ratio, nn1 = nearest_neighbor_ratio(_flat(samples), _flat(train))
        self.last = {
            "memorization/rate": float(memorized(ratio, self.threshold).float().mean()),
            "memorization/ratio_median": float(ratio.median()),
            "memorization/ratio_q10": float(ratio.quantile(0.1)),
        }
        log_measurement(trainer, self.last)
        self._media(trainer, samples, train, ratio, nn1)
        return self.last

    def _media(self, trainer, samples, train, ratio, nn1) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        ax.hist(ratio.clamp(max=1.5).numpy(), bins=40, color="C0")
        ax.axvline(self.threshold, color="C3", ls="--", label=f"memorised < {self.threshold:.2f}")
        ax.set_xlabel("|x - NN1| / |x - NN2|")
        ax.set_title(f"step {trainer.global_step}: rate {self.last['memorization/rate']:.2f}")
        ax.legend()
        log_figure(trainer, "memorization/ratio_hist", fig)
        imgs = _as_images(samples)
        if imgs is None:
            return
        k = min(self.n_pairs, len(samples))
        order = ratio.argsort()[:k]  # the most memorised first
        nearest = train[nn1[order]].reshape(k, *imgs.shape[1:])
        pairs = torch.stack([imgs[order], nearest], dim=1).reshape(2 * k, *imgs.shape[1:])
        captions = [c for i in order.tolist() for c in (f"sample r={ratio[i]:.2f}", f"train #{int(nn1[i])}")]
        log_images(trainer, "memorization/nearest", pairs, captions, nrow=8)
