"""Reward-hacking watch and compute curves for RL fine-tuning (modules/diffusion_rl.py).

Every ``every_n_steps`` RL steps (and at step 0, where the policy is still the base model) it
generates images for held-out evaluation prompts (the first ``prompts_per_category`` of each
GenEval category of core/tasks/shapes/eval_prompts.jsonl, never used as training prompts; the same
initial noise every time, so successive evaluations are paired) and records

* the strict GenEval (mean over categories of the per-image pass rate, with its binomial SE),
* the FID-style distance in the in-suite shapes feature net to ground-truth renders of the same
  prompts, and its ratio to the base model's (step 0) value,
* the training NFE (``pl_module.nfe.items``) and training wall time at that point.

Training stops early when the distance exceeds ``fid_factor`` x the base's (reward hacking: images
that satisfy the evaluator but leave the data distribution). At test time the whole evaluation
set (or ``test_prompts_per_category``) is scored for the policy and the base model:
``test/geneval`` (+ ``_se``, per category), ``test/base_geneval``, ``test/fid``, ``test/base_fid``,
``test/fid_ratio``, ``test/nfe``, ``test/train_wall_s`` and ``test/nfe_to_base_plus_<gain>`` (the
first watched NFE at which GenEval >= base + ``target_gain``; NaN = not reached). The curves go to
``watch.csv`` in the run folder and a figure of GenEval against NFE and against wall time.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L
import torch

from callbacks.geneval import fid
from core.eval.features import FeatureNet, train_feature_net
from core.tasks.shapes import (
    TAGS,
    evaluate,
    geneval_score,
    ground_truth_images,
    load_eval_prompts,
    subset_per_category,
)
from modules.media import log_figure, log_measurement

_CACHE: dict[tuple, object] = {}  # feature nets and base-model scores, shared by a study's variants


def fid_drift_exceeded(fid_value: float, base_fid: float, factor: float) -> bool:
    """The early-stop rule: the distance grew beyond ``factor`` x the base model's (factor <= 0: never)."""
    return factor > 0 and math.isfinite(fid_value) and fid_value > factor * base_fid


def nfe_to_target(rows: list[dict], base_geneval: float, gain: float) -> float:
    """NFE of the first watched row with GenEval >= base + gain; NaN when never reached."""
    for row in rows:
        if row["geneval"] >= base_geneval + gain - 1e-12:
            return float(row["nfe"])
    return float("nan")


