"""One run per output folder: a writable check, a lock held by global rank 0, and the config check.

* ``check_writable``: the folder (or its nearest existing parent) must be writable; checked before
  torch is imported.
* ``FolderLock``: ``<output_dir>/.genlab.lock`` holds host, pid and start time. A second run into a
  locked folder is refused (exit 2, naming the holder); a lock whose pid is dead on this host is taken
  over with a message; a lock held by another host is taken over only with ``force_unlock=true``.
  DDP's re-launched ranks never touch it (only global rank 0 calls this).
* ``check_rerun``: a rerun into a folder that has a ``config.yaml`` must resolve to the same config,
  ignoring ``ckpt_path``, ``logger.*`` and ``output_dir``; the one allowed difference is a larger
  ``trainer.max_steps`` with ``ckpt_path=last``, which extends the run.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from suite.errors import ConfigError

LOCK_NAME = ".genlab.lock"
IGNORED = ("ckpt_path", "logger", "output_dir", "artifacts", "force_unlock")


def check_writable(path: Path) -> None:
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"output_dir: {probe} exists and is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".genlab-write-test-"):
            pass
    except OSError as err:
        raise ConfigError(f"output_dir: cannot write into {probe} ({err.strerror or err}); "
                          f"choose another folder with output_dir=PATH") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderLock:
    def __init__(self, folder: Path, force: bool = False) -> None:
        self.path, self.force, self.held = Path(folder) / LOCK_NAME, force, False

    def _holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_or_refuse(me)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise ConfigError(f"output_dir: could not take the lock {self.path}")

    def _take_over_or_refuse(self, me: dict[str, Any]) -> None:
        holder = self._holder()
        if holder is None:  # written by a process that died mid-write, or unreadable
            print(f"[genlab] {self.path}: unreadable lock file; taking it over")
        elif holder.get("host") == me["host"] and holder.get("pid") == me["pid"]:
            raise ConfigError(f"output_dir: {self.path.parent} is already locked by this process "
                              f"(a nested run into the same folder)")
        elif holder.get("host") == me["host"] and not _alive(int(holder.get("pid", -1))):
            print(f"[genlab] {self.path}: stale lock of pid {holder.get('pid')} (no longer running, "
                  f"started {holder.get('started')}); taking it over")
        elif holder.get("host") != me["host"] and self.force:
            print(f"[genlab] {self.path}: force_unlock=true: taking over the lock of pid {holder.get('pid')} "
                  f"on host {holder.get('host')}")
        else:
            hint = "" if holder.get("host") == me["host"] else (
                "; if that run is gone, rerun with force_unlock=true")
            raise ConfigError(f"output_dir: {self.path.parent} is in use by pid {holder.get('pid')} on host "
                              f"{holder.get('host')} since {holder.get('started')} (lock file {self.path}){hint}")
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held:
            holder = self._holder()
            if holder is not None and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False


def _flat(cfg: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(cfg, dict):
        out: dict[str, Any] = {}
        for k, v in cfg.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: cfg}


def check_rerun(cfg: DictConfig, folder: Path) -> bool:
    """Compare ``cfg`` with the folder's config.yaml. Returns True when the run is extended (a larger
    ``trainer.max_steps`` with ``ckpt_path=last``); raises ConfigError on any other difference."""
    saved_path = folder / "config.yaml"
    if not saved_path.exists():
        return False
    try:
        saved = OmegaConf.to_container(OmegaConf.load(saved_path), resolve=True)
    except Exception as err:  # noqa: BLE001 - any parse failure is reported the same way
        raise ConfigError(f"output_dir: {saved_path} cannot be read ({type(err).__name__}); "
                          f"use another output_dir") from None
    now = OmegaConf.to_container(cfg, resolve=True)
    a = {k: v for k, v in _flat(saved).items() if k.split(".")[0] not in IGNORED}
    b = {k: v for k, v in _flat(now).items() if k.split(".")[0] not in IGNORED}
    differ = sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))
    extends = False
    if differ == ["trainer.max_steps"] and cfg.ckpt_path == "last" and b[differ[0]] > a[differ[0]]:
        print(f"[genlab] ckpt_path=last with trainer.max_steps {a[differ[0]]} -> {b[differ[0]]}: training on "
              f"from the last checkpoint to the new horizon (schedules tied to max_steps, such as a cosine "
              f"decay, are recomputed for the new horizon from the resumed step on)")
        extends = True
    elif differ:
        shown = ", ".join(f"{k} ({a.get(k, '<absent>')!r} there, {b.get(k, '<absent>')!r} now)" for k in differ[:3])
        more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
        raise ConfigError(f"output_dir: {folder} holds a run with another config: {shown}{more}; use a new "
                          f"output_dir, or the same settings (only ckpt_path=last with a larger "
                          f"trainer.max_steps may differ)")
    return extends
