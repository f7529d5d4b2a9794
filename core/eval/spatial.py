"""Metrics of spatial gene-expression prediction (Stem, Zhu et al. ICLR 2025, Sec. 4).

Shapes: ``pred`` and ``true`` are (N spots, G genes) of log2(count + 1) values; sample sets are
(S samples, N spots, G genes).

* :func:`pcc_top_k`: PCC-k, the mean of the k largest per-gene Pearson correlations across spots,
  computed on point predictions (for Stem, the average of S samples per spot);
* :func:`mse`, :func:`mae`: on point predictions;
* :func:`relative_variation_distance`: RVD = mean_g (var_pred_g - var_true_g)^2 / var_true_g^2 on
  single samples (one draw per spot; the S-sample average shrinks variance as regression does);
* :func:`energy_distance`: per spot, between a predicted sample set and draws from the true
  conditional (synthetic tissue only).
"""

from __future__ import annotations

import torch


def _check_pair(pred: torch.Tensor, true: torch.Tensor) -> None:
    if pred.ndim != 2 or pred.shape != true.shape:
        raise ValueError(
            f"expected pred and true of one shape (N, G); got {tuple(pred.shape)} and {tuple(true.shape)}"
        )


def pearson_per_gene(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Pearson r between pred[:, g] and true[:, g] across spots, (G,) in float64.

    A gene whose prediction or truth is constant has an undefined r; it counts as 0 (no linear
    association is detected), so a model cannot gain PCC-k by predicting a constant.
    """
    _check_pair(pred, true)
    p = pred.double() - pred.double().mean(0)
    t = true.double() - true.double().mean(0)
    denom = p.norm(dim=0) * t.norm(dim=0)
    r = (p * t).sum(0) / denom.clamp_min(1e-300)
    return torch.where(denom > 1e-12, r, torch.zeros_like(r))


def pcc_top_k(pred: torch.Tensor, true: torch.Tensor, k: int) -> float:
    """PCC-k: mean of the k largest per-gene correlations (k capped at G, so PCC-200 on 128 genes
    is the mean over all 128)."""
    r = pearson_per_gene(pred, true)
    k = min(int(k), r.numel())
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return float(torch.topk(r, k).values.mean())


def mse(pred: torch.Tensor, true: torch.Tensor) -> float:
    _check_pair(pred, true)
    return float(((pred.double() - true.double()) ** 2).mean())


def mae(pred: torch.Tensor, true: torch.Tensor) -> float:
    _check_pair(pred, true)
    return float((pred.double() - true.double()).abs().mean())


def relative_variation_distance(pred: torch.Tensor, true: torch.Tensor) -> float:
    """RVD = mean over genes of (var_pred - var_true)^2 / var_true^2 (variances across spots,
    unbiased); genes with zero true variance are left out, since the ratio is undefined."""
    _check_pair(pred, true)
    v_pred, v_true = pred.double().var(0), true.double().var(0)
    keep = v_true > 1e-12
    if not bool(keep.any()):
        raise ValueError("RVD undefined: every gene is constant in the ground truth")
    return float((((v_pred - v_true) ** 2) / v_true**2)[keep].mean())


def _mean_pairwise_distance(x: torch.Tensor, y: torch.Tensor, exclude_diagonal: bool) -> torch.Tensor:
    """Mean Euclidean distance between the sets x (N, S, G) and y (N, T, G) per spot, (N,)."""
    d = torch.cdist(x, y)  # (N, S, T)
    if not exclude_diagonal:
        return d.mean(dim=(1, 2))
    s = x.shape[1]
    return d.sum(dim=(1, 2)) / (s * (s - 1))


def energy_distance(samples: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-spot energy distance D^2(P, Q) = 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Szekely & Rizzo).

    ``samples`` (S, N, G) from the model and ``reference`` (T, N, G) from the true conditional, S, T >= 2;
    returns (N,). The within-set terms exclude i = j (U-statistics), so the estimate is unbiased and
    can be slightly negative when P = Q. D^2 = 0 iff P = Q; a point mass at c against Q gives
    2 E|c - Y| - E|Y - Y'|.
    """
    if samples.ndim != 3 or reference.ndim != 3 or samples.shape[1:] != reference.shape[1:]:
        raise ValueError(
            f"expected samples (S, N, G) and reference (T, N, G); "
            f"got {tuple(samples.shape)}, {tuple(reference.shape)}"
        )
    if samples.shape[0] < 2 or reference.shape[0] < 2:
        raise ValueError("energy distance needs at least two samples in each set")
    x = samples.double().transpose(0, 1)
    y = reference.double().transpose(0, 1)
    return (
        2 * _mean_pairwise_distance(x, y, False)
        - _mean_pairwise_distance(x, x, True)
        - _mean_pairwise_distance(y, y, True)
    )


def point_prediction_metrics(
    pred: torch.Tensor, true: torch.Tensor, ks: tuple[int, ...] = (10, 50, 200)
) -> dict:
    """``pcc_<k>`` for each k, ``mse`` and ``mae`` of point predictions (N, G)."""
    out = {f"pcc_{k}": pcc_top_k(pred, true, k) for k in ks}
    out["mse"] = mse(pred, true)
    out["mae"] = mae(pred, true)
    return out
