"""Prism's test-time evaluation split over two gloo processes gives the one-process metrics exactly."""

import json

import pytest

from suite.config import compose, split_argv
from suite.runner import run as run_cfg


def launch(out, *extra):
    groups, dotlist = split_argv(["experiment=prism_sudoku", "debug=fast", "logger=none",
                                  f"output_dir={out}", *extra])
    return run_cfg(compose(groups, dotlist), groups, quiet=True)


@pytest.mark.slow  # spawns two processes (~30 s here)
def test_two_processes_evaluate_the_same_model_to_the_same_metrics(tmp_path):
    launch(tmp_path / "one")
    # the same trained weights (resumed at max_steps: nothing more to train), tested by two processes
    launch(tmp_path / "two", "trainer=ddp_sim", f"ckpt_path={tmp_path / 'one' / 'checkpoints' / 'last.ckpt'}")
    one, two = (json.loads((tmp_path / d / "results.json").read_text())["metrics"] for d in ("one", "two"))
    tests = {k: v for k, v in one.items() if k.startswith("test/") and k != "test/eval_seconds"}
    assert tests["test/n_problems"] == 24 and "test/prism@4/acc" in tests
    assert {k: two[k] for k in tests} == tests
    assert (tmp_path / "two" / "accuracy_vs_nfe.csv").exists()
