"""Claim of ``momentum_timeseries``: VSMD's probabilistic forecasts are not worse than VP's (CRPS of
conditional samples on held-out windows of a real series), at equal NFE."""

from __future__ import annotations

from experiments.momentum_shapes import collect, format_table, mean_std, write_table
from suite.results import Claim, VariantResult


def claims(variants: dict[str, VariantResult], cfg) -> dict[str, Claim]:
    crps, ncrps, shift = collect(variants, "crps"), collect(variants, "ncrps"), collect(variants, "a_shift")
    write_table(variants, format_table({"crps": crps, "ncrps": ncrps, "a_shift": shift}))
    nfes = sorted(set(crps.get("vsmd", {})) & set(crps.get("vp", {})))
    detail = (f"CRPS (sample formula, {cfg.module.forecast_samples} samples per window) over all held-out test "
              "windows, in z-scored series units, mean over seeds; each process with its best sampler on the first "
              "validation windows; holds when VSMD's mean CRPS <= VP's at every swept NFE")
    if not nfes:
        return {"vsmd_crps_not_worse": Claim.uncomputable(detail + ": vsmd and vp share no NFE")}
    value = {n: mean_std(crps["vsmd"][n])[0] for n in nfes}
    reference = {n: mean_std(crps["vp"][n])[0] for n in nfes}
    rows = "; ".join(f"NFE {n}: vsmd {value[n]:.4g} vs vp {reference[n]:.4g} (seeds {len(crps['vsmd'][n])}/"
                     f"{len(crps['vp'][n])})" for n in nfes)
    return {"vsmd_crps_not_worse": Claim(all(value[n] <= reference[n] for n in nfes), value, reference,
                                         f"{detail}; {rows}")}
