"""The accuracy-vs-NFE table: ordering by method family and budget, the CSV round trip, the figure."""

import csv

from callbacks.accuracy_vs_nfe import family, figure, format_table, sorted_rows, write_csv

ROWS = [("prism@16", 68.0, 0.30, 0.02), ("single", 8.0, 0.20, 0.02), ("bon_sv@16", 144.0, 0.32, 0.02),
        ("prism@8", 38.0, 0.28, 0.02), ("oracle@16", 128.0, 0.50, 0.02), ("bon_sv@2", 18.0, 0.22, 0.02)]


def test_single_joins_best_of_n_and_rows_sort_by_family_then_nfe():
    assert family("single") == "bon_sv" and family("prism_no_sv@16") == "prism_no_sv"
    assert [r[0] for r in sorted_rows(ROWS)] == ["single", "bon_sv@2", "bon_sv@16", "oracle@16", "prism@8", "prism@16"]
    assert format_table(ROWS).splitlines()[1].split() == ["single", "8.0", "0.200", "0.020"]


def test_csv_round_trip_and_figure(tmp_path):
    write_csv(tmp_path / "t.csv", ROWS)
    with open(tmp_path / "t.csv") as f:
        got = list(csv.DictReader(f))
    assert len(got) == len(ROWS) and got[0]["method"] == "single" and float(got[2]["nfe_per_problem"]) == 144.0
    fig = figure(ROWS)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["bon_sv", "oracle", "prism"]
