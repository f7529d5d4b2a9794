"""Representation and memorization measures (Zhang, Li, et al., arXiv 2512.20963; docs/methods/relu_memorization.md).

* Spread of a hidden activation vector h (B, H): ``activation_std`` (std across units),
  ``activation_cv`` (std / mean across units, its scale-free form) and ``activation_l4_l2``
  (|h|_4 / |h|_2, in [H^{-1/4}, 1]: H^{-1/4} for a uniform vector, 1 for a single active unit).
  "Spiky" (memorising) representations have a large spread,
  "balanced" (generalising) ones a small spread.
* ``active_rows`` / ``row_max_cosine``: the encoder rows that fire on the training set and the max
  cosine of each to the mean-centred training images (the shared -1 background of MNIST would
  otherwise make every row look like every image). Memorised rows are raw samples: cosine ~1.
* ``nearest_neighbor_ratio``: exact chunked search of the nearest and second-nearest training points;
  a sample is memorised when |x - NN1| / |x - NN2| < 1/3 (Carlini et al. 2023's criterion, used by the paper).
* ``detection_auroc`` / ``tpr_at_fpr``: how well a score separates memorised from novel generations.
"""

from __future__ import annotations

import torch

from core.eval.auroc import auroc

MEMORIZATION_THRESHOLD = 1.0 / 3.0


def _check_matrix(name: str, x: torch.Tensor) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (rows, features), got {tuple(x.shape)}")


def activation_std(h: torch.Tensor) -> torch.Tensor:
    """Std across units of each activation vector: h (B, H) -> (B,). Zero for a uniform vector."""
    _check_matrix("h", h)
    return h.float().std(dim=1, unbiased=False)


