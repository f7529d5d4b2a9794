import shutil
from pathlib import Path

import pytest

import suite.config

REAL = Path(suite.config.__file__).resolve().parents[1] / "configs"

EXPERIMENTS = {
    "layered": """
description: composition-order probe
job: {_target_: tests.suite.jobs.affine, a: 1.0, b: 0.0}
trainer: {max_steps: 100}
scale: {paper: {trainer: {max_steps: 200}, job: {b: 2.0}}}
debug: {fast: {trainer: {max_steps: 3}}}
""",
    "plain": """
description: no debug overrides of its own
job: {_target_: tests.suite.jobs.affine}
trainer: {max_steps: 100}
""",
    "studied": """
description: a study of jobs
job: {_target_: tests.suite.jobs.affine, a: 1.0, b: 1.0}
claims: tests.suite.jobs:value_claims
study:
  variants: {small: {job.a: 1.0}, large: {job.a: 10.0}, huge: {job.a: 100.0}}
  grid: {job.b: [1.0, 2.0, 3.0]}
  seeds: [1, 2]
""",
    "consumer": """
description: requires an artifact
job: {_target_: tests.suite.jobs.affine, b: 5.0, source: "${artifacts.base}"}
requires: {base: {experiment: plain, overrides: {job.b: 7.0}}}
""",
    "bad_arg": """
description: a constructor argument that does not exist
module: {_target_: modules.diffusion.Diffusion, hidn: 3}
data: {_target_: datamodules.toy2d.Toy2DDataModule}
""",
    "swept": """
description: eval-only sweep over sampling steps
module: {_target_: modules.diffusion.Diffusion, hidden: 16, depth: 1, sample_steps: 5, eval_samples: 50,
         eval_repeats: 2}
data: {_target_: datamodules.toy2d.Toy2DDataModule, n_train: 256, n_val: 64, n_test: 64, batch_size: 64}
claims: experiments.diffusion_2d:claims
trainer: {max_steps: 3, val_check_interval: 3, enable_progress_bar: false}
study: {eval_sweep: {param: sample_steps, values: [2, 4, 8]}}
""",
}


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    """A private configs/ folder: the real base and presets plus the test experiments above."""
    root = tmp_path / "configs"
    for sub in ("trainer", "logger", "debug"):
        shutil.copytree(REAL / sub, root / sub)
    shutil.copy(REAL / "base.yaml", root / "base.yaml")
    (root / "experiment").mkdir()
    for name, text in EXPERIMENTS.items():
        (root / "experiment" / f"{name}.yaml").write_text(text)
    monkeypatch.setattr(suite.config, "CONFIG_DIR", root)
    return root
