"""GenEval on Shapes for any module that generates images from prompts (``generate(prompts, ...)``
returning (B, 3, H, W) in [0, 1]): the exact evaluator of core.tasks.shapes, GenEval's six categories,
a table of prompts / images / verdicts, a captioned sample grid, and an FID-style distance in the
in-suite shapes feature net (so reward hacking -- images that pass the evaluator but leave the data
distribution -- shows up next to the score).

* every ``every_n_val`` validations: ``prompts_per_category`` prompts per category, K images each,
  at the module's default guidance -> ``geneval/overall``, ``geneval/<category>``;
* at test end, the whole 553-prompt set (or ``test_prompts_per_category``) at each guidance w in
  ``test_guidances`` -> ``test/geneval_w{w}/<category>`` with ``_se`` (binomial standard errors),
  ``overall``, ``heldout`` / ``seen`` (prompts with / without held-out combinations), ``reward``
  (mean partial credit) and ``test/fid_w{w}``; plus ``test/geneval/floor`` (ground-truth renders
  judged against other prompts: a perfect text-ignoring generator) and ``test/geneval/ground_truth``.
  Every test image set is judged as 8-bit images and saved with its prompts and verdicts to
  ``<run>/geneval/test_geneval_w{w}.npz`` (``core.tasks.shapes.judged``: ``python -m
  core.tasks.shapes.judged RUN_DIR`` recomputes the figures); the ground truth is regenerated from ``seed``.

Cost: (prompts x images per prompt) generations at each measured validation; at test, as many per
guidance w, plus the ground-truth renders and a small feature net for the FID (``fid_feature_steps``
optimiser steps). Generation draws from the callback's own generator (``seed``) and everything runs
under callbacks.isolation.measuring (the feature net's training seeds the global RNG; it is restored).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from callbacks.isolation import measuring
from core.eval.features import FeatureNet, extract_features, train_feature_net
from core.eval.frechet import frechet_distance
from core.tasks.shapes import (
    TAGS,
    evaluate,
    geneval_score,
    ground_truth_images,
    load_eval_prompts,
    subset_per_category,
)
from core.tasks.shapes.judged import judge_and_save, summarise  # noqa: F401 (summarise: public here)
from modules.media import log_images, log_measurement, log_table


class GenEvalCallback(L.Callback):
    def __init__(
        self,
        every_n_val: int = 1,
        prompts_per_category: int = 16,
        images_per_prompt: int = 1,
        test_prompts_per_category: int = 0,
        test_images_per_prompt: int = 1,
        test_guidances: list[float] = (1.0, 3.0),
        num_steps: int | None = None,
        sampler: str | None = None,
        fid: bool = True,
        fid_feature_steps: int = 300,
        table_rows: int = 48,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if images_per_prompt < 1 or test_images_per_prompt < 1:
            raise ValueError("GenEvalCallback: images_per_prompt and test_images_per_prompt must be >= 1")
        self.every_n_val, self.k, self.k_test = every_n_val, images_per_prompt, test_images_per_prompt
        self.prompts_per_category, self.test_prompts_per_category = (
            prompts_per_category,
            test_prompts_per_category,
        )
        self.test_guidances = [float(g) for g in test_guidances]
        self.num_steps, self.sampler, self.fid, self.fid_steps = num_steps, sampler, fid, fid_feature_steps
        self.table_rows, self.seed = table_rows, seed
        self.n_val = 0
        self.prompts = load_eval_prompts()

    # ---- hooks --------------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.every_n_val <= 0:
            return
        self.n_val += 1
        if self.n_val % self.every_n_val or not trainer.is_global_zero:
            return
        prompts = subset_per_category(self.prompts, self.prompts_per_category)
        with measuring(pl_module):
            meta, images = self.generate(pl_module, prompts, self.k, guidance=None)
        scores = geneval_score(images, meta)
        log_measurement(trainer, {f"geneval/{tag}": scores[tag] for tag in [*TAGS, "overall"] if tag in scores})
        self.log_media(trainer, "geneval", images, meta)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        with measuring(pl_module):
            metrics = self.test_metrics(trainer, pl_module)
        for name, value in metrics.items():
            pl_module.log(name, value, rank_zero_only=True)

    def test_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        prompts = subset_per_category(self.prompts, self.test_prompts_per_category)
        truth = ground_truth_images(prompts, seed=self.seed, size=image_size(pl_module))
        metrics = {
            "test/geneval/ground_truth": geneval_score(truth, prompts)["overall"],
            "test/geneval/floor": text_ignoring_floor(truth, prompts, self.seed),
        }
        feature_net = self.feature_net(trainer) if self.fid else None
        for w in self.test_guidances:
            meta, images = self.generate(pl_module, prompts, self.k_test, guidance=w)
            key = f"test/geneval_w{w:g}"
            saved = Path(trainer.default_root_dir) / "geneval" / f"{key.replace('/', '_')}.npz"
            metrics.update(judge_and_save(saved if trainer.is_global_zero else None, key, images, meta))
            if feature_net is not None:
                metrics[f"test/fid_w{w:g}"] = fid(feature_net, truth, images)
            self.log_media(trainer, key, images, meta)  # media under their scalars' prefix
        return metrics

    def state_dict(self) -> dict:
        return {"n_val": self.n_val}

    def load_state_dict(self, state: dict) -> None:
        self.n_val = int(state.get("n_val", 0))

    # ---- pieces -------------------------------------------------------------------------------
    def generate(self, pl_module, prompts: list[dict], k: int, guidance: float | None):
        if not hasattr(pl_module, "generate"):
            raise TypeError(
                f"GenEvalCallback needs a module with generate(prompts, ...); "
                f"{type(pl_module).__name__} has none"
            )
        meta = [p for p in prompts for _ in range(k)]
        gen = torch.Generator().manual_seed(self.seed)
        images = pl_module.generate(meta, steps=self.num_steps, solver=self.sampler, guidance=guidance, generator=gen)
        return meta, images.detach().float().cpu()

    def feature_net(self, trainer: L.Trainer) -> FeatureNet | None:
        dm = trainer.datamodule
        ds = getattr(dm, "train_set", None) if dm is not None else None
        if ds is None or "label" not in getattr(ds, "extras", {}):
            return None
        with torch.inference_mode(False), torch.enable_grad():  # test hooks run under inference mode
            return train_feature_net(
                ds.x.clone(), ds.extras["label"].clone(), steps=self.fid_steps, seed=self.seed
            )

    def log_media(self, trainer: L.Trainer, key: str, images: torch.Tensor, meta: list[dict]) -> None:
        ev = evaluate(images, meta)
        n = min(self.table_rows, len(meta))
        rows = [
            [meta[i]["tag"], meta[i]["prompt"], images[i] * 2 - 1, ev.verdict(i)]
            for i in range(0, len(meta), max(1, len(meta) // n))
        ]
        log_table(trainer, f"{key}/table", ["category", "prompt", "image", "verdict"], rows[:n])
        pick = list(range(0, len(meta), max(1, len(meta) // 32)))[:32]
        log_images(
            trainer,
            f"{key}/samples",
            images[pick] * 2 - 1,
            [f"{meta[i]['prompt']} [{'pass' if ev.passed[i] else 'fail'}]" for i in pick],
        )


def image_size(pl_module) -> int:
    """The side of the module's images: its ``image_size`` attribute or hyperparameter (32 if neither)."""
    size = getattr(pl_module, "image_size", None)
    hparams = getattr(pl_module, "hparams", {})
    return int(size if size is not None else hparams.get("image_size", 32))


def text_ignoring_floor(truth: torch.Tensor, prompts: list[dict], seed: int = 0, repeats: int = 5) -> float:
    """GenEval of ground-truth renders judged against a random permutation of the prompts (mean
    over ``repeats`` permutations): what a perfect generator that ignores the text scores."""
    gen = torch.Generator().manual_seed(seed)
    scores = [
        geneval_score(truth[torch.randperm(len(prompts), generator=gen)], prompts)["overall"]
        for _ in range(repeats)
    ]
    return float(sum(scores) / len(scores))


def fid(net: FeatureNet, real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID (core.eval.frechet) in the shapes feature net's features; images (B, 3, H, W) in [0, 1]."""
    net = net.eval()
    return frechet_distance(extract_features(net, real * 2 - 1), extract_features(net, fake * 2 - 1))
