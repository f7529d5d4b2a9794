"""A run's folder survives: kill -9 and SIGTERM mid-run, corrupt checkpoints, two runs into one
folder, a rerun with another config, an unwritable folder. Each case runs diffusion_2d at
debug=fast size in a subprocess (a real SIGKILL / SIGTERM) or in-process, and reads the folder."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import run

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["experiment=diffusion_2d", "logger=csv", "module.hidden=16", "module.depth=1", "data.n_train=256",
         "data.n_val=64", "data.n_test=64", "data.batch_size=64", "module.eval_samples=50",
         "module.eval_repeats=2", "module.sample_steps=5", "callbacks.samples.every_n_steps=0",
         "trainer.enable_progress_bar=false", "trainer.val_check_interval=4", "trainer.max_steps=14",
         "trainer.log_every_n_steps=1", "checkpoint.every_n_steps=3"]

DRIVER = """
import sys, json
from omegaconf import open_dict
import run
from suite.config import compose, split_argv
from suite.runner import run as run_cfg
argv, callbacks = json.loads(sys.argv[1]), json.loads(sys.argv[2])
groups, dotlist = split_argv(argv)
cfg = compose(groups, dotlist)
with open_dict(cfg):
    cfg.callbacks.update(callbacks)
try:
    run_cfg(cfg, groups, quiet=True)
except SystemExit as err:
    if type(err).__name__ == "SIGTERMException":
        sys.exit(143)
    raise
"""


def launch(out: Path, *extra: str, callbacks: dict | None = None, wait: bool = True):
    """run.py's pipeline in a subprocess, with extra callbacks (the CLI cannot add callbacks)."""
    argv = [*SMALL, f"output_dir={out}", *extra]
    cmd = [sys.executable, "-c", DRIVER, json.dumps(argv), json.dumps(callbacks or {})]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out_, err = proc.communicate(timeout=600)
    return proc.returncode, out_ + err


def weights(folder: Path) -> dict:
    return torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def text(path: Path) -> str:
    return path.read_text()


KILL = {"kill": {"_target_": "tests.suite.helpers.SignalAt", "step": 7, "signal": 9}}


def test_kill9_then_resume_keeps_every_log_row(tmp_path):
    ref = tmp_path / "ref"
    assert launch(ref)[0] == 0
    out = tmp_path / "killed"
    code, log = launch(out, callbacks=KILL)
    assert code == -signal.SIGKILL, log
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    code, log = launch(out, "ckpt_path=last", callbacks=KILL)
    assert code == 0, log
    assert text(out / "csv" / "metrics.csv") == text(ref / "csv" / "metrics.csv")
    assert text(out / "history.csv") == text(ref / "history.csv")
    assert same_weights(out, ref)
    assert len(text(ref / "csv" / "metrics.csv").splitlines()) > 14  # one row per step at least


@pytest.mark.slow  # three subprocess runs
def test_sigterm_writes_a_checkpoint_and_resumes(tmp_path):
    out = tmp_path / "term"
    term = {"kill": {"_target_": "tests.suite.helpers.SignalAt", "step": 7, "signal": 15}}
    code, log = launch(out, callbacks=term)
    assert code == 143, log
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 7
    assert launch(out, "ckpt_path=last", callbacks=term)[0] == 0
    ref = tmp_path / "ref"
    assert launch(ref)[0] == 0
    assert same_weights(out, ref)


