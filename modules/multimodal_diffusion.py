"""Diffuse Everything (Rojas, Zhu, Zhu, Ye, Tao 2025): one diffusion model over a tuple state whose
parts (time groups) carry their own times, here on mixed-type tables.

The state is (numeric columns (B, n_num), categorical columns (B, n_cat)); numeric columns follow the
VP process (eps-prediction MSE), categorical ones absorbing mask diffusion (weighted cross-entropy),
and the loss is L_cont + lambda L_disc (core.diffusion.multimodal). The columns are split into time groups, by
default {target column} and {all other columns}; training draws the groups' times independently
(``time_mode=decoupled``; with probability ``p_condition`` one group sits at t = 0, with ``p_equal`` all
share one time) or always equal (``time_mode=shared``: the shared-time baseline, same network).

Test: a synthetic table as large as the training table is scored against the real one (shape, trend,
C2ST, MLE, alpha-precision/beta-recall; core.eval.tabular) next to two baselines (independent
marginals, Gaussian copula), and the target column of held-out rows is imputed ``impute_samples``
times per row: given the other columns at t = 0 (decoupled) or by replacement, re-noising the
observed columns to the current time at every step (the fair way for a shared-time model).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from sklearn.metrics import r2_score

from modules.media import log_table
from core.diffusion.masked import MaskedDiffusion
from core.diffusion.multimodal import MultimodalProcess, Part
from core.diffusion.processes import VP
from core.diffusion.solvers import SampleResult
from core.eval.auroc import auroc
from core.eval.tabular import GaussianCopula, sample_marginals, tabular_metrics
from modules.base import GenLabModule
from modules.sampling import choose, generation, multimodal_sample, sample_options
from modules.nets.tabular_dit import TabularDiT

TIME_MODES = ("decoupled", "shared")


def column_groups(schema: dict, time_groups: list[list[str]] | None) -> tuple[list[int], int]:
    """Group index of every column (numeric then categorical) from lists of column names; a group
    given as [] or ["*"] takes every column not named elsewhere. Default: [[target], ["*"]]."""
    columns = schema["numeric"] + schema["categorical"]
    kind, j = schema["target"]
    target = schema["numeric"][j] if kind == "num" else schema["categorical"][j]
    groups = time_groups if time_groups else [[target], ["*"]]
    named = {c for g in groups for c in g if c != "*"}
    for c in named:
        if c not in columns:
            raise ValueError(
                f"module.time_groups names column {c!r}, which the table lacks; columns: {columns}"
            )
    rest = [i for i, g in enumerate(groups) if not g or g == ["*"]]
    if len(rest) > 1:
        raise ValueError("module.time_groups may have at most one catch-all group ([] or ['*'])")
    out = []
    for c in columns:
        owner = [i for i, g in enumerate(groups) if c in g]
        if len(owner) > 1:
            raise ValueError(f"module.time_groups puts column {c!r} in several groups")
        if not owner and not rest:
            raise ValueError(f"column {c!r} is in no time group; add a catch-all group ['*']")
        out.append(owner[0] if owner else rest[0])
    return out, len(groups)


class MultimodalDiffusion(GenLabModule):
    """Mixed-type table diffusion with decoupled per-group times; see the module docstring.

    Args:
        time_mode: ``decoupled`` (independent group times) or ``shared`` (one time; the baseline).
        time_groups: lists of column names, one list per time group (None = {target}, {the rest}).
        p_condition, p_equal: training probabilities of a group at t = 0 / of equal times (decoupled).
        lambda_disc: weight of the categorical loss.
        hidden, depth, heads: TabularDiT size (the paper: hidden 24, depth 4).
        beta_min, beta_max, mask_eps: the VP process and the log-linear mask schedule.
        lr, weight_decay, warmup_steps: AdamW with warm-up then cosine decay to 10%.
        sample_steps: reverse steps (one network call each).
        eval_samples: synthetic rows for the metrics (0 = as many as training rows).
        impute_samples, impute_rows: imputations per held-out row, and how many rows (0 = all).
        c2st_interactions: give the C2ST detector pairwise feature products (see core.eval.tabular).
    """

    def __init__(
        self,
        time_mode: str = "decoupled",
        time_groups: list[list[str]] | None = None,
        p_condition: float = 0.1,
        p_equal: float = 0.1,
        lambda_disc: float = 1.0,
        hidden: int = 64,
        depth: int = 3,
        heads: int = 4,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        mask_eps: float = 1e-3,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        sample_steps: int = 100,
        eval_samples: int = 0,
        impute_samples: int = 10,
        impute_rows: int = 0,
        c2st_interactions: bool = True,
    ) -> None:
        super().__init__()
        if time_mode not in TIME_MODES:
            raise ValueError(f"module.time_mode must be one of {TIME_MODES}, got {time_mode!r}")
        self.save_hyperparameters()
        self.sample_steps = sample_steps
        self.schema: dict | None = None
        self.net: TabularDiT | None = None

    # ----- building from the table's schema -----------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.net is None:
            dm = self.trainer.datamodule
            if not hasattr(dm, "schema"):
                raise ValueError(
                    "MultimodalDiffusion needs a tabular datamodule with a `schema` (datamodules.tabular)"
                )
            self.build(dm.schema)

    def build(self, schema: dict) -> None:
        h = self.hparams
        self.schema = {k: list(v) for k, v in schema.items()}
        groups, n_groups = column_groups(self.schema, h.time_groups)
        self.column_group = groups
        n_num, cards = len(schema["numeric"]), list(schema["cardinalities"])
        self.net = TabularDiT(n_num, cards, groups, n_groups, h.hidden, h.depth, h.heads)
        self.process = MultimodalProcess(
            [Part("continuous", tuple(groups[:n_num])), Part("discrete", tuple(groups[n_num:]))],
            n_groups,
            continuous=VP(h.beta_min, h.beta_max),
            discrete=MaskedDiffusion(self.net.mask_id, eps=h.mask_eps),
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tabular_schema"] = self.schema

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.net is None:
            self.build(checkpoint["tabular_schema"])

    # ----- training -----------------------------------------------------------------------------
    def forward(self, state: tuple, t_groups: torch.Tensor) -> tuple:
        return self.net(state[0], state[1], t_groups)

    def compute_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """L_cont + lambda L_disc of a batch; noise and times keyed by example index unless ``generator``."""
        x0 = (batch["x"], batch["cat"])
        G = self.process.n_groups
        shapes = [(G + 2,), tuple(x0[0].shape[1:]), tuple(x0[1].shape[1:])]
        idx, g = batch["index"], generator
        u, eps, um = (
            self.example_uniform(idx, shapes[0], 0, g),
            self.example_normal(idx, shapes[1], 1, g),
            self.example_uniform(idx, shapes[2], 2, g),
        )
        h = self.hparams
        t = self.process.draw_times(u, h.p_condition, h.p_equal, shared=h.time_mode == "shared")
        noise = (eps, um)
        x_t = self.process.add_noise(x0, t, noise)
        l_num, l_cat = self.process.losses(self(x_t, t), x0, x_t, noise, t)
        self._parts = (l_num.mean().detach(), l_cat.mean().detach())
        return l_num.mean() + h.lambda_disc * l_cat.mean()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/loss_num", self._parts[0])
        self.log("train/loss_cat", self._parts[1])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        gen = torch.Generator().manual_seed(1234 + batch_idx)
        self.log("val/loss", self.compute_loss(batch, generator=gen), sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        gen = torch.Generator().manual_seed(4321 + batch_idx)
        self.log("test/loss", self.compute_loss(batch, generator=gen), sync_dist=True)

    def on_test_epoch_end(self) -> None:
        if self.trainer.global_rank != 0:
            return
        dm, h = self.trainer.datamodule, self.hparams
        real, test = dm.table("train"), dm.table("test")
        cards, target = self.schema["cardinalities"], tuple(self.schema["target"])
        n = h.eval_samples or len(real[0])
        gen = torch.Generator().manual_seed(2024)
        start = time.time()
        out = self.sample(n, generator=gen)
        syn = dm.decode(*out.x)
        self.log("test/sample_seconds", time.time() - start, rank_zero_only=True)
        self.log("test/nfe_per_sample", float(out.nfe), rank_zero_only=True)
        rng = np.random.default_rng(0)
        tables = {
            "": syn,
            "marginals_": sample_marginals(real, n, rng),
            "copula_": GaussianCopula(real, cards, rng).sample(n, rng),
        }
        rows = []
        for prefix, table in tables.items():
            scores = tabular_metrics(real, table, test, cards, target, interactions=h.c2st_interactions)
            for k, v in scores.items():
                self.log(f"test/{prefix}{k}", float(v), rank_zero_only=True)
            rows.append([f"{h.time_mode}-time model" if not prefix else prefix[:-1], *scores.values()])
        log_table(self.trainer, "test/fidelity", ["table", *scores], rows)
        for k, v in self.impute_target(dm, test).items():
            self.log(f"test/{k}", v, rank_zero_only=True)

    def configure_optimizers(self):
        return self.adamw_warmup_cosine()

    # ----- generation ---------------------------------------------------------------------------
    @generation
    def sample(
        self,
        n: int,
        *,
        steps: int | None = None,
        solver: str | None = None,
        generator: torch.Generator | None = None,
        cond: tuple | None = None,
        return_trajectory: bool = False,
        **guidance,
    ) -> SampleResult:
        """``n`` rows in model space: x = (scaled numerics (n, n_num), codes (n, n_cat)). ``cond``: rows
        (numerics, codes) whose groups outside ``generate`` are kept (a conditional draw); ``solver``: the
        numeric part's step, euler_maruyama (default) | ancestral. Options: ``generate`` (group indices),
        ``replacement`` and noisy ``guidance``, ``guidance_time``, ``guidance_window`` as in
        core.diffusion.multimodal."""
        opts = sample_options(self, guidance, generate=None, replacement=False, guidance=0.0, guidance_time=1.0,
                              guidance_window=(0.0, 1.0))
        shapes = [(n, len(self.schema["numeric"])), (n, len(self.schema["categorical"]))]
        return multimodal_sample(
            self, shapes, steps or self.sample_steps, given=cond, generator=generator,
            return_trajectory=return_trajectory, generate=opts.generate, replacement=opts.replacement,
            guidance=opts.guidance, guidance_time=opts.guidance_time, guidance_window=tuple(opts.guidance_window),
            continuous_step=choose("MultimodalDiffusion.sample: solver", solver, "euler_maruyama",
                                   ("euler_maruyama", "ancestral")),
        )

    def impute_target(self, dm, test: tuple, seed: int = 7) -> dict[str, float]:
        """Impute the target of held-out rows K times given the other columns and score it: ROC AUC of
        the fraction of positive imputations (binary), accuracy of the majority (multi-class), or R^2
        of the mean (numeric). Decoupled: the given columns sit at t = 0; shared: replacement."""
        h = self.hparams
        kind, j = self.schema["target"]
        rows = len(test[0]) if not h.impute_rows else min(h.impute_rows, len(test[0]))
        K = h.impute_samples
        x = torch.tensor(dm.encoder.scale(test[0][:rows]), dtype=torch.float32).repeat_interleave(K, 0)
        c = torch.tensor(test[1][:rows]).repeat_interleave(K, 0)
        col = j if kind == "num" else len(self.schema["numeric"]) + j
        target_group = self.column_group[col]
        out = self.sample(
            rows * K,
            generator=torch.Generator().manual_seed(seed),
            cond=(x, c),
            generate=[target_group],
            replacement=h.time_mode == "shared",
        ).x
        truth = test[1][:rows, j] if kind == "cat" else test[0][:rows, j]
        if kind == "cat":
            draws = out[1][:, j].cpu().numpy().reshape(rows, K)
            if self.schema["cardinalities"][j] == 2:
                p = (draws == 1).mean(1)
                auc = auroc(p, truth) if len(np.unique(truth)) == 2 else 0.5
                return {"impute_auc": auc, "impute_auc_se": hanley_mcneil_se(auc, truth)}
            counts = np.stack([(draws == k).sum(1) for k in range(self.schema["cardinalities"][j])], 1)
            return {"impute_accuracy": float((counts.argmax(1) == truth).mean())}
        values = dm.decode(out[0], out[1])[0][:, j].reshape(rows, K).mean(1)
        return {"impute_r2": float(r2_score(truth, values))}


def hanley_mcneil_se(auc: float, labels: np.ndarray) -> float:
    """Standard error of a ROC AUC (Hanley & McNeil 1982) from the numbers of positives and negatives."""
    n1, n0 = int((labels == 1).sum()), int((labels != 1).sum())
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (n1 - 1) * (q1 - auc**2) + (n0 - 1) * (q2 - auc**2)) / max(n1 * n0, 1)
    return float(math.sqrt(max(var, 0.0)))
