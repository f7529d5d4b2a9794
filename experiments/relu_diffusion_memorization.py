"""``relu_diffusion_memorization``: the ReLU diffusion model at a small, an intermediate and a large n_train
(arXiv 2512.20963; docs/methods/relu_memorization.md). Variants ``small``, ``mid``, ``large`` (module.relu_diffusion
measures each at test time).

Claims:

* ``memorizes_small_n``: NN-ratio memorization rate (|x - NN1| / |x - NN2| < 1/3) > 0.5 at the small n and
  < 0.1 at the large n;
* ``detection_auroc``: the representation-spread detector separates memorised from novel generations of
  the ``mid`` model with AUROC >= 0.8 (TPR@1%FPR beside it); the easier two-model AUROC (all generations of
  ``small`` vs all of ``large``) is reported in the value;
* ``steering_moves_class``: on the ``large`` model, some alpha raises the target-class rate by >= 0.2 over
  alpha = 0 while the FID-style distance stays within 2x of the unsteered samples'.
"""

from __future__ import annotations

import torch

from core.eval.memorization import detection_auroc
from experiments.dae_memorization import n_train_of
from suite.results import Claim, VariantResult


def _variant(variants: dict[str, VariantResult], role: str) -> VariantResult | None:
    return next((v for k, v in variants.items() if k.split("__")[0] == role), None)


def _n(cfg, role: str, var: VariantResult) -> int | None:
    """n_train of a study variant: its dotted override in the config, else from the variant itself."""
    over = (cfg.get("study") or {}).get("variants", {}).get(role, {}) or {}
    return int(over["data.n_train"]) if "data.n_train" in over else n_train_of(var)


def _detection(var: VariantResult) -> dict | None:
    path = var.dir / "detection.pt"
    return torch.load(path, weights_only=True) if path.exists() else None


def claims(variants: dict[str, VariantResult], cfg) -> dict[str, Claim]:
    out: dict[str, Claim] = {}
    small, mid, large = (_variant(variants, r) for r in ("small", "mid", "large"))
    if small is None or large is None:
        out["memorizes_small_n"] = Claim.uncomputable("needs the small and large variants")
    else:
        r_s, r_l = small.metrics["test/memorization_rate"], large.metrics["test/memorization_rate"]
        out["memorizes_small_n"] = Claim(
            r_s > 0.5 and r_l < 0.1,
            {"small": r_s, "large": r_l},
            {"small": "> 0.5", "large": "< 0.1"},
            f"fraction of {cfg.module.eval_samples} generations with |x - NN1|/|x - NN2| < 1/3 against the "
            f"training set (exact search), n_train small={_n(cfg, 'small', small)}, "
            f"large={_n(cfg, 'large', large)}",
        )

    two_model = None
    if small is not None and large is not None:
        a, b = _detection(small), _detection(large)
        if a is not None and b is not None:
            scores = torch.cat([a["scores"], b["scores"]])
            labels = torch.cat([torch.ones(len(a["scores"])), torch.zeros(len(b["scores"]))]).bool()
            two_model = detection_auroc(scores, labels)
    if mid is None or "test/detection_auroc" not in mid.metrics:
        why = (
            "needs the mid variant"
            if mid is None
            else "the mid model's generations are all or none memorised"
        )
        out["detection_auroc"] = Claim.uncomputable(why + f"; two-model AUROC = {two_model}")
    else:
        auroc, tpr = mid.metrics["test/detection_auroc"], mid.metrics["test/detection_tpr_at_1fpr"]
        out["detection_auroc"] = Claim(
            auroc >= 0.8,
            {"one_model_auroc": auroc, "tpr_at_1fpr": tpr, "two_model_auroc": two_model},
            ">= 0.8",
            f"score = coefficient of variation across units of h(x + {cfg.module.detect_sigma} eps) of each "
            f"generation (higher = memorised); one model (n_train={_n(cfg, 'mid', mid)}, memorization rate "
            f"{mid.metrics['test/memorization_rate']:.3f} of {cfg.module.eval_samples}), labels from the NN "
            "ratio; "
            "two-model: all generations of the small-n model vs all of the large-n model",
        )

    m = large.metrics if large is not None else {}
    alphas = sorted(float(k.split("steer_rate_a")[1]) for k in m if k.startswith("test/steer_rate_a"))
    if not alphas or 0.0 not in alphas:
        out["steering_moves_class"] = Claim.uncomputable(
            "needs steering at alpha = 0 and others on the large variant"
        )
    else:
        base_rate, base_fd = m["test/steer_rate_a0"], m["test/steer_fd_a0"]
        ok = [
            a
            for a in alphas
            if a != 0
            and m[f"test/steer_rate_a{a:g}"] - base_rate >= 0.2
            and m[f"test/steer_fd_a{a:g}"] <= 2 * base_fd
        ]
        table = {
            f"{a:g}": {"rate": m[f"test/steer_rate_a{a:g}"], "fd": m[f"test/steer_fd_a{a:g}"]} for a in alphas
        }
        out["steering_moves_class"] = Claim(
            bool(ok),
            table,
            {"rate_gain": ">= 0.2", "fd": f"<= {2 * base_fd:.4g} (2x alpha=0)"},
            f"target digit {cfg.module.steering_target}; v = mean relu(W(x - mu)) of its training images, "
            f"added x alpha while sigma <= {cfg.module.steering_sigma_start}; {cfg.module.steering_samples} "
            "generations per alpha; class rate and Frechet distance to held-out digits from the in-suite "
            f"MNIST FeatureNet; alphas that qualify: {ok}",
        )
    return out
