"""What Stem and its regression baseline share: image conditioning, target standardisation, and
the held-out-slide evaluation (core/eval/spatial.py; on synthetic tissue also the exact Bayes errors
and the energy distance to the true conditional of core/tasks/synthetic_tissue.py).

Both modules read one ``module`` config: the shared arguments plus a ``stem`` section (the DiT and
its diffusion) and a ``regression`` section (the MLP head). Each model checks and uses its own
section and leaves the other's alone, so one config drives both variants of the study.
"""

from __future__ import annotations

import torch
from torch import nn

from core.eval.spatial import energy_distance, point_prediction_metrics, relative_variation_distance
from core.tasks.synthetic_tissue import conditional_moments, sample_conditional
from modules.base import GenLabModule
from modules.nets.build import build_net, net_hparam

DEFAULT_PATCH_ENCODER = {"_target_": "modules.nets.patch_encoder.PatchEncoder", "kind": "image", "embedding_dim": 0,
                         "out_dim": 128, "cnn_width": 16}


def section(given: dict | None, defaults: dict, name: str) -> dict:
    """``defaults`` updated by ``given``; an unknown key is an error naming ``module.<name>.<key>``."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"module.{name}.{unknown[0]}: unknown; valid keys: {', '.join(defaults)}")
    return {**defaults, **given}


class SpatialPredictor(GenLabModule):
    """The shared constructor of Stem and STRegression (their one signature, so one ``module`` config
    drives both). Args: n_genes; patch_encoder: the spot encoder (a config node or a built network;
    modules.nets.patch_encoder.PatchEncoder: kind ``image``, a joint CNN on patches with out_dim
    outputs and cnn_width, or ``embedding``, precomputed / frozen features of width ``embedding_dim``);
    lr, weight_decay, warmup_steps (AdamW, warm-up then cosine); truth_samples (draws of the true
    conditional per spot on synthetic tissue); ``stem`` and ``regression``: the two models' sections.

    Subclasses name their section and its defaults (``section_name``, ``section_defaults``), build
    their head from it in :meth:`build` (after the encoder), and implement ``compute_loss`` and
    ``predict_spots``."""

    section_name: str = ""
    section_defaults: dict = {}

    def __init__(
        self,
        n_genes: int = 64,
        patch_encoder: dict | nn.Module | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        truth_samples: int = 100,
        stem: dict | None = None,
        regression: dict | None = None,
    ) -> None:
        super().__init__()
        patch_encoder = DEFAULT_PATCH_ENCODER if patch_encoder is None else patch_encoder
        self.encoder = build_net(patch_encoder, "module.patch_encoder")
        self.register_buffer("target_mean", torch.zeros(n_genes))
        self.register_buffer("target_std", torch.ones(n_genes))
        self.test_outputs: dict[str, torch.Tensor] = {}
        self._test_parts: list[dict[str, torch.Tensor]] = []
        self.save_hyperparameters(ignore=["patch_encoder"])
        self.hparams.update(patch_encoder=net_hparam(patch_encoder))
        given = {"stem": stem, "regression": regression}[self.section_name]
        self.build(section(given, self.section_defaults, self.section_name))

    def build(self, cfg: dict) -> None:
        """The model's own head from its config section (the other section is left alone)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ data scale

    def setup(self, stage: str) -> None:
        """Copy the training slides' per-gene mean/std (checkpointed as buffers)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage != "fit" or dm is None:
            return
        dm.setup(stage)
        if len(dm.gene_panel) != self.hparams.n_genes:
            raise ValueError(
                f"module.n_genes={self.hparams.n_genes} but the data panel has {len(dm.gene_panel)} genes; "
                "set module.n_genes to data.n_genes"
            )
        self.target_mean.copy_(dm.target_mean)
        self.target_std.copy_(dm.target_std)

    def standardize(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.target_mean) / self.target_std

    def unstandardize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.target_std + self.target_mean

    # ------------------------------------------------------------------ steps

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        gen = torch.Generator().manual_seed(1234 + batch_idx)
        self.log("val/loss", self.compute_loss(batch, generator=gen), sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        gen = torch.Generator().manual_seed(10_000 + batch_idx)
        out = self.predict_spots(batch, gen)
        part = {"true": batch["target"], "coords": batch["coords"], "slide": batch["slide"], **out}
        if "composition" in batch:
            part["composition"] = batch["composition"]
        self._test_parts.append({k: v.detach().float().cpu() for k, v in part.items()})

    def on_test_epoch_end(self) -> None:
        """PCC-10/50/200, MSE, MAE on point predictions; RVD on single samples; on synthetic tissue the
        per-spot energy distance to the true conditional and the exact Bayes references."""
        parts, self._test_parts = self._test_parts, []
        if not parts:
            return
        cat = {k: torch.cat([p[k] for p in parts], dim=1 if k == "samples" else 0) for k in parts[0]}
        metrics = point_prediction_metrics(cat["point"], cat["true"])
        metrics["rvd"] = relative_variation_distance(cat["single"], cat["true"])
        metrics["n_spots"], metrics["n_genes"] = cat["true"].shape
        model = getattr(getattr(self.trainer, "datamodule", None), "tissue_model", None)
        if model is not None and "composition" in cat:
            gen = torch.Generator().manual_seed(77)
            truth = sample_conditional(model, cat["composition"], self.hparams.truth_samples, gen)
            per_spot = energy_distance(cat["samples"], truth)
            metrics["energy_distance"] = float(per_spot.mean())
            metrics["energy_distance_se"] = float(per_spot.std() / len(per_spot) ** 0.5)
            exact = conditional_moments(model, cat["composition"])
            oracle = point_prediction_metrics(exact["mean"], cat["true"])
            metrics.update({f"oracle_{k}": v for k, v in oracle.items()})
            metrics["oracle_rvd"] = relative_variation_distance(truth[0], cat["true"])
            metrics["bayes_mse"] = float(exact["var"].mean())
        for name, value in metrics.items():
            self.log(f"test/{name}", float(value), rank_zero_only=True)
        self.test_outputs = cat

    # ------------------------------------------------------------------ optimisation

    def configure_optimizers(self):
        return self.adamw_warmup_cosine()