class RLWatchCallback(L.Callback):
    def __init__(
        self,
        every_n_steps: int = 5,
        prompts_per_category: int = 8,
        images_per_prompt: int = 2,
        test_prompts_per_category: int = 0,
        test_images_per_prompt: int = 1,
        fid_factor: float = 2.0,
        fid_feature_steps: int = 300,
        target_gain: float = 0.2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if every_n_steps < 1 or images_per_prompt < 1 or test_images_per_prompt < 1:
            raise ValueError("RLWatchCallback: every_n_steps, images_per_prompt, test_images_per_prompt must be >= 1")
        self.every, self.k, self.k_test = every_n_steps, images_per_prompt, test_images_per_prompt
        self.per_cat, self.test_per_cat = prompts_per_category, test_prompts_per_category
        self.fid_factor, self.fid_steps, self.gain, self.seed = fid_factor, fid_feature_steps, target_gain, seed
        prompts = load_eval_prompts()
        self.watch_meta = [p for p in subset_per_category(prompts, prompts_per_category) for _ in range(self.k)]
        self.test_meta = [p for p in subset_per_category(prompts, test_prompts_per_category)
                          for _ in range(self.k_test)]
        self.rows: list[dict] = []
        self.stopped_step: int | None = None
        self.net: FeatureNet | None = None

    # ---- hooks --------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self.net = self.feature_net(trainer)
        if not self.rows:  # step 0: the policy is the base model
            self.watch(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = int(pl_module.rl_step)
        last = trainer.should_stop or (trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps)
        if step == self.rows[-1]["step"] or not (step % self.every == 0 or last):
            return
        row = self.watch(trainer, pl_module)
        base = self.rows[0]
        watched = {f"watch/{key}": row[key] for key in ("geneval", "geneval_se", "reward", "fid", "fid_ratio", "nfe",
                                                         "wall_s")}
        log_measurement(trainer, {**watched, "watch/base_geneval": base["geneval"]})
        if fid_drift_exceeded(row["fid"], base["fid"], self.fid_factor):
            self.stopped_step = step
            trainer.should_stop = True
            print(f"[rl_watch] step {step}: FID-style distance {row['fid']:.3g} > {self.fid_factor} x base "
                  f"{base['fid']:.3g}; stopping (reward hacking)")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        net = self.net or self.feature_net(trainer)
        size = int(pl_module.image_size)
        real = ground_truth_images(self.test_meta, seed=self.seed, size=size)
        images = self.generate(pl_module, self.test_meta, "policy")
        key = ("base", pl_module.hparams.base_ckpt, Path(pl_module.hparams.base_ckpt).stat().st_mtime,
               len(self.test_meta), pl_module.guidance, pl_module.hparams.rollout_steps, self.seed, id(net))
        if key not in _CACHE:
            base_images = self.generate(pl_module, self.test_meta, "reference")
            _CACHE[key] = (geneval_score(base_images, self.test_meta), fid(net, real, base_images))
        base_scores, base_fid = _CACHE[key]
        scores = geneval_score(images, self.test_meta)
        out = {f"test/geneval_{t}": scores[t] for t in TAGS if t in scores}
        dist = fid(net, real, images)
        out.update({
            "test/geneval": scores["overall"], "test/geneval_se": scores["overall_se"],
            "test/base_geneval": base_scores["overall"], "test/base_geneval_se": base_scores["overall_se"],
            "test/reward": float(evaluate(images, self.test_meta, strict=False).reward.mean()),
            "test/fid": dist, "test/base_fid": base_fid, "test/fid_ratio": dist / base_fid,
            "test/nfe": float(pl_module.nfe.items), "test/nfe_calls": float(pl_module.nfe.calls),
            "test/train_wall_s": float(pl_module.train_wall_s), "test/rl_steps": float(pl_module.rl_step),
            "test/early_stopped": float(self.stopped_step is not None),
        })
        if self.rows:
            out[f"test/nfe_to_base_plus_{self.gain:g}"] = nfe_to_target(self.rows, self.rows[0]["geneval"], self.gain)
            out["test/watch_max_fid_ratio"] = max(r["fid_ratio"] for r in self.rows)
        for name, value in out.items():
            pl_module.log(name, value, rank_zero_only=True)
        self.write(trainer)

    def state_dict(self) -> dict:
        return {"rows": self.rows, "stopped_step": self.stopped_step}

    def load_state_dict(self, state: dict) -> None:
        self.rows, self.stopped_step = list(state.get("rows", [])), state.get("stopped_step")

    # ---- pieces -------------------------------------------------------------------------------
    def feature_net(self, trainer: L.Trainer) -> FeatureNet:
        ds = getattr(trainer.datamodule, "train_set", None) if trainer.datamodule is not None else None
        if ds is None or "label" not in getattr(ds, "extras", {}):
            raise ValueError("RLWatchCallback: the datamodule must be ShapesDataModule (real images with labels)")
        key = ("features", tuple(ds.x.shape), float(ds.x[:64].sum()), self.fid_steps, self.seed)
        if key not in _CACHE:
            with torch.inference_mode(False), torch.enable_grad():
                _CACHE[key] = train_feature_net(ds.x.clone(), ds.extras["label"].clone(), steps=self.fid_steps,
                                                seed=self.seed)
        return _CACHE[key]

    def generate(self, pl_module, meta: list[dict], net: str) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        return pl_module.generate(meta, generator=gen, net=net).detach().float().cpu()

    def watch(self, trainer: L.Trainer, pl_module) -> dict:
        images = self.generate(pl_module, self.watch_meta, "policy")
        real = _CACHE.setdefault(("real", len(self.watch_meta), self.per_cat, self.seed, int(pl_module.image_size)),
                                 ground_truth_images(self.watch_meta, seed=self.seed, size=int(pl_module.image_size)))
        scores = geneval_score(images, self.watch_meta)
        dist = fid(self.net, real, images)
        base_fid = self.rows[0]["fid"] if self.rows else dist
        reward = float(evaluate(images, self.watch_meta, strict=False).reward.mean())
        row = {"step": int(pl_module.rl_step), "nfe": float(pl_module.nfe.items),
               "nfe_calls": float(pl_module.nfe.calls), "wall_s": float(pl_module.train_wall_s),
               "geneval": scores["overall"], "geneval_se": scores["overall_se"], "reward": reward,
               "fid": dist, "fid_ratio": dist / base_fid}
        self.rows.append(row)
        print(f"[rl_watch] step {row['step']} nfe {row['nfe']:.0f} wall {row['wall_s']:.0f}s: GenEval "
              f"{row['geneval']:.3f}+-{row['geneval_se']:.3f} reward {reward:.3f} FID ratio {row['fid_ratio']:.2f}")
        return row

    def write(self, trainer: L.Trainer) -> None:
        if not self.rows:
            return
        folder = Path(trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "watch.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, list(self.rows[0]))
            writer.writeheader()
            writer.writerows(self.rows)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        base = self.rows[0]["geneval"]
        for ax, x_key, label in ((axes[0], "nfe", "training NFE (image-rows through the network)"),
                                 (axes[1], "wall_s", "training wall time (s)")):
            xs = [r[x_key] for r in self.rows]
            ax.errorbar(xs, [r["geneval"] for r in self.rows], [r["geneval_se"] for r in self.rows], marker="o")
            ax.axhline(base, color="gray", ls=":", label="base")
            ax.axhline(base + self.gain, color="gray", ls="--", label=f"base + {self.gain:g}")
            ax.set(xlabel=label, ylabel="strict GenEval (held-out prompts)")
            ax.legend()
        axes[2].plot([r["nfe"] for r in self.rows], [r["fid_ratio"] for r in self.rows], marker="o")
        axes[2].axhline(self.fid_factor, color="red", ls="--", label="early-stop factor")
        axes[2].set(xlabel="training NFE", ylabel="FID-style distance / base")
        axes[2].legend()
        fig.tight_layout()
        log_figure(trainer, "watch/geneval_vs_compute", fig)
