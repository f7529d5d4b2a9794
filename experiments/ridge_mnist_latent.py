"""Claims of ``ridge_mnist_latent``: latent-diffusion samples lie closer to the ridge of the training
latents than a Gaussian fitted to those latents and than held-out encoded test digits."""

from __future__ import annotations

from suite.results import Claim, VariantResult


def claims(variants: dict[str, VariantResult], cfg) -> dict[str, Claim]:
    out = {}
    for name, var in variants.items():
        m = var.metrics
        suffix = "" if name == "main" else f"[{name}]"
        keys = ("test/nns_diffusion", "test/nns_gaussian", "test/nns_heldout")
        if any(k not in m or m[k] is None for k in keys):
            out["closer_to_ridge_than_baseline" + suffix] = Claim.uncomputable(
                f"missing {[k for k in keys if k not in m]}: the test stage did not run the ridge comparison"
            )
            continue
        diff, gauss, held = (m[k] for k in keys)
        iqr = {k.split("_")[-1]: (m.get(f"{k}_q25"), m.get(f"{k}_q75")) for k in keys}
        out["closer_to_ridge_than_baseline" + suffix] = Claim(
            diff < gauss and diff < held,
            diff,
            min(gauss, held),
            f"median normalised normal score |E E^T s|/|s| of the {cfg.module.ridge_d_star}-d ridge of the "
            f"training latents at t = {m.get('test/ridge_time', float('nan')):.4g} (sqrt(h)/a = "
            f"{cfg.module.ridge_spacing_factor} x NN spacing {m.get('test/nn_spacing', float('nan')):.3g}; "
            "median relative eigengap at d* on the training latents "
            f"{m.get('test/eigengap_train', float('nan')):.3g}): "
            f"diffusion {diff:.4f} (n = {int(m.get('test/n_diffusion', 0))}), Gaussian fit {gauss:.4f} "
            f"(n = {int(m.get('test/n_gaussian', 0))}), held-out digits {held:.4f} "
            f"(n = {int(m.get('test/n_heldout', 0))}); interquartile ranges {iqr}; holds when the diffusion "
            "median is below both",
        )
    return out
