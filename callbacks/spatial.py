"""Figures of spatial expression prediction on the held-out slide, after testing.

* ``spatial/gene_variation``: per-gene variance across spots of single predicted draws against the
  true per-gene variance (log-log, with the identity): regression falls below the line, a model of
  the conditional law stays on it (the RVD of core/eval/spatial.py, gene by gene).
* ``spatial/maps``: for the ``n_genes`` best-predicted genes (highest PCC) of the first test
  slide, the true map,
  the point prediction and one single draw, at the spot coordinates.

Reads ``pl_module.test_outputs`` (written by modules/spatial_base.py in ``on_test_epoch_end``), so it
runs in ``on_test_end``, after the module's hook; it logs media only (W&B or files in the output dir).
"""

from __future__ import annotations

import lightning as L
import torch

from modules.media import log_figure


class SpatialMapsCallback(L.Callback):
    def __init__(self, n_genes: int = 3, spot_size: float = 12.0) -> None:
        self.n_genes, self.spot_size = n_genes, spot_size

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = getattr(pl_module, "test_outputs", None)
        if not out or not trainer.is_global_zero:
            return
        genes = list(getattr(trainer.datamodule, "gene_panel", [])) or [
            str(g) for g in range(out["true"].shape[1])
        ]
        log_figure(trainer, "spatial/gene_variation", variation_figure(out, type(pl_module).__name__))
        log_figure(trainer, "spatial/maps", maps_figure(out, genes, self.n_genes, self.spot_size))


def variation_figure(out: dict[str, torch.Tensor], title: str):
    import matplotlib.pyplot as plt

    v_true, v_pred = out["true"].var(0), out["single"].var(0)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(v_true, v_pred, s=8)
    lo, hi = float(min(v_true.min(), v_pred.min()).clamp_min(1e-4)), float(max(v_true.max(), v_pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="true variance per gene",
        ylabel="predicted variance (single draws)",
        title=f"{title}: gene variation",
    )
    return fig


def maps_figure(out: dict[str, torch.Tensor], genes: list[str], n_genes: int, spot_size: float):
    import matplotlib.pyplot as plt

    first = out["slide"] == out["slide"].min()
    true, point, single, xy = (
        out["true"][first],
        out["point"][first],
        out["single"][first],
        out["coords"][first],
    )
    from core.eval.spatial import pearson_per_gene

    top = torch.argsort(pearson_per_gene(point, true), descending=True)[
        :n_genes
    ].tolist()  # best-predicted genes
    fig, axes = plt.subplots(len(top), 3, figsize=(9, 3 * len(top)), squeeze=False)
    for row, g in enumerate(top):
        lo, hi = float(true[:, g].min()), float(true[:, g].max())
        for col, (name, values) in enumerate(
            (("true", true), ("point prediction", point), ("single draw", single))
        ):
            ax = axes[row, col]
            ax.scatter(xy[:, 0], xy[:, 1], c=values[:, g], s=spot_size, vmin=lo, vmax=hi, cmap="viridis")
            ax.set(title=f"{genes[g]}: {name}", aspect="equal", xticks=[], yticks=[])
            ax.invert_yaxis()
    fig.tight_layout()
    return fig
