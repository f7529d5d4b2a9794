"""Studies (variants x grid x seeds, eval sweeps, skip on rerun, claims) and artifacts."""

import json
from pathlib import Path

import run
from suite.config import compose, split_argv
from suite.study import expand


def calls() -> list[str]:
    path = Path("job_calls.txt")
    return path.read_text().splitlines() if path.exists() else []


def test_expand_names(config_dir):
    plan = expand(compose(*split_argv(["experiment=studied"])))
    names = [v.name for v in plan]
    assert len(names) == 3 * 3 * 2
    assert names[0] == "small__b=1.0__seed=1"
    assert plan[0].overrides == {"job.a": 1.0, "job.b": 1.0} and plan[0].seed == 1
    fast = [v.name for v in expand(compose(*split_argv(["experiment=studied", "debug=fast"])))]
    assert fast == ["small__b=1.0__seed=1", "small__b=2.0__seed=1", "large__b=1.0__seed=1",
                    "large__b=2.0__seed=1"]


def test_study_runs_claims_and_skips_finished(config_dir, tmp_path):
    out = tmp_path / "study"
    argv = ["experiment=studied", "debug=fast", "logger=none", f"output_dir={out}"]
    assert run.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["variants"]) == 4 and len(calls()) == 4
    var = results["variants"]["large__b=2.0__seed=1"]
    assert var["metrics"]["value"] == 10.0 * 1 + 2.0 and var["dir"] == "large__b=2.0__seed=1"
    assert var["overrides"] == {"job.a": 10.0, "job.b": 2.0} and var["seed"] == 1
    assert results["metrics"]["small__b=1.0__seed=1:value"] == 2.0
    claim = results["claims"]["values_positive"]
    assert claim == {"holds": True, "value": 2.0, "reference": 0.0, "detail": "min over 4 variants"}
    # an interrupted study: drop one finished variant, rerun: only that one runs again
    (out / "large__b=1.0__seed=1" / "variant.json").unlink()
    assert run.main(argv) == 0
    assert len(calls()) == 5 and calls()[-1].endswith("large__b=1.0__seed=1")


def test_single_run_is_main(config_dir, tmp_path):
    out = tmp_path / "one"
    assert run.main(["experiment=plain", "logger=none", f"output_dir={out}", "seed=3"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["variants"]) == ["main"] and results["variants"]["main"]["dir"] == "."
    assert results["metrics"] == {"value": 3.0} and results["seed"] == 3
    assert results["claims"] == {} and results["versions"]["torch"]


def test_artifact_produced_once_then_reused(config_dir, tmp_path):
    for i in range(2):
        out = tmp_path / f"consumer{i}"
        assert run.main(["experiment=consumer", "logger=none", f"output_dir={out}"]) == 0
        results = json.loads((out / "results.json").read_text())
        assert results["metrics"]["source_value"] == 7.0  # the producer ran with its override b=7
    producers = [c for c in calls() if "_artifacts" in c]
    assert len(producers) == 1 and "plain-" in producers[0]
    # a different debug level is a different artifact
    assert run.main(["experiment=consumer", "logger=none", "debug=fast", f"output_dir={tmp_path / 'c3'}"]) == 0
    assert len([c for c in calls() if "_artifacts" in c]) == 2


def test_eval_sweep_reuses_the_trained_model(config_dir, tmp_path):
    out = tmp_path / "swept"
    assert run.main(["experiment=swept", "logger=none", f"output_dir={out}"]) == 0
    results = json.loads((out / "results.json").read_text())
    names = set(results["variants"])
    assert names == {"main", "main@sample_steps=2", "main@sample_steps=4", "main@sample_steps=8"}
    assert results["variants"]["main@sample_steps=4"]["metrics"]["test/nfe_per_sample"] == 4.0
    assert results["variants"]["main"]["metrics"]["test/nfe_per_sample"] == 5.0
    assert (out / "main" / "history.csv").exists() and (out / "main" / "checkpoints" / "last.ckpt").exists()
