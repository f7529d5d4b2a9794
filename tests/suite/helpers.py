import lightning as L


class Crash(Exception):
    pass


class CrashAt(L.Callback):
    """Simulates a crash (node failure, OOM) at a given step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Crash(f"simulated crash at step {self.step}")


class PoisonAt(L.Callback):
    """Writes a NaN into the first parameter's gradient at a given step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.global_step == self.step:
            next(pl_module.parameters()).grad.view(-1)[0] = float("nan")
