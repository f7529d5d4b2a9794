"""Edge-of-stability modules: the toy's closed forms, the full-batch GD -> VGD switch under Lightning,
the variational classifier's calibration metric, and IVON under Lightning's closure."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from callbacks.sharpness import SharpnessCallback
from core.optim.ivon import IVON
from datamodules.base import IndexedTensorDataset
from modules.eos import FullBatchEoS, ProductModel


@pytest.mark.parametrize("init", [[1.3, -0.7], [2.0, 0.6, 0.3], [0.5, 1.1, -0.9, 1.4]])
def test_product_model_closed_forms_match_autograd(init):
    m = ProductModel(init, target=0.8)
    w = m.w.detach().clone()
    torch.testing.assert_close(m.gradient(), torch.func.grad(m.loss)(w))
    torch.testing.assert_close(m.hessian(), torch.func.hessian(m.loss)(w))


def test_toy_gd_below_edge_converges_to_the_gradient_flow_minimum():
    """With 2/lr far above every sharpness on the path, GD just converges (u^2 - v^2 is conserved by the
    flow, so the limit has u^2 - v^2 = const, uv = y): no edge-of-stability drift."""
    from experiments.vl_eos_toy import trajectory
    rec = trajectory([1.5, 0.5], 1.0, 0.05, 500)
    u, v = rec["w"][-1]
    assert abs(u * v - 1.0) < 1e-4
    assert abs((u * u - v * v) - (1.5**2 - 0.5**2)) < 0.05
    assert rec["sharpness"][-1] == pytest.approx(u * u + v * v, rel=1e-3)


class _DM(L.LightningDataModule):
    def __init__(self, n=48):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 12, generator=g), torch.randint(0, 3, (n,), generator=g)

    def train_tensor(self):
        return self.x

    def train_dataloader(self):
        return DataLoader(IndexedTensorDataset(self.x, y=self.y), batch_size=len(self.x))


def _trainer(tmp_path, steps, callbacks=()):
    return L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=list(callbacks))


def test_full_batch_vgd_switches_from_gd_and_logs_sharpness(tmp_path):
    torch.manual_seed(0)
    module = FullBatchEoS(in_dim=12, widths=[8], out_dim=3, optimizer="vgd", lr=0.1, sigma_sq=1e-3,
                          mc_samples=2, switch_step=2)
    dm = _DM()
    torch.manual_seed(0)
    ref = FullBatchEoS(in_dim=12, widths=[8], out_dim=3, optimizer="gd", lr=0.1)
    cb = SharpnessCallback(every_n_steps=1, probe_size=48, plot=False)
    trainer = _trainer(tmp_path, 4, [cb])
    trainer.fit(module, datamodule=dm)
    assert torch.allclose(module.input_mean, dm.x.mean(0))
    kinds = [h["sigma_sq"] for h in cb.history]  # GD (sigma^2 0) for steps 1, 2; VGD afterwards
    assert kinds[:1] == [0.0] and kinds[-1] == pytest.approx(1e-3)
    assert isinstance(trainer.optimizers[1], IVON)
    assert (tmp_path / "sharpness.csv").exists()
    # GD reference over the same two GD steps: identical weights at the switch are implied by identical
    # first-step losses; VGD then differs from GD
    trainer_ref = _trainer(tmp_path / "ref", 4)
    trainer_ref.fit(ref, datamodule=_DM())
    diff = sum((a - b).abs().sum() for a, b in zip(module.parameters(), ref.parameters()))
    assert diff > 0


def test_ivon_under_lightning_closure_equals_manual_steps(tmp_path):
    """Lightning's automatic optimisation with IVON (mc_samples=2) = the same IVON driven by hand."""
    from modules.variational_classifier import VariationalClassifier

    def make():
        torch.manual_seed(0)
        return VariationalClassifier(net="mlp", image_size=2, channels=3, num_classes=3, width=8, depth=1,
                                     optimizer="ivon", lr=0.05, ess=50.0, beta2=0.99, mc_samples=2,
                                     clip_radius=0.0, lr_schedule="constant")

    dm = _DM()
    lit = make()
    lit.noise_seed = 5
    _trainer(tmp_path, 3).fit(lit, datamodule=dm)
    man = make()
    opt = IVON(man.parameters(), lr=0.05, ess=50.0, hess_init=0.5, beta1=0.9, beta2=0.99, weight_decay=1e-4,
               mc_samples=2, seed=5)
    batch = {"x": dm.x, "y": dm.y}
    for _ in range(3):
        def closure():
            opt.zero_grad()
            loss = man.compute_loss(batch)
            loss.backward()
            return loss
        opt.step(closure)
    for a, b in zip(lit.parameters(), man.parameters()):
        torch.testing.assert_close(a, b)


