"""Stable aggregation of importance log-weights into normalizing-constant estimates.

An estimator returns log-weights ``log_w`` of shape (R, N): R independent repeats of N chains.
Each repeat's estimate is Z_hat_r = (1/N) sum_n e^{log_w[r, n]} (unbiased for Z when each weight
is), computed as a log-mean-exp so that weights of e^{+-700} neither overflow nor vanish.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def log_mean_exp(log_w: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log((1/N) sum_n exp(log_w_n)) along ``dim`` (size N); -inf entries are zero weights."""
    n = log_w.shape[dim]
    if n == 0:
        raise ValueError("log_mean_exp: empty dimension")
    return torch.logsumexp(log_w, dim=dim) - math.log(n)


def effective_sample_size(log_w: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Kish ESS (sum w)^2 / sum w^2 along ``dim``, from log-weights."""
    return torch.exp(2 * torch.logsumexp(log_w, dim=dim) - torch.logsumexp(2 * log_w, dim=dim))


@dataclass
class ZSummary:
    """Summary over R repeats of log Z_hat_r against the true log Z (when known).

    ``ratio_mean``/``ratio_std``: mean and std over repeats of Z_hat/Z; ``ratio_ci``: normal-theory
    95% interval of that mean (mean +- 1.96 std / sqrt(R)); ``abs_log_error``: mean over repeats of
    |log Z_hat_r - log Z|; ``log_z_mean``: mean over repeats of log Z_hat_r; ``ess_fraction``: mean
    Kish ESS / N.
    """

    log_z_hat: torch.Tensor  # (R,)
    log_z_mean: float
    log_z_std: float
    ratio_mean: float
    ratio_std: float
    ratio_ci: tuple[float, float]
    abs_log_error: float
    ess_fraction: float
    repeats: int

    def as_metrics(self, prefix: str) -> dict[str, float]:
        out = {
            f"{prefix}/log_z_mean": self.log_z_mean,
            f"{prefix}/log_z_std": self.log_z_std,
            f"{prefix}/ess_fraction": self.ess_fraction,
        }
        if not math.isnan(self.ratio_mean):
            out.update(
                {
                    f"{prefix}/z_ratio_mean": self.ratio_mean,
                    f"{prefix}/z_ratio_std": self.ratio_std,
                    f"{prefix}/z_ratio_ci_low": self.ratio_ci[0],
                    f"{prefix}/z_ratio_ci_high": self.ratio_ci[1],
                    f"{prefix}/abs_log_z_error": self.abs_log_error,
                }
            )
        return {k: float(v) for k, v in out.items() if math.isfinite(float(v))}


def summarize_log_weights(log_w: torch.Tensor, log_z_true: float | None = None) -> ZSummary:
    """Aggregate (R, N) log-weights into per-repeat log Z_hat and their spread (see ZSummary)."""
    if log_w.ndim != 2:
        raise ValueError(
            f"summarize_log_weights: expected log-weights of shape (R, N), got {tuple(log_w.shape)}"
        )
    log_w = log_w.double()
    log_z_hat = log_mean_exp(log_w, dim=1)
    r = log_w.shape[0]
    std = float(log_z_hat.std()) if r > 1 else float("nan")
    nan = float("nan")
    ratio_mean = ratio_std = abs_err = nan
    ci = (nan, nan)
    if log_z_true is not None:
        ratio = torch.exp(log_z_hat - log_z_true)
        ratio_mean = float(ratio.mean())
        ratio_std = float(ratio.std()) if r > 1 else nan
        half = 1.96 * ratio_std / math.sqrt(r) if r > 1 else nan
        ci = (ratio_mean - half, ratio_mean + half)
        abs_err = float((log_z_hat - log_z_true).abs().mean())
    ess = float((effective_sample_size(log_w, dim=1) / log_w.shape[1]).mean())
    return ZSummary(log_z_hat, float(log_z_hat.mean()), std, ratio_mean, ratio_std, ci, abs_err, ess, r)
