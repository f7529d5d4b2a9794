"""suite.smoke reports a failing experiment and exits 1 (a config error fails fast, before torch)."""

import pytest

from suite import smoke


def test_smoke_reports_failures(tmp_path, capsys):
    code = smoke.main(["-k", "diffusion_2d", "-j", "1", "--workdir", str(tmp_path), "module.no_such_arg=1"])
    out = capsys.readouterr().out
    assert code == 1
    assert "diffusion_2d" in out and "FAILED" in out and "no_such_arg" in out and "exit 2 (config or data error)" in out
    assert (tmp_path / "diffusion_2d" / "stderr.txt").read_text()


def test_smoke_unknown_subset_is_an_error(tmp_path):
    with pytest.raises(SystemExit):
        smoke.main(["-k", "no_experiment_has_this_name", "--workdir", str(tmp_path)])
