"""The suite's one Frechet distance (FID's formula) between two feature sets.

Fitting a Gaussian to each set, N(mu_a, S_a) and N(mu_b, S_b), the squared 2-Wasserstein distance
between them is |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2}); FID is this distance in the
features of a fixed network (Inception there, the in-suite FeatureNets of core.eval.features here).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2}) on (n, k) feature sets, in float64
    (unbiased covariances; the real part of scipy's matrix square root)."""
    a, b = feats_a.double().cpu().numpy(), feats_b.double().cpu().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2.0 * covmean))
