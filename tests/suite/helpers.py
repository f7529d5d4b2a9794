import os
import time

import lightning as L


class Crash(Exception):
    pass


class CrashAt(L.Callback):
    """Simulates a crash (node failure, OOM) at a given step of a run that was not resumed, so the
    resumed run keeps the same config and runs through."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.ckpt_path is None:
            raise Crash(f"simulated crash at step {self.step}")


class SignalAt(L.Callback):
    """Sends this process ``signal`` (9 = SIGKILL, 15 = SIGTERM) at a given step of a run that was not
    resumed."""

    def __init__(self, step: int, signal: int = 9) -> None:
        self.step, self.signal = step, signal

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.ckpt_path is None:
            os.kill(os.getpid(), self.signal)


class SlowDown(L.Callback):
    """Sleeps after every batch (a run that is still going when a second one starts)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(self.seconds)


class PoisonAt(L.Callback):
    """Writes a NaN into the first parameter's gradient at a given step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.global_step == self.step:
            next(pl_module.parameters()).grad.view(-1)[0] = float("nan")
