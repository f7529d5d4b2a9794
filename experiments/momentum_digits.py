"""``momentum_digits``: VSMD vs CLD vs VP on 8x8 sklearn digits (MNIST by config) at low NFE, measured
by the Frechet distance on the suite's in-suite digit features (core.eval.features). The issue names no
claim for this experiment; the claims function writes the process x NFE table and checks one
directional statement, that VSMD's distance is below VP's at the lowest swept NFE."""

from __future__ import annotations

from experiments.momentum_shapes import beats, collect, format_table, write_table
from suite.results import Claim, VariantResult


def claims(variants: dict[str, VariantResult], cfg) -> dict[str, Claim]:
    fd, swd, shift = collect(variants, "frechet"), collect(variants, "sliced_w2"), collect(variants, "a_shift")
    write_table(variants, format_table({"frechet": fd, "sliced_w2": swd, "a_shift": shift}))
    nfes = sorted(set(fd.get("vsmd", {})) & set(fd.get("vp", {})))
    if not nfes:
        return {"vsmd_frechet_below_vp_low_nfe": Claim.uncomputable("vsmd and vp share no NFE")}
    return {"vsmd_frechet_below_vp_low_nfe": beats(
        fd, "vsmd", "vp", nfes[:1],
        "Frechet distance of in-suite digit features (a CNN trained on the training digits), generated vs all "
        "test digits, mean over seeds (default: one seed, so no spread is required); holds when VSMD is below VP "
        "at the lowest swept NFE", need_seeds=False)}
