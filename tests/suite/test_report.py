"""The README table's wall time of a resumed study is not its last (near-instant) invocation's."""

from suite.report import run_seconds


def test_resumed_study_reports_at_least_its_variants_fit_time():
    resumed = {"wall_s": 1.0, "metrics": {"a__seed=0:time/fit_s": 100.0, "b__seed=0:time/fit_s": 50.0,
                                          "a__seed=0:test/loss": 9.0}}
    assert run_seconds(resumed) == 150.0
    assert run_seconds({"wall_s": 75.0, "metrics": {"time/fit_s": 60.0}}) == 75.0
    assert run_seconds({"wall_s": 3.0}) == 3.0
