"""Composition order and every error path of the command line."""

import subprocess
import sys
from pathlib import Path

import pytest

import run
from suite.config import compose, split_argv
from suite.errors import ConfigError
from suite.targets import _accepts, check_all

ROOT = Path(run.__file__).resolve().parent


def cfg_of(*argv):
    return compose(*split_argv(list(argv)))


def test_composition_order(config_dir):
    assert cfg_of("experiment=layered").trainer.max_steps == 100  # experiment over base
    assert cfg_of("experiment=layered", "scale=paper").trainer.max_steps == 200  # scale over experiment
    assert cfg_of("experiment=layered", "debug=fast").trainer.max_steps == 3  # own debug over global debug
    assert cfg_of("experiment=layered", "scale=paper", "debug=fast").trainer.max_steps == 3  # debug last
    assert cfg_of("experiment=layered", "scale=paper", "debug=fast").job.b == 2.0  # scale kept
    assert cfg_of("experiment=plain", "debug=fast").trainer.max_steps == 5  # global debug over experiment
    assert cfg_of("experiment=layered", "debug=fast", "trainer.max_steps=7").trainer.max_steps == 7  # CLI last
    cfg = cfg_of("experiment=layered", "trainer=ddp_sim", "logger=csv")
    assert (cfg.trainer.strategy, cfg.trainer.devices, cfg.logger.type) == ("ddp_spawn", 2, "csv")
    assert cfg.trainer.max_steps == 100  # a preset owns hardware keys only


@pytest.mark.parametrize("argv,message", [
    (["experiment=nope"], "experiment=nope: unknown experiment; valid choices: "),
    (["trainer=tpu"], "trainer=tpu: unknown trainer (did you mean gpu?); valid choices: cpu, ddp, ddp_sim, fsdp, gpu"),
    (["logger=tensorboard"], "valid choices: csv, none, wandb"),
    (["scale=huge"], "valid choices: small, paper"),
    (["trainer.max_step=5"], "trainer.max_step: unknown key (did you mean trainer.max_steps?)"),
    (["modul.lr=1"], "modul.lr: unknown key (did you mean module?)"),
    (["seed=abc"], "seed: expected int, got str 'abc'"),
    (["trainer.max_steps=1.5"], "trainer.max_steps: expected int, got float 1.5"),
    (["seed="], "seed: expected int, got no value (null)"),
    (["logger.mode=sometimes"], "logger.mode: 'sometimes' is not one of auto, online, offline, disabled"),
    (["module.hidden=wide"], "module.hidden: expected int, got str 'wide' (argument of modules.diffusion.Diffusion)"),
    (["module.process=5"], "module.process: expected str, got int 5"),
    (["max_steps"], "argument 'max_steps': expected key=value"),
])
def test_errors_exit_2_with_the_key(argv, message, capsys):
    assert run.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err and err.count("\n") == 1


def test_bad_target_argument(config_dir, capsys):
    assert run.main(["experiment=bad_arg"]) == 2
    err = capsys.readouterr().err
    assert "module.hidn: modules.diffusion.Diffusion has no argument 'hidn' (did you mean 'hidden'?)" in err


def test_missing_required_and_bad_module(config_dir):
    cfg = cfg_of("experiment=plain")
    cfg.job._target_ = "tests.suite.jobs.nothing"
    with pytest.raises(ConfigError, match="defines no 'nothing'"):
        check_all(cfg)
    cfg.job._target_ = "tests.suite.nomodule.affine"
    with pytest.raises(ConfigError, match="module 'tests.suite.nomodule' not found"):
        check_all(cfg)


def test_type_hints():
    assert _accepts("float", 3) and not _accepts("int", 3.0) and not _accepts("int", True)
    assert _accepts("float | None", None) and _accepts("Optional[int]", 2) and not _accepts("Optional[int]", "x")
    assert _accepts("list[int] | None", [1]) and not _accepts("list[int]", 1)
    assert _accepts("str", "${artifacts.base}")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_list_and_errors_do_not_import_torch():
    """--list, --help and config errors answer without importing torch or Lightning."""
    code = ("import sys, run\n"
            "for argv in (['--list'], ['--help'], ['trainer.max_step=1'], ['trainer=tpu'], ['module.hidden=x']):\n"
            "    run.main(argv)\n"
            "assert 'torch' not in sys.modules and 'lightning' not in sys.modules, 'heavy import'\n"
            "print('clean')")
    proc = _python(code)
    assert proc.returncode == 0 and "clean" in proc.stdout, proc.stderr
    assert "diffusion_2d" in proc.stdout


