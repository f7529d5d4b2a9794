"""Stem (Zhu, Zhu, Tao, Qiu; ICLR 2025): conditional diffusion for spot gene expression given H&E.

The target x_0 is the spot's expression y = log2(count + 1) over G panel genes, standardised per gene
with the training slides' mean and std. A DiT over gene tokens (modules/nets/gene_dit.py), conditioned
by adaLN-Zero on the diffusion step and an embedding of the spot's patch, predicts eps of the discrete
linear-beta DDPM (1000 steps; core/diffusion/discrete_ddpm.py):

    L_simple = E_{n, eps} |eps - eps_theta(sqrt(abar_n) x_0 + sqrt(1 - abar_n) eps, n, c)|^2,

plus, with ``learn_sigma``, the variational bound term L_vlb on the variance head (eps detached;
improved DDPM's hybrid loss L_simple + 0.001 L_vlb). Inference runs strided ancestral sampling;
the point prediction of a spot is the mean of ``num_samples`` draws (20 in the paper) and the single
draws are kept for distributional metrics (RVD, energy distance).
"""

from __future__ import annotations

import torch

from core.diffusion.discrete_ddpm import LinearBetaDDPM, strided_ancestral_sample, vlb_term
from core.diffusion.solvers import SampleResult
from modules.nets.gene_dit import GeneDiT
from modules.sampling import choose, generation, sample_options
from modules.spatial_base import SpatialPredictor

STEM_DEFAULTS = {
    "width": 64,
    "depth": 3,
    "heads": 4,
    "mlp_ratio": 4.0,
    "learn_sigma": False,
    "diffusion_steps": 1000,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "sample_steps": 50,
    "num_samples": 20,
    "vlb_weight": 0.001,
}


class Stem(SpatialPredictor):
    """The constructor's args (shared with STRegression): :class:`modules.spatial_base.SpatialPredictor`;
    ``stem``: the DiT and diffusion settings (:data:`STEM_DEFAULTS`); ``regression``: the baseline's
    section, unused here.
    """

    section_name, section_defaults = "stem", STEM_DEFAULTS

    def build(self, cfg: dict) -> None:
        n_genes = self.hparams.n_genes
        self.cfg = cfg
        self.schedule = LinearBetaDDPM(cfg["diffusion_steps"], cfg["beta_start"], cfg["beta_end"])
        self.net = GeneDiT(
            n_genes,
            self.encoder.out_dim,
            cfg["width"],
            cfg["depth"],
            cfg["heads"],
            cfg["mlp_ratio"],
            cfg["learn_sigma"],
        )
        # evaluation settings as attributes, so an eval sweep can vary them after training
        self.sample_steps, self.num_samples = int(cfg["sample_steps"]), int(cfg["num_samples"])

    def forward(self, x: torch.Tensor, n: torch.Tensor, cond: torch.Tensor):
        return self.net(x, n, cond)

    def compute_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean eps-prediction loss (+ weighted L_vlb with a variance head); step indices and noise are
        keyed by (seed, step, spot index), or drawn from ``generator`` when given."""
        x0 = self.standardize(batch["target"])
        u = self.example_uniform(batch["index"], (), stream=0, generator=generator)
        eps = self.example_normal(batch["index"], tuple(x0.shape[1:]), stream=1, generator=generator)
        n = (u * self.schedule.n_steps).long().clamp(max=self.schedule.n_steps - 1)
        xn = self.schedule.q_sample(x0, n, eps)
        eps_pred, v = self.net(xn, n, self.encoder(batch))
        loss = ((eps_pred - eps) ** 2).mean()
        if v is not None:
            loss = (
                loss
                + self.cfg["vlb_weight"] * vlb_term(self.schedule, x0, xn, n, eps_pred.detach(), v).mean()
            )
        return loss

    @generation
    def sample(
        self,
        n: int,
        *,
        steps: int | None = None,
        solver: str | None = None,
        generator: torch.Generator | None = None,
        cond: dict | None = None,
        return_trajectory: bool = False,
        **guidance,
    ) -> SampleResult:
        """``n`` draws of the expression of every spot of the batch ``cond`` (its image or embedding):
        ``SampleResult.x`` is (n, B, G) in log2(count + 1) units; ``solver``: ancestral (strided DDPM)."""
        if cond is None:
            raise ValueError("Stem.sample is conditional: pass cond= a batch with the spots' 'image' or 'embedding'")
        if return_trajectory:
            raise ValueError("Stem.sample keeps only final draws; return_trajectory is not available")
        choose("Stem.sample: solver", solver, "ancestral", ("ancestral",))
        sample_options(self, guidance)
        steps = steps or self.sample_steps
        enc = self.encoder(cond)
        b = enc.shape[0]
        enc = enc.repeat(n, 1)
        calls = self.nfe.calls
        x = strided_ancestral_sample(
            lambda x, k: self.net(x, k, enc),
            self.schedule,
            (n * b, self.hparams.n_genes),
            steps,
            generator=generator,
            device=self.device,
            counter=self.nfe,
        )
        x = self.unstandardize(x.to(self.device)).reshape(n, b, -1)
        return SampleResult(x=x, times=self.schedule.strided_steps(steps), nfe=self.nfe.calls - calls)

    def predict_spots(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """point (B, G): mean of ``num_samples`` draws; single (B, G): the first draw; samples (S, B, G)."""
        samples = self.sample(self.num_samples, generator=generator, cond=batch).x
        return {"point": samples.mean(0), "single": samples[0], "samples": samples}
