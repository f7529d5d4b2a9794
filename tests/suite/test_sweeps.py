"""Every W&B sweep in configs/sweeps names keys and values that run.py accepts, a metric the run logs
(one of the suite's metric families) with a goal, and is one W&B run per trial: for an experiment with
a study, the sweep switches the study off and fixes one of its variants' overrides."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from suite.config import CONFIG_DIR, compose, split_argv
from suite.loggers import FAMILIES
from suite.targets import check_all

SWEEPS = sorted((CONFIG_DIR / "sweeps").glob("*.yaml"))


def test_the_sweeps_of_the_issue_exist():
    assert {"diffusion_2d", "t2i_shapes", "vl_eos_mlp", "multimodal_tabular"} <= {p.stem for p in SWEEPS}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_parameters_compose(path: Path):
    sweep = OmegaConf.to_container(OmegaConf.load(path))
    assert sweep["program"] == "run.py" and "${args_no_hyphens}" in sweep["command"]
    fixed = [a for a in sweep["command"] if "=" in a and not a.startswith("$")]
    assert f"experiment={path.stem}" in fixed
    for key, spec in sweep["parameters"].items():
        values = spec.get("values") or [spec.get("min"), spec.get("max")]
        for value in values:
            cfg = compose(*split_argv(fixed + [f"{key}={value}"]))
            check_all(cfg)
            assert OmegaConf.select(cfg, key) == value
            assert cfg.study is None, "a sweep trial is one W&B run: study=null"


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_names_its_metric_and_goal(path: Path):
    sweep = OmegaConf.to_container(OmegaConf.load(path))
    metric = sweep["metric"]
    assert metric["goal"] in ("minimize", "maximize")
    assert metric["name"].split("/")[0] in FAMILIES, metric["name"]


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_a_study_sweep_runs_one_of_its_variants(path: Path):
    """``study=null`` plus the overrides of one variant of the experiment's study (fixed in the command
    or swept), so a trial trains what that variant trains."""
    sweep = OmegaConf.to_container(OmegaConf.load(path))
    fixed = [a for a in sweep["command"] if "=" in a and not a.startswith("$")]
    study = compose(*split_argv([a for a in fixed if not a.startswith("study=")])).study
    if study is None or not study.get("variants"):
        return
    assert "study=null" in fixed
    given = dict(a.split("=", 1) for a in fixed)
    variants = OmegaConf.to_container(study.variants)
    matching = [name for name, over in variants.items()
                if all(k in sweep["parameters"] or str(given.get(k)) == str(v) for k, v in over.items())]
    assert matching, f"the fixed overrides {given} match no variant of {sorted(variants)}"