def activation_cv(h: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Std across units divided by the mean across units (coefficient of variation): h (B, H) -> (B,).

    The scale-free form of "std across units": two models' activations differ in scale, the shape of
    the vector is what tells spiky from balanced. 0 for a uniform vector (the minimum), sqrt(H - 1)
    for a one-hot vector (the maximum for h >= 0); k equal active units give sqrt(H/k - 1), so it
    measures how few units carry the representation even when a memorised sample is stored in several
    redundant rows (where |h|_4/|h|_2 = k^{-1/4} hardly moves). An all-zero row gives 0."""
    _check_matrix("h", h)
    h = h.float()
    mean = h.mean(1)
    return torch.where(
        mean.abs() > eps, h.std(1, unbiased=False) / mean.abs().clamp_min(eps), torch.zeros_like(mean)
    )


def activation_l4_l2(h: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Scale-free spread |h|_4 / |h|_2 per row: h (B, H) -> (B,), in [H^{-1/4}, 1].

    By the power-mean inequality the minimum H^{-1/4} is reached exactly by uniform |h| (balanced) and
    the maximum 1 by a one-hot vector (spiky). An all-zero row gives 0 (nothing fired)."""
    _check_matrix("h", h)
    h = h.float()
    l2 = h.pow(2).sum(1).sqrt()
    l4 = h.pow(4).sum(1).pow(0.25)
    return torch.where(l2 > eps, l4 / l2.clamp_min(eps), torch.zeros_like(l2))


def activation_spread(h: torch.Tensor) -> dict[str, float]:
    """Mean spread of a batch of activations h (B, H): {"cv", "std", "l4_l2", "active_frac"}."""
    return {
        "cv": float(activation_cv(h).mean()),
        "std": float(activation_std(h).mean()),
        "l4_l2": float(activation_l4_l2(h).mean()),
        "active_frac": float((h > 0).float().mean()),
    }


def active_rows(weight: torch.Tensor, x_train: torch.Tensor, min_fire_frac: float = 0.0) -> torch.Tensor:
    """Boolean mask (H,) of encoder rows that fire (W x > 0) on more than ``min_fire_frac`` of the
    training images. weight: (H, d), x_train: (N, d)."""
    _check_matrix("weight", weight)
    _check_matrix("x_train", x_train)
    if weight.shape[1] != x_train.shape[1]:
        raise ValueError(f"weight has {weight.shape[1]} inputs but x_train has {x_train.shape[1]} features")
    fires = torch.zeros(weight.shape[0])
    for chunk in x_train.float().split(4096):
        fires += (chunk @ weight.float().T > 0).float().sum(0)
    return fires / len(x_train) > min_fire_frac


def row_max_cosine(weight: torch.Tensor, x_train: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Max over training images of the cosine between each encoder row and the mean-centred image
    x_i - mean(x): weight (H, d), x_train (N, d) -> (H,). Centring removes the background shared by
    all digits, which would otherwise give every row a high cosine to every image; it is idempotent,
    so already-centred inputs (what a centred DAE sees) give the same answer."""
    _check_matrix("weight", weight)
    _check_matrix("x_train", x_train)
    if weight.shape[1] != x_train.shape[1]:
        raise ValueError(f"weight has {weight.shape[1]} inputs but x_train has {x_train.shape[1]} features")
    mean = x_train.float().mean(0)
    rows = weight.float() / weight.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    best = torch.full((weight.shape[0],), -1.0)
    for part in x_train.float().split(chunk):
        imgs = part - mean
        imgs = imgs / imgs.norm(dim=1, keepdim=True).clamp_min(1e-12)
        best = torch.maximum(best, (rows @ imgs.T).max(dim=1).values)
    return best


def active_row_cosine(weight: torch.Tensor, x_train: torch.Tensor, min_fire_frac: float = 0.0) -> float:
    """Mean of ``row_max_cosine`` over the active rows (0.0 when no row fires). ``x_train`` is what the
    encoder sees (centred images for a centred DAE), so that "fires" means W x > 0 for that input."""
    mask = active_rows(weight, x_train, min_fire_frac)
    if not bool(mask.any()):
        return 0.0
    return float(row_max_cosine(weight[mask], x_train).mean())


def nearest_two(
    queries: torch.Tensor,
    reference: torch.Tensor,
    query_chunk: int = 1024,
    ref_chunk: int = 4096,
    candidates: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact Euclidean distances and indices of the two nearest reference rows of every query.

    queries (M, d), reference (N >= 2, d) -> (dist (M, 2), index (M, 2)), dist[:, 0] <= dist[:, 1].
    The search runs over (query_chunk x ref_chunk) blocks with |q|^2 + |r|^2 - 2 q.r in float32 keeping a
    running top-``candidates`` per query, so memory is O(query_chunk * ref_chunk) (16 MB at the defaults,
    whatever M and N: 60k x 10k fits well under 2 GB). The candidates are then re-scored by direct
    differences in float64, so an exact copy of a training point gets distance exactly 0.
    """
    _check_matrix("queries", queries)
    _check_matrix("reference", reference)
    if queries.shape[1] != reference.shape[1]:
        raise ValueError(f"queries have {queries.shape[1]} features but reference has {reference.shape[1]}")
    if reference.shape[0] < 2:
        raise ValueError(f"need at least 2 reference rows for NN1/NN2, got {reference.shape[0]}")
    k = min(candidates, reference.shape[0])
    ref = reference.float()
    ref_sq = ref.pow(2).sum(1)
    dists, idxs = [], []
    for q in queries.float().split(query_chunk):
        q_sq = q.pow(2).sum(1, keepdim=True)
        best_d = torch.full((len(q), k), float("inf"))
        best_i = torch.zeros((len(q), k), dtype=torch.long)
        for start in range(0, len(ref), ref_chunk):
            r = ref[start : start + ref_chunk]
            d2 = (q_sq + ref_sq[start : start + ref_chunk][None, :] - 2.0 * q @ r.T).clamp_min(0.0)
            cat_d = torch.cat([best_d, d2], dim=1)
            cat_i = torch.cat([best_i, torch.arange(start, start + len(r)).expand(len(q), -1)], dim=1)
            best_d, pos = cat_d.topk(k, dim=1, largest=False)
            best_i = cat_i.gather(1, pos)
        exact = (q.double()[:, None, :] - reference.double()[best_i]).pow(2).sum(-1).sqrt()
        exact, order = exact.sort(dim=1)
        dists.append(exact[:, :2])
        idxs.append(best_i.gather(1, order)[:, :2])
    return torch.cat(dists), torch.cat(idxs)


def nearest_neighbor_ratio(
    queries: torch.Tensor, reference: torch.Tensor, **search: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """|x - NN1| / |x - NN2| per query (M,) and the NN1 index (M,). A query that coincides with a
    duplicated training point (both distances 0) gets ratio 0: it is a copy."""
    dist, idx = nearest_two(queries, reference, **search)
    d1, d2 = dist[:, 0], dist[:, 1]
    ratio = torch.where(d2 > 0, d1 / d2.clamp_min(1e-300), torch.zeros_like(d1))
    return ratio.float(), idx[:, 0]


def memorized(ratio: torch.Tensor, threshold: float = MEMORIZATION_THRESHOLD) -> torch.Tensor:
    """Boolean (M,): the sample is a (near) copy of its nearest training point."""
    return ratio < threshold


def memorization_rate(ratio: torch.Tensor, threshold: float = MEMORIZATION_THRESHOLD) -> float:
    return float(memorized(ratio, threshold).float().mean())


def _check_scores(scores: torch.Tensor, labels: torch.Tensor) -> None:
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(
            f"scores and labels must be 1-D of one length, got {tuple(scores.shape)}, {tuple(labels.shape)}"
        )


def detection_auroc(scores: torch.Tensor, labels: torch.Tensor) -> float | None:
    """AUROC of ``scores`` (higher = memorised) against boolean ``labels`` (True = memorised);
    None when one class is absent (the AUROC is undefined)."""
    _check_scores(scores, labels)
    labels = labels.long()
    if labels.min() == labels.max():
        return None
    return auroc(scores.float(), labels)


def tpr_at_fpr(scores: torch.Tensor, labels: torch.Tensor, max_fpr: float = 0.01) -> float | None:
    """Largest true-positive rate over thresholds whose false-positive rate is <= ``max_fpr``."""
    from torchmetrics.functional.classification import binary_roc

    _check_scores(scores, labels)
    labels = labels.long()
    if labels.min() == labels.max():
        return None
    fpr, tpr, _ = binary_roc(scores.float(), labels)
    ok = fpr <= max_fpr + 1e-12
    return float(tpr[ok].max()) if bool(ok.any()) else 0.0
