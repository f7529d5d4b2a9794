"""Fidelity of synthetic mixed-type tables, and the two classical baselines.

A table is a pair (num (n, d_num) float, cat (n, d_cat) int codes in [0, K_j)), in original units.
:func:`tabular_metrics` returns, as in TabSyn / TabDiff / Diffuse Everything (Sec. 5):

* ``shape_error`` = 1 - mean over columns of (1 - KS statistic) for numeric columns and
  (1 - total variation) for categorical ones;
* ``trend_error`` = 1 - mean over column pairs of 1 - |rho_real - rho_syn| / 2 (numeric pairs,
  Pearson) or 1 - TV of the joint frequency table (categorical pairs; a numeric column paired with a
  categorical one is first cut at the real data's deciles);
* ``c2st_auc``: held-out ROC AUC of a logistic-regression detector of real vs synthetic rows
  (0.5 = indistinguishable). On one-hot and per-column features a linear detector is additive over
  columns and cannot see dependence at all (a column-wise resampler would pass it), so by default it
  also gets all pairwise products of features (``interactions=True``): still logistic regression;
* ``mle_synthetic`` / ``mle_real``: a gradient-boosted model of the target column trained on the
  synthetic (resp. real training) table and scored on held-out real rows (ROC AUC for a binary target,
  macro-F1 for a multi-class one, R^2 for a numeric one); ``mle_gap`` = real - synthetic;
* ``alpha_precision`` / ``beta_recall``: Alaa et al. (2022) Delta-precision-alpha and
  Delta-coverage-beta in the "naive" embedding (quantile-normalised numerics, one-hot categories),
  following synthcity's implementation.

Baselines: :func:`sample_marginals` (each column resampled independently: perfect shape, no
dependence) and :class:`GaussianCopula` (normal scores of every column's empirical CDF, categories as
intervals of the uniform, one correlation matrix).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import ks_2samp, norm
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, r2_score
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import PolynomialFeatures, QuantileTransformer, StandardScaler

from core.eval.auroc import auroc

Table = tuple[np.ndarray, np.ndarray]


def _check(table: Table, cardinalities: list[int], name: str) -> tuple[np.ndarray, np.ndarray]:
    num, cat = np.asarray(table[0], dtype=np.float64), np.asarray(table[1], dtype=np.int64)
    if num.ndim != 2 or cat.ndim != 2 or len(num) != len(cat):
        raise ValueError(f"{name}: expected num (n, d_num) and cat (n, d_cat), got {num.shape}, {cat.shape}")
    if cat.shape[1] != len(cardinalities):
        raise ValueError(f"{name}: {cat.shape[1]} categorical columns but {len(cardinalities)} cardinalities")
    if cat.size and (cat.min() < 0 or (cat >= np.asarray(cardinalities)).any()):
        raise ValueError(f"{name}: categorical codes outside [0, K_j)")
    return num, cat


def _freq(codes: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(codes, minlength=k) / max(len(codes), 1)


def shape_scores(real: Table, syn: Table, cardinalities: list[int]) -> np.ndarray:
    """Per-column similarity (d_num + d_cat,): 1 - KS (numeric), 1 - TV (categorical)."""
    out = [1.0 - ks_2samp(real[0][:, j], syn[0][:, j]).statistic for j in range(real[0].shape[1])]
    for j, k in enumerate(cardinalities):
        out.append(1.0 - 0.5 * np.abs(_freq(real[1][:, j], k) - _freq(syn[1][:, j], k)).sum())
    return np.asarray(out)


def _deciles(real_col: np.ndarray, col: np.ndarray) -> np.ndarray:
    edges = np.unique(np.quantile(real_col, np.linspace(0.1, 0.9, 9)))
    return np.searchsorted(edges, col, side="right")


def trend_scores(real: Table, syn: Table, cardinalities: list[int]) -> np.ndarray:
    """Per-pair similarity over all column pairs (numeric first, then categorical)."""
    d_num = real[0].shape[1]
    cols_r, cols_s, kinds = [], [], []
    for j in range(d_num):
        cols_r.append(real[0][:, j])
        cols_s.append(syn[0][:, j])
        kinds.append(("num", 11))
    for j, k in enumerate(cardinalities):
        cols_r.append(real[1][:, j])
        cols_s.append(syn[1][:, j])
        kinds.append(("cat", k))
    scores = []
    for a in range(len(kinds)):
        for b in range(a + 1, len(kinds)):
            if kinds[a][0] == "num" and kinds[b][0] == "num":
                rr = _pearson(cols_r[a], cols_r[b])
                rs = _pearson(cols_s[a], cols_s[b])
                scores.append(1.0 - abs(rr - rs) / 2.0)
                continue
            ra, sa = _as_codes(cols_r[a], cols_s[a], kinds[a][0], cols_r[a])
            rb, sb = _as_codes(cols_r[b], cols_s[b], kinds[b][0], cols_r[b])
            ka, kb = kinds[a][1], kinds[b][1]
            jr = _freq(ra * kb + rb, ka * kb)
            js = _freq(sa * kb + sb, ka * kb)
            scores.append(1.0 - 0.5 * np.abs(jr - js).sum())
    return np.asarray(scores)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def _as_codes(real_col, syn_col, kind, ref):
    if kind == "cat":
        return real_col.astype(np.int64), syn_col.astype(np.int64)
    return _deciles(ref, real_col), _deciles(ref, syn_col)


class Embedding:
    """Quantile-normal numerics (fit on real) and one-hot categories: rows -> (n, d) features."""

    def __init__(self, real: Table, cardinalities: list[int]) -> None:
        self.cardinalities = cardinalities
        self.qt = None
        if real[0].shape[1]:
            self.qt = QuantileTransformer(
                n_quantiles=min(1000, len(real[0])), output_distribution="normal", subsample=10**9
            ).fit(real[0])

    def __call__(self, table: Table) -> np.ndarray:
        parts = [self.qt.transform(table[0])] if self.qt is not None else []
        parts += [np.eye(k)[table[1][:, j]] for j, k in enumerate(self.cardinalities)]
        return np.concatenate(parts, 1) if parts else np.zeros((len(table[0]), 0))


def c2st_auc(
    real: Table,
    syn: Table,
    cardinalities: list[int],
    interactions: bool = True,
    folds: int = 3,
    seed: int = 0,
) -> float:
    """Cross-validated ROC AUC of logistic regression separating real from synthetic rows."""
    rng = np.random.default_rng(seed)
    n = min(len(real[0]), len(syn[0]))
    ir, is_ = rng.permutation(len(real[0]))[:n], rng.permutation(len(syn[0]))[:n]
    emb = Embedding(real, cardinalities)
    X = np.concatenate([emb((real[0][ir], real[1][ir])), emb((syn[0][is_], syn[1][is_]))])
    if interactions:
        X = PolynomialFeatures(2, include_bias=False).fit_transform(X)
    y = np.r_[np.zeros(n), np.ones(n)]
    aucs = []
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(X, y):
        scaler = StandardScaler().fit(X[tr])
        clf = LogisticRegression(C=0.1, max_iter=300).fit(scaler.transform(X[tr]), y[tr])
        aucs.append(auroc(clf.decision_function(scaler.transform(X[te])), y[te]))
    return float(np.mean(aucs))


def _xy(table: Table, target: tuple[str, int]):
    kind, j = target
    num, cat = table
    if kind == "cat":
        return np.concatenate([num, np.delete(cat, j, 1)], 1), cat[:, j], num.shape[1]
    return np.concatenate([np.delete(num, j, 1), cat], 1), num[:, j], num.shape[1] - 1


def mle_score(
    train: Table, test: Table, target: tuple[str, int], cardinalities: list[int], seed: int = 0
) -> float:
    """Gradient-boosted model of the target trained on ``train``, scored on real ``test`` rows."""
    Xtr, ytr, n_num = _xy(train, target)
    Xte, yte, _ = _xy(test, target)
    is_cat = np.arange(Xtr.shape[1]) >= n_num
    cat_mask = is_cat if is_cat.any() else None
    if target[0] == "num":
        model = HistGradientBoostingRegressor(max_iter=100, categorical_features=cat_mask, random_state=seed)
        return float(r2_score(yte, model.fit(Xtr, ytr).predict(Xte)))
    k = cardinalities[target[1]]
    if len(np.unique(ytr)) < 2:  # a synthetic table with one class predicts nothing
        return 0.5 if k == 2 else 0.0
    model = HistGradientBoostingClassifier(max_iter=100, categorical_features=cat_mask, random_state=seed)
    model.fit(Xtr, ytr)
    if k == 2:
        proba = model.predict_proba(Xte)[:, list(model.classes_).index(1)] if 1 in model.classes_ else 0 * yte
        return auroc(proba, yte)
    return float(f1_score(yte, model.predict(Xte), average="macro"))


def alpha_precision_beta_recall(
    real: Table, syn: Table, cardinalities: list[int], n_alphas: int = 30
) -> tuple[float, float]:
    """(Delta-precision-alpha, Delta-coverage-beta) of Alaa et al. 2022, naive embedding (synthcity).

    alpha-precision curve: fraction of synthetic points inside the real alpha-quantile ball around the
    real mean; beta-coverage curve: fraction of real points whose nearest synthetic point is closer
    than their nearest real neighbour and lies in the synthetic beta-quantile ball. Each score is
    1 - (area between the curve and the diagonal) / (area under the diagonal); 1 is perfect."""
    emb = Embedding(real, cardinalities)
    X, Y = emb(real), emb(syn)
    alphas = np.linspace(0, 1, n_alphas)
    center = X.mean(0)
    radii = np.quantile(np.linalg.norm(X - center, axis=1), alphas)
    syn_center = Y.mean(0)
    syn_to_center = np.linalg.norm(Y - center, axis=1)
    real_to_real = NearestNeighbors(n_neighbors=2).fit(X).kneighbors(X)[0][:, 1]
    real_to_syn, idx = NearestNeighbors(n_neighbors=1).fit(Y).kneighbors(X)
    real_to_syn, idx = real_to_syn[:, 0], idx[:, 0]
    closest_d = np.linalg.norm(Y[idx] - syn_center, axis=1)
    closest_radii = np.quantile(closest_d, alphas)
    prec = np.array([np.mean(syn_to_center <= r) for r in radii])
    cov = np.array([np.mean((real_to_syn <= real_to_real) & (closest_d <= r)) for r in closest_radii])
    return (
        float(1 - np.abs(alphas - prec).sum() / alphas.sum()),
        float(1 - np.abs(alphas - cov).sum() / alphas.sum()),
    )


def tabular_metrics(
    real: Table,
    syn: Table,
    test: Table,
    cardinalities: list[int],
    target: tuple[str, int],
    seed: int = 0,
    interactions: bool = True,
) -> dict[str, float]:
    """All fidelity metrics of ``syn`` against the real training table ``real`` and held-out ``test``."""
    real = _check(real, cardinalities, "real table")
    syn = _check(syn, cardinalities, "synthetic table")
    test = _check(test, cardinalities, "test table")
    shape = shape_scores(real, syn, cardinalities)
    trend = trend_scores(real, syn, cardinalities)
    mle_syn = mle_score(syn, test, target, cardinalities, seed)
    mle_real = mle_score(real, test, target, cardinalities, seed)
    alpha, beta = alpha_precision_beta_recall(real, syn, cardinalities)
    return {
        "shape_error": float(1 - shape.mean()),
        "trend_error": float(1 - trend.mean()) if len(trend) else 0.0,
        "c2st_auc": c2st_auc(real, syn, cardinalities, interactions, seed=seed),
        "mle_synthetic": mle_syn,
        "mle_real": mle_real,
        "mle_gap": mle_real - mle_syn,
        "alpha_precision": alpha,
        "beta_recall": beta,
    }


def sample_marginals(table: Table, n: int, rng: np.random.Generator) -> Table:
    """Every column resampled independently from its empirical distribution."""
    num, cat = table
    pick = lambda col: col[rng.integers(0, len(col), n)]  # noqa: E731
    return (
        np.stack([pick(num[:, j]) for j in range(num.shape[1])], 1).reshape(n, num.shape[1]),
        np.stack([pick(cat[:, j]) for j in range(cat.shape[1])], 1).reshape(n, cat.shape[1]),
    )


class GaussianCopula:
    """Gaussian copula over mixed columns (as SDV's): numeric columns through their empirical CDF
    (mid-ranks), a category j through a uniform draw inside its interval [F(j-1), F(j)) of the
    frequency CDF; normal scores z = Phi^{-1}(u) get one correlation matrix; sampling inverts each
    column's CDF (empirical quantiles for numerics, interval lookup for categories)."""

    def __init__(self, table: Table, cardinalities: list[int], rng: np.random.Generator) -> None:
        num, cat = table
        self.cardinalities = cardinalities
        self.sorted_num = np.sort(num, axis=0)
        n = len(num)
        u_cols = []
        for j in range(num.shape[1]):
            ranks = np.argsort(np.argsort(num[:, j], kind="stable"), kind="stable")
            u_cols.append((ranks + 0.5) / n)
        self.cdfs = []
        for j, k in enumerate(cardinalities):
            cdf = np.concatenate([[0.0], np.cumsum(_freq(cat[:, j], k))])
            self.cdfs.append(cdf)
            lo, hi = cdf[cat[:, j]], cdf[cat[:, j] + 1]
            u_cols.append(lo + (hi - lo) * rng.uniform(size=n))
        z = norm.ppf(np.clip(np.stack(u_cols, 1), 1e-6, 1 - 1e-6))
        self.corr = np.corrcoef(z, rowvar=False) if z.shape[1] > 1 else np.ones((1, 1))

    def sample(self, n: int, rng: np.random.Generator) -> Table:
        d = self.corr.shape[0]
        z = rng.multivariate_normal(np.zeros(d), self.corr, size=n, method="eigh")
        u = norm.cdf(z)
        d_num = self.sorted_num.shape[1]
        num = np.stack(
            [np.quantile(self.sorted_num[:, j], u[:, j], method="inverted_cdf") for j in range(d_num)], 1
        ).reshape(n, d_num)
        cat = np.stack(
            [
                np.clip(np.searchsorted(cdf, u[:, d_num + j], side="right") - 1, 0, k - 1)
                for j, (cdf, k) in enumerate(zip(self.cdfs, self.cardinalities))
            ],
            1,
        )
        return num, cat.reshape(n, len(self.cardinalities))
