"""A synthetic H&E tissue with spatial gene expression whose conditional law is known exactly.

The generative story of one slide (all plain torch, seeded by ``torch.Generator``):

1. **Tissue field.** K cell types (tumour epithelium, stroma, immune infiltrate, lumen) have smooth
   random log-intensities; a softmax over K gives the per-pixel composition ``field`` (K, H, W).
2. **H&E rendering.** The base colour is the composition-weighted cytoplasm colour (eosin pink for
   stroma, purple-pink for tumour, near white for lumen); nuclei are dark haematoxylin dots whose
   density depends on the composition (dense in tumour/immune, sparse in stroma, none in lumen),
   plus a stain jitter per slide and pixel grain. Nuclei and grain are independent of expression.
3. **Spots.** Spot centres lie on a hexagonal Visium-like grid; a spot's *visible* composition
   pi_s (K,) is the mean of the field over its patch (``patch_size`` px square around the centre).
4. **Expression.** A hidden cell state z_s in {0, 1} (e.g. activated / quiescent) is drawn with
   p(z=1 | pi) = sigmoid(b + w . pi); the patch does not show it. Counts are conditionally
   independent negative binomials (over-dispersed, Gamma-Poisson):

       n_sg ~ NB(mean m_sg, size r_g),  log m_sg = base_g + sum_k pi_sk P_kg + z_s D_g,

   and the target is y_sg = log2(n_sg + 1). Genes with a state effect D_g make y | pi bimodal.

The true conditional p(y | pi) = sum_z p(z | pi) prod_g NB(n_g; m_gz, r_g) is sampled exactly by
:func:`sample_conditional`; :func:`conditional_moments` gives E[y | pi], Var[y | pi] and the
conditional median by summing the NB pmf, so :func:`bayes_optimal_errors` is exact (up to a tail
below 1e-10). Because y is independent of the pixels given pi, these are the Bayes errors of a
predictor that sees pi; any predictor that sees only the patch does at least as badly, and exactly
as well when pi can be read off the patch (it can up to the nuclei/grain noise averaged over the
patch's ~1000 pixels).

Slides drawn from the model and written as HEST-1k / Visium files: core.tasks.synthetic_tissue_files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

CELL_TYPES = ("tumour", "stroma", "immune", "lumen")
# cytoplasm / background colours (RGB in [0, 1]) and nucleus densities per pixel, per cell type
_CYTOPLASM = torch.tensor([[0.80, 0.55, 0.78], [0.93, 0.62, 0.76], [0.74, 0.52, 0.80], [0.97, 0.94, 0.96]])
_NUCLEUS = torch.tensor([0.33, 0.18, 0.52])
_NUCLEUS_DENSITY = torch.tensor([0.030, 0.006, 0.060, 0.0])


@dataclass
class TissueModel:
    """Ground-truth expression parameters, shared by every slide of a dataset.

    ``base`` (G,), ``programme`` P (K, G), ``state_effect`` D (G,), ``state_weight`` w (K,),
    ``state_bias`` b (scalar), ``dispersion`` r (G,): see the module docstring.
    """

    gene_names: list[str]
    base: torch.Tensor
    programme: torch.Tensor
    state_effect: torch.Tensor
    state_weight: torch.Tensor
    state_bias: float
    dispersion: torch.Tensor

    @property
    def n_genes(self) -> int:
        return len(self.gene_names)

    @staticmethod
    def random(n_genes: int = 160, seed: int = 0) -> TissueModel:
        """Draw a model: 4 MT- and 6 RPL/RPS housekeeping genes (high, flat), cell-type marker genes,
        state genes (bimodal given the image) and ~15% pure-noise genes."""
        if n_genes < 20:
            raise ValueError(f"n_genes must be >= 20 (10 are housekeeping), got {n_genes}")
        g = torch.Generator().manual_seed(seed)
        k = len(CELL_TYPES)
        names = [f"MT-{s}" for s in ("CO1", "CO2", "ND1", "ATP6")]
        names += [f"RP{s}" for s in ("L3", "L7", "L13", "S6", "S18", "S27")]
        names += [f"GENE{i:04d}" for i in range(n_genes - len(names))]
        n_rest = n_genes - 10
        base = torch.cat(
            [torch.full((10,), math.log(25.0)), math.log(1.5) + 0.6 * torch.randn(n_rest, generator=g)]
        )
        programme = 0.25 * torch.randn(k, n_genes, generator=g)
        programme[:, :10] *= 0.2
        role = torch.rand(n_rest, generator=g)  # < 0.6 marker, 0.6-0.85 state, > 0.85 noise
        marker_of = torch.randint(0, k - 1, (n_rest,), generator=g)  # lumen has no marker genes
        effect = 1.0 + 1.5 * torch.rand(n_rest, generator=g)
        cols = torch.arange(10, n_genes)
        is_marker = role < 0.6
        programme[marker_of[is_marker], cols[is_marker]] += effect[is_marker]
        state_effect = torch.zeros(n_genes)
        is_state = (role >= 0.6) & (role < 0.85)
        sign = torch.where(torch.rand(n_rest, generator=g) < 0.7, 1.0, -1.0)
        state_effect[cols[is_state]] = (sign * (1.2 + 0.8 * torch.rand(n_rest, generator=g)))[is_state]
        # state genes are also mild markers of tumour, where the state is most uncertain
        programme[0, cols[is_state]] += 0.5
        is_noise = role >= 0.85
        programme[:, cols[is_noise]] = 0.0
        dispersion = 2.0 + 8.0 * torch.rand(n_genes, generator=g)
        return TissueModel(
            gene_names=names,
            base=base,
            programme=programme,
            state_effect=state_effect,
            state_weight=torch.tensor([3.0, -2.0, 0.5, -3.0]),
            state_bias=-0.8,
            dispersion=dispersion,
        )

    def to_arrays(self) -> dict[str, object]:
        """Plain numpy arrays for AnnData's ``uns`` (so the ground truth travels with the data)."""
        return {
            "base": self.base.numpy(),
            "programme": self.programme.numpy(),
            "state_effect": self.state_effect.numpy(),
            "state_weight": self.state_weight.numpy(),
            "state_bias": float(self.state_bias),
            "dispersion": self.dispersion.numpy(),
        }

    @staticmethod
    def from_arrays(gene_names: list[str], arrays: dict) -> TissueModel:
        missing = {"base", "programme", "state_effect", "state_weight", "state_bias", "dispersion"} - set(
            arrays
        )
        if missing:
            raise KeyError(f"synthetic_tissue parameters lack {sorted(missing)}")

        def t(key: str) -> torch.Tensor:
            return torch.as_tensor(arrays[key], dtype=torch.float32)

        return TissueModel(
            list(gene_names),
            t("base"),
            t("programme"),
            t("state_effect"),
            t("state_weight"),
            float(arrays["state_bias"]),
            t("dispersion"),
        )


