"""Probabilistic forecasting windows of a real series bundled with statsmodels (offline): monthly
Mauna Loa CO2 (``co2``, weekly 1958-2001 averaged to months, gaps interpolated) or yearly sunspot
numbers (``sunspots``, 1700-2008).

Each example is a window: ``cond`` = the last ``context_factor * horizon`` values and ``x`` = the
next ``horizon`` values, both z-scored with the training part's mean/std and expressed relative to
the last context value (so the model learns changes, not levels). Training windows end before
``train_frac`` of the series; test windows forecast inside the remaining tail (no overlap of any
test horizon with training data).
"""

from __future__ import annotations

import numpy as np
import torch

from datamodules.base import IndexedTensorDataset, TensorDataModule

SERIES = ("co2", "sunspots")


def load_series(name: str) -> np.ndarray:
    """The raw series as float64 (N,)."""
    import statsmodels.api as sm

    if name == "co2":
        df = sm.datasets.co2.load_pandas().data
        monthly = df["co2"].resample("MS").mean().interpolate()
        return monthly.to_numpy(dtype=np.float64)
    if name == "sunspots":
        return sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(dtype=np.float64)
    raise ValueError(f"data.series: unknown series {name!r}; choose one of {SERIES}")


def make_windows(z: np.ndarray, context: int, horizon: int, start: int, stop: int):
    """Windows whose horizon lies in z[start:stop]: (cond (n, context), x (n, horizon), last (n,))."""
    ends = range(max(start, context), stop - horizon + 1)
    cond = np.stack([z[e - context : e] for e in ends])
    x = np.stack([z[e : e + horizon] for e in ends])
    last = cond[:, -1:]
    return cond - last, x - last, last[:, 0]


class TimeSeriesDataModule(TensorDataModule):
    """Forecast windows; ``mean``/``std`` (train statistics) turn model units back into the series'."""

    def __init__(self, series: str = "co2", horizon: int = 12, context_factor: int = 3, train_frac: float = 0.8,
                 n_val: int = 32, batch_size: int = 256, eval_batch_size: int = 4096, seed: int = 0) -> None:
        super().__init__(batch_size, eval_batch_size, seed)
        if series not in SERIES:
            raise ValueError(f"data.series: unknown series {series!r}; choose one of {SERIES}")
        if horizon < 1 or context_factor < 1 or not 0.3 < train_frac < 0.95:
            raise ValueError("data: need horizon >= 1, context_factor >= 1 and 0.3 < train_frac < 0.95")
        self.series, self.horizon, self.context = series, horizon, context_factor * horizon
        self.train_frac, self.n_val = train_frac, n_val
        self.mean = self.std = 0.0

    def build(self):
        raw = load_series(self.series)
        split = int(len(raw) * self.train_frac)
        if split - self.context - self.horizon < 10 or len(raw) - split < self.horizon:
            raise ValueError(f"data: series {self.series!r} ({len(raw)} points) is too short for "
                             f"context {self.context} + horizon {self.horizon}")
        self.mean, self.std = float(raw[:split].mean()), float(raw[:split].std())
        z = (raw - self.mean) / self.std
        tr = make_windows(z, self.context, self.horizon, 0, split)
        te = make_windows(z, self.context, self.horizon, split, len(z))

        def ds(parts, sl=slice(None)):
            cond, x, last = (torch.from_numpy(p[sl]).float() for p in parts)
            return IndexedTensorDataset(x, cond=cond, last=last)

        return ds(tr), ds(te, slice(0, self.n_val)), ds(te)
