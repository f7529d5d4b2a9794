"""SharpnessCallback: exact sharpness on a tiny model, thresholds per optimiser, model left untouched."""

from types import SimpleNamespace

import pytest
import torch

from callbacks.sharpness import SharpnessCallback, optimizer_stability
from core.optim.hessian import critical_sharpness
from core.optim.ivon import IVON


class TinyModule(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Dropout(0.0),
                                       torch.nn.Linear(5, 2))

    def compute_loss(self, batch, generator=None):
        noise = torch.randn(batch["y"].shape, generator=generator) * 0.1  # fixed by the seeded generator
        return 0.5 * ((self.net(batch["x"]) - batch["y"] - noise) ** 2).sum(-1).mean()


def _fake_trainer(module, optimizer, batch):
    dm = SimpleNamespace(probe_batch=lambda n: {k: v[:n] for k, v in batch.items()})
    return SimpleNamespace(datamodule=dm, optimizers=[optimizer], is_global_zero=True)


def _batch():
    g = torch.Generator().manual_seed(1)
    return {"x": torch.randn(20, 3, generator=g), "y": torch.randn(20, 2, generator=g)}


def _exact_top(module, batch, seed=0):
    """Top eigenvalue of torch.func.hessian of the probe loss (same fixed noise) w.r.t. all weights."""
    names = [n for n, _ in module.named_parameters()]
    shapes = [p.shape for p in module.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
    noise = torch.randn(batch["y"].shape, generator=torch.Generator().manual_seed(seed)) * 0.1

    def loss_of_flat(v):
        params, off = {}, 0
        for n, s in zip(names, shapes):
            params[n] = v[off:off + s.numel()].view(s)
            off += s.numel()
        out = torch.func.functional_call(module.net, {k[4:]: t for k, t in params.items()}, (batch["x"],))
        return 0.5 * ((out - batch["y"] - noise) ** 2).sum(-1).mean()

    return torch.linalg.eigvalsh(torch.func.hessian(loss_of_flat)(flat))[-1].item()


@pytest.mark.parametrize("training", [True, False])
def test_measure_is_exact_and_leaves_the_model_untouched(training):
    module, batch = TinyModule(), _batch()
    module.train(training)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    for p in module.parameters():
        p.grad = torch.full_like(p, 7.0)
    before = [p.detach().clone() for p in module.parameters()]
    cb = SharpnessCallback(probe_size=20, rtol=1e-8)
    out = cb.measure(_fake_trainer(module, opt, batch), module)
    assert out["lambda_max"] == pytest.approx(_exact_top(module, batch), rel=1e-5)
    assert out["threshold"] == pytest.approx(20.0) and out["lr_times_lambda"] == pytest.approx(0.1 * out["lambda_max"])
    assert module.training == training
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in module.parameters())
    assert all(torch.equal(p, b) for p, b in zip(module.parameters(), before))


def test_warm_start_cuts_the_cost():
    module, batch = TinyModule(), _batch()
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    cb = SharpnessCallback(probe_size=20)
    trainer = _fake_trainer(module, opt, batch)
    cold = cb.measure(trainer, module)["n_hvp"]
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(1.001)
    warm = cb.measure(trainer, module)["n_hvp"]
    assert warm < cold


def test_error_bar_brackets_the_exact_top_eigenvalue_and_reaches_the_csv(tmp_path):
    """lambda_max <= exact <= lambda_max + lambda_max_err at the default rtol; the error bar is a column."""
    module, batch = TinyModule(), _batch()
    cb = SharpnessCallback(probe_size=20)
    out = cb.measure(_fake_trainer(module, torch.optim.SGD(module.parameters(), lr=0.1), batch), module)
    exact = _exact_top(module, batch)
    assert 0 < out["lambda_max_err"] <= cb.rtol * out["lambda_max"]
    assert out["lambda_max"] <= exact * (1 + 1e-6) and exact <= (out["lambda_max"] + out["lambda_max_err"]) * (1 + 1e-6)
    cb.history.append({"step": 0, **out})
    cb._write_csv(SimpleNamespace(default_root_dir=str(tmp_path)))
    header = (tmp_path / "sharpness.csv").read_text().splitlines()[0].split(",")
    assert "lambda_max_err" in header and "lambda_max" in header