def test_cli_exit_code_and_flags():
    proc = subprocess.run([sys.executable, "run.py", "trainer.max_step=1"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: trainer.max_step")
    assert run.main(["--bogus"]) == 2


def test_paper_scale_with_global_debug_only(config_dir):
    """An experiment whose scale=paper sets max_steps and whose debug.fast does not still runs fast."""
    (config_dir / "experiment" / "paper_only.yaml").write_text(
        "description: x\njob: {_target_: tests.suite.jobs.affine}\nscale: {paper: {trainer: {max_steps: 9000}}}\n")
    assert cfg_of("experiment=paper_only", "scale=paper").trainer.max_steps == 9000
    assert cfg_of("experiment=paper_only", "scale=paper", "debug=fast").trainer.max_steps == 5


def test_online_wandb_without_credentials_fails_fast(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    argv = ["debug=fast", "logger.mode=online", f"output_dir={tmp_path / 'o'}"]
    assert run.main(argv) == 2
    assert "logger.mode=online: no W&B credentials" in capsys.readouterr().err


def test_wandb_offline_by_default_without_a_key(monkeypatch):
    from suite.loggers import wandb_mode

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode(cfg_of()) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode(cfg_of()) == "online"


def _write(config_dir, name, text):
    path = config_dir / "experiment" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_base_files_merge_first_and_nest(config_dir):
    """``base:`` files merge under the experiment in order, each under its own includes; scale/debug
    blocks from a base file apply like the experiment's own."""
    _write(config_dir, "shared/deep.yaml", "job: {a: 1.0, b: 1.0, tags: [x, y]}\ntrainer: {max_steps: 11}\n")
    _write(config_dir, "_common.yaml", "base: shared/deep\njob: {_target_: tests.suite.jobs.affine, b: 2.0}\n"
                                       "debug: {fast: {trainer: {max_steps: 4}}}\nscale: {paper: {job: {a: 9.0}}}\n")
    _write(config_dir, "_other.yaml", "job: {b: 3.0}\ntrainer: {max_steps: 22}\n")
    _write(config_dir, "included.yaml", "description: uses shared blocks\nbase: [_common.yaml, _other.yaml]\n"
                                        "job: {tags: [z]}\ndebug: {fast: {job: {b: 5.0}}}\n")
    cfg = cfg_of("experiment=included")
    assert (cfg.job.a, cfg.job.b, list(cfg.job.tags), cfg.trainer.max_steps) == (1.0, 3.0, ["z"], 22)
    assert "base" not in cfg and cfg.job._target_ == "tests.suite.jobs.affine"
    fast = cfg_of("experiment=included", "debug=fast")
    assert (fast.trainer.max_steps, fast.job.b) == (4, 5.0)  # the base's debug block and the file's own
    assert cfg_of("experiment=included", "scale=paper").job.a == 9.0


def test_shared_files_are_not_experiments(config_dir, capsys):
    _write(config_dir, "_common.yaml", "job: {a: 1.0}\n")
    _write(config_dir, "shared/deep.yaml", "job: {a: 1.0}\n")
    from suite.config import choices

    assert "_common" not in choices("experiment") and "deep" not in choices("experiment")
    assert "layered" in choices("experiment")
    assert run.main(["--list"]) == 0 and "_common" not in capsys.readouterr().out
    with pytest.raises(ConfigError, match="unknown experiment"):
        split_argv(["experiment=_common"])


@pytest.mark.parametrize("base,message", [
    ("_nope.yaml", "configs/experiment/withbase.yaml: base: _nope.yaml: no such file configs/experiment/_nope.yaml"),
    ("[_loop]", "configs/experiment/_loop.yaml: base: withbase.yaml: an include cycle"),
    ("[3]", "base: expected a file name or a list of file names, got 3"),
])
def test_bad_base_names_the_file_and_the_key(config_dir, base, message):
    _write(config_dir, "_loop.yaml", "base: withbase.yaml\njob: {a: 1.0}\n")
    _write(config_dir, "withbase.yaml", f"description: x\nbase: {base}\njob: {{_target_: tests.suite.jobs.affine}}\n")
    with pytest.raises(ConfigError) as err:
        cfg_of("experiment=withbase")
    assert message in str(err.value)


def test_every_shared_experiment_file_is_included():
    """A ``_name.yaml`` in configs/experiment is a block some experiment names in ``base:``."""
    from suite.config import CONFIG_DIR, choices, load_yaml

    named = set()
    for name in choices("experiment"):
        base = load_yaml(CONFIG_DIR / "experiment" / f"{name}.yaml").get("base") or []
        named.update([base] if isinstance(base, str) else base)
    shared = {p.name for p in (CONFIG_DIR / "experiment").glob("_*.yaml")}
    assert shared and shared <= named, shared - named


def test_a_callback_added_on_the_command_line():
    """``callbacks.NAME._target_=...`` adds a callback the experiment does not configure; its
    arguments are checked against the constructor; without a ``_target_`` the key stays unknown."""
    target = "callbacks.sharpness._target_=callbacks.sharpness.SharpnessCallback"
    cfg = cfg_of("experiment=diffusion_2d", target, "callbacks.sharpness.every_n_steps=2")
    assert (cfg.callbacks.sharpness.every_n_steps, cfg.callbacks.samples.n) == (2, 1000)
    check_all(cfg)
    with pytest.raises(ConfigError, match="callbacks.sharpness.every_n_step: unknown key"):
        cfg_of("experiment=diffusion_2d", target, "callbacks.sharpness.every_n_step=2")
    with pytest.raises(ConfigError, match="callbacks.sharpness.every_n_steps: unknown key"):
        cfg_of("experiment=diffusion_2d", "callbacks.sharpness.every_n_steps=2")


def test_unknown_experiment_and_preset_get_a_did_you_mean():
    with pytest.raises(ConfigError, match=r"experiment=difusion_2d: unknown experiment \(did you mean diffusion_2d\?\)"):
        compose(*split_argv(["experiment=difusion_2d"]))
    with pytest.raises(ConfigError, match=r"trainer=dpp: unknown trainer \(did you mean ddp\?\)"):
        split_argv(["trainer=dpp"])