# ----------------------------------------------------------------------------- the slide image


def render_slide(height: int, width: int, generator: torch.Generator, blob_px: int = 48) -> tuple:
    """Render an H&E-like slide.

    Returns ``image`` (H, W, 3) uint8 and ``field`` (K, H, W) float, the per-pixel cell-type
    composition (rows sum to 1). ``blob_px`` sets the length scale of tissue regions.
    """
    k = len(CELL_TYPES)
    low = (max(2, height // blob_px + 2), max(2, width // blob_px + 2))
    logits = 2.0 * torch.randn(1, k, *low, generator=generator)
    logits[:, 3] -= 1.0  # lumen is rarer
    logits = F.interpolate(logits, size=(height, width), mode="bicubic", align_corners=True)[0]
    field = torch.softmax(3.0 * logits, dim=0)
    stain = 1.0 + 0.04 * torch.randn(3, generator=generator)  # per-slide stain intensity
    colour = torch.einsum("khw,kc->hwc", field, _CYTOPLASM) * stain
    density = torch.einsum("khw,k->hw", field, _NUCLEUS_DENSITY)
    centres = (torch.rand(height, width, generator=generator) < density).float()
    nuclei = F.max_pool2d(centres[None, None], kernel_size=3, stride=1, padding=1)[0, 0]
    colour = colour * (1 - nuclei[..., None]) + _NUCLEUS * nuclei[..., None]
    colour = colour + 0.025 * torch.randn(height, width, 3, generator=generator)
    image = (colour.clamp(0, 1) * 255).round().to(torch.uint8)
    return image, field


def spot_grid(height: int, width: int, spacing: int, patch_size: int) -> torch.Tensor:
    """Hexagonal spot centres (x, y) in pixels, (N, 2) int64, each with a full patch inside the slide."""
    half = patch_size // 2
    centres = []
    for row, y in enumerate(range(half, height - half + 1, spacing)):
        offset = (spacing // 2) * (row % 2)
        for x in range(half + offset, width - half + 1, spacing):
            centres.append((x, y))
    if not centres:
        raise ValueError(f"no spot fits: slide {height}x{width}, spacing {spacing}, patch {patch_size}")
    return torch.tensor(centres, dtype=torch.int64)


def crop_patches(image: torch.Tensor, centres: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Square crops (N, P, P, C) of ``image`` (H, W, C) centred on ``centres`` (N, 2) as (x, y)."""
    half = patch_size // 2
    return torch.stack(
        [image[y - half : y - half + patch_size, x - half : x - half + patch_size] for x, y in centres]
    )


def spot_composition(field: torch.Tensor, centres: torch.Tensor, patch_size: int) -> torch.Tensor:
    """pi_s (N, K): the mean of the composition field over each spot's patch."""
    return crop_patches(field.permute(1, 2, 0), centres, patch_size).mean(dim=(1, 2))


# ----------------------------------------------------------------------------- the expression law


def state_probability(model: TissueModel, composition: torch.Tensor) -> torch.Tensor:
    """p(z = 1 | pi) = sigmoid(b + w . pi), (N,) for composition (N, K)."""
    return torch.sigmoid(model.state_bias + composition @ model.state_weight)


def mean_counts(model: TissueModel, composition: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """m (N, G) = exp(base + pi P + z D) for composition (N, K) and state (N,) in {0, 1}."""
    log_m = model.base + composition @ model.programme + state.float()[:, None] * model.state_effect
    return log_m.exp()


def _nb_sample(mean: torch.Tensor, size: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """NB(mean, size) draws as a Gamma(size, mean/size) mixture of Poissons (same shape as mean)."""
    rate = torch._standard_gamma(size.expand_as(mean).contiguous(), generator=generator) * (mean / size)
    return torch.poisson(rate, generator=generator)


def sample_counts(
    model: TissueModel, composition: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One draw per spot: (counts (N, G), hidden state (N,) int64)."""
    state = (
        torch.rand(composition.shape[0], generator=generator) < state_probability(model, composition)
    ).long()
    return _nb_sample(mean_counts(model, composition, state), model.dispersion, generator), state


def sample_conditional(
    model: TissueModel, composition: torch.Tensor, n_samples: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Exact draws from p(y | pi) with y = log2(n + 1): (n_samples, N, G)."""
    counts, _ = sample_counts(model, composition.repeat(n_samples, 1), generator)
    return torch.log2(counts.reshape(n_samples, *composition.shape[:1], model.n_genes) + 1.0)


def _mixture_moments(
    p1: torch.Tensor, m0: torch.Tensor, m1: torch.Tensor, r: torch.Tensor, n_max: int
) -> dict[str, torch.Tensor]:
    """Moments of y = log2(n + 1) under (1 - p1) NB(m0, r) + p1 NB(m1, r) summed over n = 0..n_max.

    p1 (B,), m0/m1 (B, G), r (G,), float64. The NB log-pmf splits into a per-gene part
    lgamma(n + r) - lgamma(r) - lgamma(n + 1), computed once, plus r log(r / (r + m)) + n log(m / (r + m)),
    affine in n, so a spot costs one multiply-add per (gene, n).
    """
    n = torch.arange(n_max + 1, dtype=torch.float64)
    y = torch.log2(n + 1)
    per_gene = torch.lgamma(n + r[:, None]) - torch.lgamma(r)[:, None] - torch.lgamma(n + 1)  # (G, M)

    def pmf(mean: torch.Tensor) -> torch.Tensor:  # (B, G) -> (B, G, M)
        const = r * torch.log(r / (r + mean))
        return (per_gene + const[..., None] + torch.log(mean / (r + mean))[..., None] * n).exp()

    mix = (1 - p1[:, None, None]) * pmf(m0) + p1[:, None, None] * pmf(m1)
    mean = (mix * y).sum(-1)
    median = y[(mix.cumsum(-1) < 0.5).sum(-1).clamp(max=n_max)]
    return {
        "mean": mean,
        "var": (mix * y**2).sum(-1) - mean**2,
        "median": median,
        "mad": (mix * (y - median[..., None]).abs()).sum(-1),
    }


def conditional_moments(
    model: TissueModel, composition: torch.Tensor, chunk: int = 64, genes_per_group: int = 16
) -> dict[str, torch.Tensor]:
    """Exact E[y|pi], Var[y|pi], the conditional median and E|y - median|, each (N, G), y = log2(n+1).

    Each gene's pmf is summed up to its own n_max, 12 standard deviations above its largest mean
    (tail mass < 1e-10 for the sizes used here); genes are grouped by n_max so that the few
    high-mean genes do not make every gene pay for a long sum.
    """
    p1 = state_probability(model, composition).double()
    m0 = mean_counts(model, composition, torch.zeros_like(p1)).double()
    m1 = mean_counts(model, composition, torch.ones_like(p1)).double()
    r = model.dispersion.double()
    m_hi = torch.maximum(m0, m1).amax(0)
    n_max = (m_hi + 12 * torch.sqrt(m_hi + m_hi**2 / r) + 20).long()
    order = torch.argsort(n_max)
    out = {key: torch.empty_like(m0) for key in ("mean", "var", "median", "mad")}
    for g0 in range(0, len(order), genes_per_group):
        genes = order[g0 : g0 + genes_per_group]
        top = int(n_max[genes].max())
        for s in range(0, composition.shape[0], chunk):
            part = _mixture_moments(
                p1[s : s + chunk], m0[s : s + chunk, genes], m1[s : s + chunk, genes], r[genes], top
            )
            for key, value in part.items():
                out[key][s : s + chunk, genes] = value
    return {key: value.float() for key, value in out.items()}


def bayes_optimal_errors(model: TissueModel, composition: torch.Tensor) -> dict[str, float]:
    """Expected per-entry errors of the best point predictors given pi, averaged over spots and genes.

    ``bayes_mse`` = mean Var[y | pi] (attained by E[y | pi]); ``bayes_mae`` = mean E|y - median(y | pi)|
    (attained by the conditional median).
    """
    moments = conditional_moments(model, composition)
    return {"bayes_mse": float(moments["var"].mean()), "bayes_mae": float(moments["mad"].mean())}
