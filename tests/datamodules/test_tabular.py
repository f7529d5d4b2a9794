"""Tabular datamodule: the offline tables, type inference, missing values, scaling round trip, the
benchmark loaders' file formats, and errors that name the column and the file."""

import numpy as np
import pandas as pd
import pytest
import torch

from datamodules.errors import DataError
from datamodules.tabular import TabularDataModule


def test_credit_default_table():
    dm = TabularDataModule(batch_size=64)
    dm.setup()
    s = dm.schema
    assert s["target"] == ["cat", s["categorical"].index("Status")]
    assert len(s["numeric"]) == 9
    # Income, Assets and Debt have holes: imputed and flagged by indicator columns
    assert {"Income__missing", "Assets__missing", "Debt__missing"} <= set(s["categorical"])
    assert len(dm.train_set) + len(dm.test_set) == 4454
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (64, 9) and batch["cat"].shape == (64, len(s["categorical"]))
    assert batch["cat"].dtype == torch.long and batch["index"].shape == (64,)
    assert (batch["cat"] < torch.tensor(s["cardinalities"])).all()
    # quantile scaling: roughly standard normal on the training rows; decode inverts it
    x = dm.train_set.x
    assert x.mean(0).abs().max() < 0.3 and (x.std(0) - 1).abs().max() < 0.5
    num, cat = dm.decode(x, dm.train_set.extras["cat"])
    ref_num, ref_cat = dm.table("train")
    assert np.array_equal(cat, ref_cat)
    assert np.mean(np.abs(num - ref_num) <= 1e-6 * np.abs(ref_num) + 0.5) > 0.99  # integer columns round back
    assert dm.train_tensor().shape == (len(dm.train_set), 9 + len(s["categorical"]))


def test_penguins_and_drop_missing():
    dm = TabularDataModule(dataset="penguins", numeric_missing="drop", scaling="standard")
    dm.setup()
    assert dm.schema["cardinalities"][dm.schema["categorical"].index("species")] == 3
    assert len(dm.train_set) + len(dm.test_set) == 342  # two rows without any measurement
    assert "<missing>" in dm.encoder.categories[dm.schema["categorical"].index("sex")]


def _write(tmp_path, df, name="t.csv"):
    path = tmp_path / name
    df.to_csv(path, index=False)
    return str(path)


def test_csv_with_inferred_types_and_median_imputation(tmp_path):
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "colour": rng.choice(["red", "blue", None], 200),
            "grade": rng.integers(1, 4, 200),
            "height": rng.normal(170, 10, 200),
            "label": rng.choice([True, False], 200),
        }
    )
    df.loc[::10, "height"] = np.nan
    dm = TabularDataModule(dataset="csv", path=_write(tmp_path, df), target="label", numeric_missing="median")
    dm.setup()
    s = dm.schema
    assert s["numeric"] == ["height"] and s["categorical"] == ["colour", "grade", "label"]
    assert dm.encoder.categories[0] == ["<missing>", "blue", "red"]
    assert len(dm.train_set) + len(dm.test_set) == 200
    assert not torch.isnan(dm.train_set.x).any()


def test_benchmark_loader_reads_the_uci_adult_format(tmp_path):
    lines = [
        "39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, "
        "2174, 0, 40, United-States, <=50K",
        "50, ?, 83311, Bachelors, 13, Married-civ-spouse, Exec-managerial, Husband, White, Male, 0, 0, 13, "
        "United-States, >50K",
        "28, Private, 338409, HS-grad, 9, Divorced, Sales, Unmarried, Black, Female, 0, 1902, 38, Cuba, <=50K",
    ] * 10  # every column varies (a constant column is refused)
    path = tmp_path / "adult.data"
    path.write_text("\n".join(lines) + "\n")
    dm = TabularDataModule(dataset="adult", path=str(path))
    dm.setup()
    s = dm.schema
    assert s["target"] == ["cat", s["categorical"].index("income")] and len(s["numeric"]) == 6
    assert "<missing>" in dm.encoder.categories[s["categorical"].index("workclass")]
    with pytest.raises(ValueError, match="needs path="):
        TabularDataModule(dataset="magic").setup()


def test_errors_name_the_column_and_the_file(tmp_path):
    df = pd.DataFrame({"a": ["1", "2", "x"], "b": [1.0, 2.0, 3.0]})
    path = _write(tmp_path, df)
    with pytest.raises(ValueError, match=r"'a'.*t\.csv.*declared numeric but holds text"):
        TabularDataModule(dataset="csv", path=path, numeric=["a"]).setup()
    with pytest.raises(ValueError, match=r"'nope' not found in .*t\.csv"):
        TabularDataModule(dataset="csv", path=path, categorical=["nope"]).setup()
    empty = tmp_path / "empty.csv"
    empty.write_text("a,b\n")
    with pytest.raises(ValueError, match=r"empty\.csv is empty"):
        TabularDataModule(dataset="csv", path=str(empty)).setup()
    with pytest.raises(DataError, match="missing.csv"):
        TabularDataModule(dataset="csv", path=str(tmp_path / "missing.csv")).setup()


def test_uninformative_and_mistyped_columns_are_named_before_training(tmp_path):
    rng = np.random.default_rng(0)
    base = pd.DataFrame({"x": rng.normal(size=60), "y": rng.choice(["a", "b"], 60)})
    path = _write(tmp_path, base.assign(empty=np.nan))
    with pytest.raises(DataError, match=r"t\.csv: column 'empty' has no values \(all 60 cells are empty\)"):
        TabularDataModule(dataset="csv", path=path).setup()
    path = _write(tmp_path, base.assign(same=7.0))
    with pytest.raises(DataError, match=r"t\.csv: column 'same' holds the same value '7\.0' in every row"):
        TabularDataModule(dataset="csv", path=path).setup()
    typo = base.assign(x=base["x"].astype(str))
    typo.loc[41, "x"] = "abc"  # 59 of 60 cells parse as numbers
    path = _write(tmp_path, typo)
    with pytest.raises(DataError, match=r"column 'x' is 98\.3% numbers but row 41 holds 'abc'"):
        TabularDataModule(dataset="csv", path=path).setup()
    dm = TabularDataModule(dataset="csv", path=path, categorical=["x"])  # declared: taken as it is
    dm.setup()
    assert "x" in dm.schema["categorical"]
    with pytest.raises(DataError, match=r"column 'nope' not found in .*t\.csv"):
        TabularDataModule(dataset="csv", path=path, numeric=["nope"]).setup()


def test_run_py_reports_a_data_error_in_one_line(tmp_path, capsys):
    import run

    path = _write(tmp_path, pd.DataFrame({"x": np.arange(30.0), "empty": np.nan}))
    argv = ["experiment=multimodal_tabular", "debug=fast", "logger=none", f"output_dir={tmp_path / 'o'}",
            "data.dataset=csv", f"data.path={path}"]
    assert run.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "column 'empty' has no values" in err and err.count("\n") == 1
