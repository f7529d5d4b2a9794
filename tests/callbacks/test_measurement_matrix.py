"""The measurement callbacks on every experiment that configures them (README, "Measurement callbacks"):
each (callback, experiment) pair runs under debug=fast and its metric is read back from results.json,
and the callbacks leave the training loss curve bit-identical."""

import csv
import json
import math

import lightning as L
import pytest
import torch

import run
from suite.config import choices, compose, split_argv

# the metric each callback writes into results.json
METRIC = {
    "callbacks.memorization.MemorizationCallback": "memorization/rate",
    "callbacks.geneval.GenEvalCallback": "test/geneval/ground_truth",
    "callbacks.sharpness.SharpnessCallback": "sharpness/lambda_max",
}
SHARPNESS = ["callbacks.sharpness._target_=callbacks.sharpness.SharpnessCallback",
             "callbacks.sharpness.every_n_steps=2", "callbacks.sharpness.probe_size=32",
             "callbacks.sharpness.max_iter=10"]
OPT_IN = {"diffusion_2d": SHARPNESS}  # a callback added on the command line: it works on any module


def configured_pairs() -> list[tuple[str, str]]:
    pairs = []
    for name in choices("experiment"):
        cfg = compose(*split_argv([f"experiment={name}", "debug=fast"]))
        pairs += [(target, name) for target in METRIC
                  if any(c is not None and c._target_ == target for c in cfg.callbacks.values())]
    return pairs


PAIRS = configured_pairs() + [("callbacks.sharpness.SharpnessCallback", name) for name in OPT_IN]
FAST = {("callbacks.memorization.MemorizationCallback", "t2i_shapes"),
        ("callbacks.geneval.GenEvalCallback", "t2i_shapes"),
        ("callbacks.sharpness.SharpnessCallback", "diffusion_2d")}
_RUNS: dict[tuple, dict] = {}


def run_fast(tmp_path_factory, name: str, *extra: str) -> tuple[dict, object]:
    """results.json and the output folder of ``experiment=name debug=fast`` (one run per argv)."""
    key = (name, *extra)
    if key not in _RUNS:
        out = tmp_path_factory.mktemp(name)
        argv = [f"experiment={name}", "debug=fast", "logger=none", f"output_dir={out}", *extra]
        assert run.main(argv) == 0
        _RUNS[key] = (json.loads((out / "results.json").read_text()), out)
    return _RUNS[key]


def test_the_matrix_covers_each_callback_and_the_issue_pairs():
    expected = {("callbacks.memorization.MemorizationCallback", n) for n in
                ("t2i_shapes", "ridge_mnist_latent", "momentum_digits", "relu_diffusion_memorization",
                 "multimodal_text_image")}
    expected |= {("callbacks.geneval.GenEvalCallback", n) for n in
                 ("t2i_shapes", "multimodal_text_image", "rl_geneval")}
    assert expected <= set(PAIRS), expected - set(PAIRS)
    assert {t for t, _ in FAST} == set(METRIC) and FAST <= set(PAIRS)


@pytest.mark.parametrize("target,name", [
    pytest.param(t, n, id=f"{t.rsplit('.', 1)[1]}-{n}", marks=() if (t, n) in FAST else pytest.mark.slow)
    for t, n in PAIRS])
def test_callback_metric_reaches_results(tmp_path_factory, target, name):
    results, out = run_fast(tmp_path_factory, name, *OPT_IN.get(name, []))
    for variant, body in results["variants"].items():
        if "@" in variant:  # eval-sweep points re-test a trained model: training-time metrics are not theirs
            continue
        value = body["metrics"].get(METRIC[target])
        assert value is not None and math.isfinite(value), (variant, sorted(body["metrics"]))
    if target.endswith("SharpnessCallback"):  # measured at the configured cadence
        rows = list(csv.DictReader(open(next(out.rglob("sharpness.csv")))))
        assert rows and all(int(r["step"]) % 2 == 0 and float(r["n_hvp"]) >= 1 for r in rows)


class NudgeOnce(L.Callback):
    """A control that is not measurement-only: it moves every weight by 1e-5 after step 2."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 2:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.add_(1e-5)


def losses(out) -> list[tuple[str, str]]:
    rows = list(csv.DictReader(open(next(out.rglob("history.csv")))))
    return [(r["step"], r["train/loss"]) for r in rows if r.get("train/loss")]


@pytest.mark.parametrize("name,measure,remove", [
    ("diffusion_2d", SHARPNESS + ["callbacks.memorization._target_=callbacks.memorization.MemorizationCallback",
                                  "callbacks.memorization.every_n_steps=2", "callbacks.memorization.n=16"],
     []),
    pytest.param("t2i_shapes", ["callbacks.memorization.every_n_steps=2", "trainer.val_check_interval=2"],
                 # GenEval stays for the claims, measured at test only
                 ["callbacks.memorization=null", "callbacks.geneval.every_n_val=0", "trainer.val_check_interval=2"],
                 marks=pytest.mark.slow),
])
def test_callbacks_leave_the_loss_curve_bit_identical(tmp_path_factory, name, measure, remove):
    """Measurements between training steps (every 2 steps, GenEval at each validation) draw from the
    callbacks' own generators: train/loss at every step equals a run without them, digit for digit."""
    _, with_callbacks = run_fast(tmp_path_factory, name, *measure)
    _, without = run_fast(tmp_path_factory, name, *remove)
    curve = losses(with_callbacks)
    assert len(curve) >= 4 and curve == losses(without)
    # the comparison sees every weight moved by 1e-5 after step 2
    _, nudged = run_fast(tmp_path_factory, name, *remove, f"callbacks.nudge._target_={__name__}.NudgeOnce")
    assert losses(nudged)[:2] == curve[:2] and losses(nudged) != curve
