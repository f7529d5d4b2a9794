"""Every experiment in configs/experiment runs end to end under debug=fast, and every scale=paper
config composes. New experiments are covered automatically."""

import json

import pytest

import run
from suite.config import choices, compose, split_argv
from suite.targets import check_all

EXPERIMENTS = choices("experiment")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_debug_fast_end_to_end(name, tmp_path):
    out = tmp_path / "out"
    assert run.main([f"experiment={name}", "debug=fast", "logger=none", f"output_dir={out}"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["experiment"] == name
    assert set(results) >= {"experiment", "metrics", "claims", "variants", "seed", "wall_s", "versions", "debug"}
    assert results["debug"] == "fast" and "failure" not in results
    assert results["variants"], "no variant ran"
    for claim in results["claims"].values():
        assert set(claim) == {"holds", "value", "reference", "detail"}
        assert isinstance(claim["holds"], bool) and claim["detail"]
    assert (out / "config.yaml").exists()


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_paper_scale_composes(name):
    groups, dotlist = split_argv([f"experiment={name}", "scale=paper", "trainer=gpu"])
    cfg = compose(groups, dotlist)
    check_all(cfg)
    assert cfg.scale == "paper"
    assert cfg.trainer.precision == "bf16-mixed"


def test_paper_scale_debug_fast_stays_fast():
    cfg = compose(*split_argv(["scale=paper", "debug=fast"]))
    assert cfg.trainer.max_steps == 5


def test_every_experiment_has_a_description():
    for name in EXPERIMENTS:
        cfg = compose(*split_argv([f"experiment={name}"]))
        assert cfg.description, f"{name} has no description (shown by --list)"