@pytest.mark.slow  # three subprocess runs
def test_corrupt_newest_checkpoints_fall_back(tmp_path):
    out = tmp_path / "crashed"
    crash = {"crash": {"_target_": "tests.suite.helpers.CrashAt", "step": 7}}
    code, log = launch(out, callbacks=crash)
    assert code != 0 and "simulated crash" in log
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("*.ckpt")) == ["last.ckpt", "step=3.ckpt", "step=6.ckpt"]
    data = (ckpts / "last.ckpt").read_bytes()
    (ckpts / "last.ckpt").write_bytes(data[: len(data) // 2])  # truncated
    (ckpts / "step=6.ckpt").write_bytes(os.urandom(4096))  # random bytes
    code, log = launch(out, "ckpt_path=last", callbacks=crash)
    assert code == 0, log
    assert "skipping unreadable checkpoint" in log and "step=3.ckpt" in log and "Traceback" not in log
    ref = tmp_path / "ref"
    assert launch(ref)[0] == 0
    assert same_weights(out, ref)
    assert text(out / "history.csv") == text(ref / "history.csv")


def test_unreadable_checkpoints_exit_2_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(os.urandom(1000))
    assert run.main([*SMALL, f"output_dir={tmp_path / 'a'}", f"ckpt_path={bad}"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and err.count("\n") == 1
    out = tmp_path / "b"
    assert run.main([*SMALL, f"output_dir={out}", "trainer.max_steps=3"]) == 0
    capsys.readouterr()
    for ckpt in (out / "checkpoints").glob("*.ckpt"):
        ckpt.write_bytes(b"")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert run.main([*SMALL, f"output_dir={out}", "ckpt_path=last", "trainer.max_steps=6"]) == 2
    assert "none of the 2 checkpoints" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # a failed resume changes nothing


@pytest.mark.slow  # three subprocess runs
def test_second_run_into_a_busy_folder_exits_2(tmp_path, capsys):
    out = tmp_path / "busy"
    slow = {"slow": {"_target_": "tests.suite.helpers.SlowDown", "seconds": 0.5}}
    first = launch(out, "seed=0", callbacks=slow, wait=False)
    lock = out / ".genlab.lock"
    for _ in range(600):
        if lock.exists() or first.poll() is not None:
            break
        time.sleep(0.1)
    assert lock.exists(), first.communicate()
    holder = json.loads(lock.read_text())
    assert run.main([*SMALL, f"output_dir={out}", "seed=1"]) == 2
    err = capsys.readouterr().err
    assert f"pid {holder['pid']}" in err and "in use" in err and err.count("\n") == 1
    _, log = first.communicate(timeout=600)
    assert first.returncode == 0, log
    results = json.loads((out / "results.json").read_text())
    assert results["seed"] == 0 and "seed: 0" in text(out / "config.yaml")
    assert not lock.exists()


def test_stale_and_foreign_locks(tmp_path, capsys):
    out = tmp_path / "stale"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".genlab.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": "x"}))
    assert run.main([*SMALL, "trainer.max_steps=2", f"output_dir={out}"]) == 0
    assert "stale lock" in capsys.readouterr().out
    other = tmp_path / "foreign"
    other.mkdir()
    (other / ".genlab.lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "x"}))
    assert run.main([*SMALL, "trainer.max_steps=2", f"output_dir={other}"]) == 2
    assert "force_unlock=true" in capsys.readouterr().err
    assert run.main([*SMALL, "trainer.max_steps=2", f"output_dir={other}", "force_unlock=true"]) == 0


def test_rerun_with_another_config_exits_2_and_longer_horizon_extends(tmp_path, capsys):
    out = tmp_path / "rerun"
    assert run.main([*SMALL, f"output_dir={out}"]) == 0
    assert run.main([*SMALL, f"output_dir={out}", "seed=1"]) == 2
    err = capsys.readouterr().err
    assert "seed (0 there, 1 now)" in err
    assert run.main([*SMALL, f"output_dir={out}", "trainer.max_steps=20"]) == 2  # extending needs ckpt_path=last
    capsys.readouterr()
    assert run.main([*SMALL, f"output_dir={out}"]) == 0  # identical: reuses the finished run
    assert "finished earlier, reusing" in capsys.readouterr().out
    assert run.main([*SMALL, f"output_dir={out}", "ckpt_path=last", "trainer.max_steps=20"]) == 0
    assert "training on from the last checkpoint" in capsys.readouterr().out
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 20
    assert json.loads((out / "variant.json").read_text())["max_steps"] == 20


def test_unwritable_output_dir_exits_2_before_torch(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    argv = [*SMALL, f"output_dir={blocker / 'out'}"]
    code = f"import sys, run; rc = run.main({argv!r}); print(rc, 'torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["2", "False"], proc.stdout + proc.stderr
    assert str(blocker) in proc.stderr and "Traceback" not in proc.stderr
