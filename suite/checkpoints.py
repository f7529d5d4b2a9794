"""Checkpoints that can be trusted: written atomically, the last k kept, an unreadable one skipped.

* ``AtomicCheckpointIO`` writes every checkpoint to a temporary file in the same folder, fsyncs it and
  renames it over the target, so a crash or ``kill -9`` mid-write leaves the previous file whole.
* ``checkpoint_callbacks`` keeps ``checkpoint.keep`` step-stamped files (``step=N.ckpt``) beside
  ``last.ckpt``.
* ``resolve_ckpt`` turns ``ckpt_path`` into a file that loads: with ``last``, the newest readable of
  ``last.ckpt`` and the step-stamped files (a file that fails to load is named in one line and
  skipped); with an explicit path, that file or a ``ConfigError`` naming it.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from suite.errors import ConfigError

STEP_FILE = re.compile(r"step=(\d+)(-v\d+)?\.ckpt$")


def _atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


class AtomicCheckpointIO(TorchCheckpointIO):
    """A Lightning ``CheckpointIO`` plugin whose saves are atomic (temp file, fsync, rename). A
    module-level class, so that ``ddp_spawn`` can pickle the trainer's plugins."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO takes no storage_options, got {storage_options!r}")
        _atomic_torch_save(checkpoint, Path(path))


def checkpoint_callbacks(dirpath: Path, every_n_steps: int | None, keep: int, every_minutes: float | None) -> list:
    """``last.ckpt`` plus the ``keep`` newest ``step=N.ckpt`` files (by global step)."""
    from datetime import timedelta

    from lightning.pytorch.callbacks import ModelCheckpoint

    common = dict(dirpath=str(dirpath), save_last=True, monitor="step", mode="max", filename="step={step}",
                  auto_insert_metric_name=False, save_top_k=keep)
    out = [ModelCheckpoint(every_n_train_steps=every_n_steps, **common)]
    if every_minutes:  # a wall-clock cadence refreshes last.ckpt only
        out.append(ModelCheckpoint(dirpath=str(dirpath), save_last=True, save_top_k=0,
                                   train_time_interval=timedelta(minutes=every_minutes)))
    return out


def candidates(ckpt_dir: Path) -> list[Path]:
    """``last.ckpt`` first, then the step-stamped files, newest step first."""
    stamped = [p for p in ckpt_dir.glob("step=*.ckpt") if STEP_FILE.search(p.name)]
    stamped.sort(key=lambda p: int(STEP_FILE.search(p.name).group(1)), reverse=True)
    last = ckpt_dir / "last.ckpt"
    return ([last] if last.exists() else []) + stamped


def load_error(path: Path) -> str | None:
    """Why ``path`` cannot be read as a checkpoint (None if it loads with ``weights_only=True``)."""
    try:
        # mmap: the structure is parsed (a truncated or foreign file fails) without reading every tensor
        # into memory, which Lightning then does once when it resumes
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"{type(err).__name__}: {first[:160]}"
    if not isinstance(state, dict) or "state_dict" not in state:
        return "not a Lightning checkpoint (no state_dict)"
    return None


def resolve_ckpt(ckpt_path: str | None, vdir: Path) -> str | None:
    """The checkpoint file to resume from, or None to start from scratch."""
    if ckpt_path is None:
        return None
    if ckpt_path != "last":
        path = Path(ckpt_path)
        if not path.exists():
            raise ConfigError(f"ckpt_path: {path} does not exist")
        why = load_error(path)
        if why:
            raise ConfigError(f"ckpt_path: {path} cannot be read as a checkpoint ({why})")
        return str(path)
    found = candidates(vdir / "checkpoints")
    if not found:
        print(f"[genlab] ckpt_path=last: no checkpoint in {vdir / 'checkpoints'}; starting from scratch")
        return None
    for i, path in enumerate(found):
        why = load_error(path)
        if why is None:
            if i:
                print(f"[genlab] ckpt_path=last: resuming from {path}, the newest checkpoint that loads")
            return str(path)
        print(f"[genlab] ckpt_path=last: skipping unreadable checkpoint {path} ({why})")
    raise ConfigError(f"ckpt_path=last: none of the {len(found)} checkpoints in {vdir / 'checkpoints'} loads")