def test_variational_gd_logs_hcrit_from_the_window():
    module, batch = TinyModule(), _batch()
    opt = IVON(module.parameters(), lr=0.2, ess=1.0, hess_init=1e3, beta1=0.0, beta2=1.0, weight_decay=0.0,
               mc_samples=3)
    cb = SharpnessCallback(probe_size=20, window=2)
    trainer = _fake_trainer(module, opt, batch)
    first = cb.measure(trainer, module)
    second = cb.measure(trainer, module)
    gp = (first["grad_proj_sq"] + second["grad_proj_sq"]) / 2
    assert second["hcrit_proj"] == pytest.approx(critical_sharpness(0.2, 1e-3, 3, gp))
    assert second["hcrit_full"] == pytest.approx(critical_sharpness(0.2, 1e-3, 3, second["grad_sq"]))
    assert second["threshold"] == pytest.approx(10.0)


def test_thresholds_per_optimiser():
    w = [torch.nn.Parameter(torch.zeros(2))]
    assert optimizer_stability(torch.optim.SGD(w, lr=0.1, momentum=0.9))["threshold"] == pytest.approx(38.0)
    assert optimizer_stability(torch.optim.AdamW(w, lr=0.01))["threshold"] == pytest.approx(3800.0)
    ivon = optimizer_stability(IVON(w, lr=0.01, ess=10.0, hess_init=2.0, weight_decay=0.0))
    assert ivon["kind"] == "adaptive" and ivon["threshold"] == pytest.approx(3800.0)
    vgd = optimizer_stability(IVON(w, lr=0.1, ess=10.0, hess_init=2.0, beta1=0.0, beta2=1.0, weight_decay=0.0))
    assert vgd["kind"] == "vgd" and vgd["sigma_sq"] == pytest.approx(0.05) and vgd["threshold"] == 20.0
    with pytest.raises(ValueError, match="RMSprop"):
        optimizer_stability(torch.optim.RMSprop(w))


def test_adam_preconditioned_sharpness_logged():
    module, batch = TinyModule(), _batch()
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    module.compute_loss(batch).backward()
    opt.step()
    opt.zero_grad()
    out = SharpnessCallback(probe_size=20).measure(_fake_trainer(module, opt, batch), module)
    assert out["precond_lambda_max"] > out["lambda_max"]  # P = sqrt(v) + eps is small early on
    assert out["threshold"] == pytest.approx(3800.0)  # (2 + 2 b1) / ((1 - b1) lr) at b1 = 0.9, lr = 1e-2


def test_late_summary_means_the_late_window_and_skips_lr_zero():
    """Late means over steps >= 80% of max_step; H_crit from the window-mean |g|^2; a measurement at lr = 0
    (threshold inf, end of a cosine schedule) is left out."""
    import math

    cb = SharpnessCallback()
    lr, s2, ns = 0.2, 1e-4, 2
    for step, lam, gp in [(10, 1.0, 0.5), (80, 9.0, 0.2), (90, 11.0, 0.4)]:
        cb.history.append({"step": step, "lambda_max": lam, "lr_times_lambda": lr * lam, "threshold": 2 / lr,
                           "grad_proj_sq": gp, "grad_sq": 2 * gp, "sigma_sq": s2, "mc_samples": ns,
                           "hcrit_proj": 0.0, "hcrit_full": 0.0})
    cb.history.append({"step": 100, "lambda_max": 50.0, "lr_times_lambda": 0.0, "threshold": math.inf,
                       "grad_proj_sq": 9.0, "grad_sq": 9.0, "sigma_sq": 0.0, "mc_samples": 0.0})
    out = cb.late_summary(100)
    assert out["late_n"] == 2 and out["late_lambda_max"] == pytest.approx(10.0)
    assert out["late_hcrit_proj"] == pytest.approx(critical_sharpness(lr, s2, ns, 0.3))
    assert out["late_hcrit_full"] == pytest.approx(critical_sharpness(lr, s2, ns, 0.6))
    assert out["late_ratio_hcrit_proj"] == pytest.approx(10.0 / out["late_hcrit_proj"])
