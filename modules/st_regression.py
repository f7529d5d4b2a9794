"""ST-Net-style regression baseline (He et al. 2020, as compared in Stem): the same image encoder as
Stem with an MLP head trained by mean squared error on the standardised log2(count + 1) targets.

Its point prediction is E[y | patch] at best, so its spread across spots shrinks towards the mean
(high RVD). For distributional comparisons its predictive law is the point prediction plus Gaussian
residual noise with the per-gene residual variance measured on the validation slide(s).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from modules.spatial_base import SpatialPredictor

REGRESSION_DEFAULTS = {"hidden": 256, "layers": 2, "num_samples": 20}


class STRegression(SpatialPredictor):
    """The constructor's args: :class:`modules.spatial_base.SpatialPredictor`; ``regression``: the head
    (:data:`REGRESSION_DEFAULTS`, ``num_samples`` draws of point + residual noise per spot for the
    energy distance); ``stem``: Stem's section, unused here."""

    section_name, section_defaults = "regression", REGRESSION_DEFAULTS

    def build(self, cfg: dict) -> None:
        n_genes = self.hparams.n_genes
        layers: list[nn.Module] = []
        width = self.encoder.out_dim
        for _ in range(cfg["layers"]):
            layers += [nn.Linear(width, cfg["hidden"]), nn.SiLU()]
            width = cfg["hidden"]
        self.net = nn.Sequential(*layers, nn.Linear(width, n_genes))
        self.num_samples = int(cfg["num_samples"])
        self.register_buffer("residual_var", torch.ones(n_genes))
        self._val_sq: list[torch.Tensor] = []

    def forward(self, batch: dict) -> torch.Tensor:
        """Point prediction (B, G) in log2(count + 1) units."""
        return self.unstandardize(self.net(self.encoder(batch)))

    def compute_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """MSE on standardised targets (deterministic; ``generator`` is accepted for the shared protocol)."""
        return ((self.net(self.encoder(batch)) - self.standardize(batch["target"])) ** 2).mean()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self._val_sq.append(((self(batch) - batch["target"]) ** 2).detach())

    def on_validation_epoch_end(self) -> None:
        if self._val_sq:
            self.residual_var.copy_(torch.cat(self._val_sq).mean(0))
            self._val_sq = []

    @torch.no_grad()
    def predict_spots(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """point = single = the regression output; samples = point + N(0, residual_var) (S, B, G)."""
        point = self(batch)
        noise = torch.randn((self.num_samples, *point.shape), generator=generator).to(point)
        return {"point": point, "single": point, "samples": point + self.residual_var.sqrt() * noise}