def test_ece_matches_torchmetrics():
    from torchmetrics.functional.classification import multiclass_calibration_error

    from core.eval.calibration import expected_calibration_error
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(500, 10, generator=g) * 3, -1)
    labels = torch.randint(0, 10, (500,), generator=g)
    ours = expected_calibration_error(probs, labels).item()
    ref = multiclass_calibration_error(probs, labels, num_classes=10, n_bins=15, norm="l1").item()
    assert ours == pytest.approx(ref, abs=1e-6)


def test_ivon_gradient_accumulation_under_lightning(tmp_path):
    """accumulate_grad_batches=2: micro-batch 1 at its own sample (module hook), micro-batch 2 through
    IVON.step(closure); equals the same sequence driven by hand, and differs from no accumulation."""
    from modules.variational_classifier import VariationalClassifier

    def make():
        torch.manual_seed(0)
        m = VariationalClassifier(net="mlp", image_size=2, channels=3, num_classes=3, width=8, depth=1,
                                  optimizer="ivon", lr=0.05, ess=50.0, beta2=0.99, clip_radius=0.0,
                                  lr_schedule="constant")
        m.noise_seed = 3
        return m

    dm = _DM()
    halves = DataLoader(IndexedTensorDataset(dm.x, y=dm.y), batch_size=24)
    lit = make()
    trainer = L.Trainer(max_steps=2, accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(lit, train_dataloaders=halves)
    man = make()
    opt = IVON(man.parameters(), lr=0.05, ess=50.0, hess_init=0.5, beta2=0.99, weight_decay=1e-4, seed=3)
    parts = [{"x": dm.x[:24], "y": dm.y[:24]}, {"x": dm.x[24:], "y": dm.y[24:]}]
    for _ in range(2):
        opt.zero_grad()
        with opt.sampled_params(train=True):
            (man.compute_loss(parts[0]) / 2).backward()
        opt.step(lambda: (man.compute_loss(parts[1]) / 2).backward())
    for a, b in zip(lit.parameters(), man.parameters()):
        torch.testing.assert_close(a, b)


def test_vgd_under_manual_optimisation_equals_plain_ivon(tmp_path):
    """Regression: in manual optimisation the closure zero_grads through Lightning's optimizer wrapper (a
    shallow copy of the optimizer's __dict__); IVON must still see each sample's full gradient."""
    torch.manual_seed(0)
    lit = FullBatchEoS(in_dim=12, widths=[8], out_dim=3, optimizer="vgd", lr=0.2, sigma_sq=1e-2, switch_step=0)
    lit.noise_seed = 1
    dm = _DM()
    _trainer(tmp_path, 4).fit(lit, datamodule=dm)
    torch.manual_seed(0)
    man = FullBatchEoS(in_dim=12, widths=[8], out_dim=3, optimizer="vgd", lr=0.2, sigma_sq=1e-2, switch_step=0)
    man.input_mean.copy_(dm.x.mean(0))
    opt = IVON(man.parameters(), lr=0.2, ess=1.0, hess_init=100.0, beta1=0.0, beta2=1.0, weight_decay=0.0, seed=1)
    batch = {"x": dm.x, "y": dm.y}

    def closure():
        opt.zero_grad()
        loss = man.compute_loss(batch)
        loss.backward()
        return loss

    for _ in range(4):
        opt.step(closure)
    for a, b in zip(lit.parameters(), man.parameters()):
        torch.testing.assert_close(a, b)


class _ShuffledDM:
    """A full-batch TensorDataModule over random data: epoch-keyed shuffle, as MNISTDataModule, or one
    pre-built batch per step (``tensor_batches``), as TensorBatchMNIST."""

    @staticmethod
    def make(n=40, tensor_batches=False):
        from datamodules.base import TensorDataModule
        from datamodules.mnist import TensorBatchMNIST

        class DM(TensorDataModule):
            train_dataloader = (TensorBatchMNIST.train_dataloader if tensor_batches
                                else TensorDataModule.train_dataloader)
            steps_per_epoch = 100_000

            def build(self):
                g = torch.Generator().manual_seed(0)
                x, y = torch.randn(n, 12, generator=g), torch.randint(0, 3, (n,), generator=g)
                ds = IndexedTensorDataset(x, y=y)
                return ds, ds, ds

        return DM(batch_size=n, eval_batch_size=n)


@pytest.mark.parametrize("optimizer,tensor_batches", [("vgd", False), ("gd", False), ("vgd", True)])
def test_shared_trunk_equals_recomputing_it(tmp_path, optimizer, tensor_batches):
    """A variant that loads the saved GD trunk at switch_step ends bit for bit where one that trains the
    trunk itself ends, with the same sharpness history; other seeds or models do not reuse the file."""

    def fit(trunk_dir, seed=0, widths=(8,), steps=7):
        torch.manual_seed(seed)
        m = FullBatchEoS(in_dim=12, widths=list(widths), out_dim=3, optimizer=optimizer, lr=0.3, sigma_sq=1e-3,
                         mc_samples=2, switch_step=4, trunk_dir=trunk_dir)
        m.noise_seed = seed
        cb = SharpnessCallback(every_n_steps=2, probe_size=40, plot=False)
        trainer = _trainer(tmp_path / f"r{seed}{len(widths)}{trunk_dir is None}", steps, [cb])
        trainer.fit(m, datamodule=_ShuffledDM.make(tensor_batches=tensor_batches))
        return m, cb, trainer

    ref, cb_ref, _ = fit(None)
    first, cb_first, _ = fit(str(tmp_path / "trunk"))
    assert not first.trunk_loaded and len(list((tmp_path / "trunk").glob("trunk-*.pt"))) == 1
    second, cb_second, trainer = fit(str(tmp_path / "trunk"))
    assert second.trunk_loaded and trainer.global_step == 7
    for m in (first, second):
        for a, b in zip(ref.parameters(), m.parameters()):
            assert torch.equal(a, b)
    assert [h["step"] for h in cb_second.history] == [2, 4, 6]
    assert [h["lambda_max"] for h in cb_second.history] == [h["lambda_max"] for h in cb_ref.history]
    other_seed, _, _ = fit(str(tmp_path / "trunk"), seed=1)
    other_model, _, _ = fit(str(tmp_path / "trunk"), widths=(6,))
    assert not other_seed.trunk_loaded and not other_model.trunk_loaded
    assert len(list((tmp_path / "trunk").glob("trunk-*.pt"))) == 3


def _prediction_variant(tmp_path, name, seed, probs, labels):
    from suite.results import VariantResult

    d = tmp_path / name
    d.mkdir()
    torch.save({"probs": probs, "labels": labels}, d / "test_predictions.pt")
    conf, pred = probs.max(1)
    metrics = {"test/pp_nll": float(-torch.log(probs.gather(1, labels[:, None])).mean()),
               "test/pp_accuracy": float((pred == labels).float().mean()), "test/pp_ece": 0.0,
               "test/accuracy": 0.0, "test/nll": 0.0, "test/ece": 0.0}
    return VariantResult(name, metrics, d, seed=seed)


def test_vl_vit_claim_decides_by_calibration_with_a_paired_bootstrap(tmp_path):
    """Same argmax for both models; one is calibrated (confidence = accuracy), the other overconfident: the
    claim holds when IVON is the calibrated one, fails when the roles are swapped."""
    from omegaconf import OmegaConf

    from core.eval.calibration import bootstrap_ece_difference
    from experiments.vl_vit import claims

    g = torch.Generator().manual_seed(0)
    n = 600
    labels = torch.randint(0, 10, (n,), generator=g)
    pred = torch.where(torch.rand(n, generator=g) < 0.8, labels, (labels + 1) % 10)  # 80% right

    def probs_with_confidence(c):
        p = torch.full((n, 10), (1 - c) / 9)
        p[torch.arange(n), pred] = c
        return p

    calibrated, overconfident = probs_with_confidence(0.8), probs_with_confidence(0.99)
    d, se = bootstrap_ece_difference(calibrated, calibrated, labels)
    assert d == 0 and se == 0
    cfg = OmegaConf.create({"module": {"eval_samples": 4}})
    good = {"ivon__seed=0": _prediction_variant(tmp_path, "i0", 0, calibrated, labels),
            "adamw__seed=0": _prediction_variant(tmp_path, "a0", 0, overconfident, labels)}
    claim = claims(good, cfg)["ivon_better_calibrated"]
    assert claim.holds and claim.value["ece_ivon_minus_adamw"] < -0.1
    bad = {"ivon__seed=0": good["adamw__seed=0"], "adamw__seed=0": good["ivon__seed=0"]}
    assert not claims(bad, cfg)["ivon_better_calibrated"].holds


def test_warmup_then_cosine_schedule():
    from modules.base import lr_factor

    f = [lr_factor(s, 10, 100) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert f[55] == pytest.approx(0.5) and all(a >= b for a, b in zip(f[10:], f[11:]))
    assert lr_factor(50, 10) == 1.0
    g = [lr_factor(s, 10, 100, floor=0.1) for s in range(120)]  # GenLabModule.warmup_cosine's decay
    assert g[3] == f[3] == 0.4 and g[55] == pytest.approx(0.55) and g[100] == g[119] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="warmup_steps"):
        from modules.variational_classifier import VariationalClassifier
        VariationalClassifier(net="mlp", image_size=2, channels=1, width=4, depth=1, warmup_steps=-1)


def test_full_batch_loss_ignores_mixed_precision_autocast():
    """trainer=gpu runs bf16-mixed: the EoS loss (hence the dynamics and the sharpness) stays float32."""
    torch.manual_seed(0)
    m = FullBatchEoS(in_dim=12, widths=[8], out_dim=3)
    dm = _DM()
    batch = {"x": dm.x, "y": dm.y}
    ref = m.compute_loss(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = m.compute_loss(batch)
    assert mixed.dtype == torch.float32 and torch.equal(mixed, ref)
