"""Every W&B sweep in configs/sweeps names keys and values that run.py accepts."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from suite.config import CONFIG_DIR, compose, split_argv
from suite.targets import check_all

SWEEPS = sorted((CONFIG_DIR / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_parameters_compose(path: Path):
    sweep = OmegaConf.to_container(OmegaConf.load(path))
    assert sweep["program"] == "run.py" and "${args_no_hyphens}" in sweep["command"]
    fixed = [a for a in sweep["command"] if "=" in a and not a.startswith("$")]
    for key, spec in sweep["parameters"].items():
        values = spec.get("values") or [spec.get("min"), spec.get("max")]
        for value in values:
            cfg = compose(*split_argv(fixed + [f"{key}={value}"]))
            check_all(cfg)
            assert OmegaConf.select(cfg, key) == value
