"""GenEvalCallback end to end in a real Lightning test loop, with generators of known quality:
an oracle (ground-truth renders of each prompt) scores ~1, a text-ignoring oracle scores near the
floor, and blank images score 0; media and FID are produced."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from callbacks.geneval import GenEvalCallback, fid, summarise
from core.eval.features import train_feature_net
from core.tasks.shapes import evaluate, load_eval_prompts, render_batch, sample_scene, subset_per_category
from core.tasks.shapes.judged import load_judged, main as recompute_cli, recompute
from datamodules.shapes import ShapesDataModule


class OracleGenerator(L.LightningModule):
    """``generate`` renders a scene satisfying each prompt (or another prompt's, or nothing)."""

    def __init__(self, mode: str = "oracle") -> None:
        super().__init__()
        self.mode, self.image_size = mode, 32
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.guidances: list = []

    def training_step(self, batch, batch_idx):
        return (self.weight**2).sum()

    def test_step(self, batch, batch_idx):
        self.log("test/dummy", 0.0)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def generate(self, prompts, *, steps=None, solver=None, guidance=None, generator=None, batch_size=256, **options):
        self.guidances.append(guidance)
        rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=generator)))
        if self.mode == "blank":
            return torch.full((len(prompts), 3, 32, 32), 0.1)
        if self.mode == "ignore_text":
            prompts = [prompts[i] for i in rng.permutation(len(prompts))]
        return render_batch([sample_scene(p, rng) for p in prompts])


def run_test(tmp_path, mode):
    module = OracleGenerator(mode)
    cb = GenEvalCallback(
        prompts_per_category=2,
        test_prompts_per_category=6,
        test_guidances=[1.0, 3.0],
        fid_feature_steps=5,
        table_rows=8,
    )
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[cb],
    )
    trainer.test(module, datamodule=ShapesDataModule(n_train=64, n_val=16, n_test=16, batch_size=16))
    return {k: float(v) for k, v in trainer.callback_metrics.items()}, module


def test_geneval_callback_in_a_lightning_test_loop(tmp_path):
    m, module = run_test(tmp_path, "oracle")
    assert module.guidances == [1.0, 3.0]
    for w in ("w1", "w3"):
        assert m[f"test/geneval_{w}/overall"] >= 0.98 and m[f"test/geneval_{w}/reward"] >= 0.99
        assert m[f"test/geneval_{w}/colors_n"] == 6
        assert f"test/fid_{w}" in m
    assert m["test/geneval/ground_truth"] >= 0.98
    assert 0.0 < m["test/geneval/floor"] < 0.4
    media = list((tmp_path / "media").iterdir())
    assert any(p.suffix == ".png" for p in media) and any(p.suffix == ".csv" for p in media)


def test_judged_images_are_saved_and_the_figures_recomputed_from_them(tmp_path, capsys):
    """The run folder holds every test image set the callback judged, and the GenEval figures
    recomputed from those files equal the logged ones (a text-ignoring generator: passes and fails)."""
    m, _ = run_test(tmp_path, "ignore_text")
    for w in ("w1", "w3"):
        path = tmp_path / "geneval" / f"test_geneval_{w}.npz"
        saved = load_judged(path)
        assert saved["images"].shape == (36, 3, 32, 32) and len(saved["meta"]) == 36
        assert saved["key"] == f"test/geneval_{w}" and saved["reader"] == "net"
        ev = evaluate(saved["images"], saved["meta"])
        assert torch.equal(ev.passed, saved["passed"]) and torch.allclose(ev.reward, saved["reward"])
        again = recompute(path)
        assert again == saved["metrics"]
        assert 0 < again[f"test/geneval_{w}/overall"] < 1
        for name, value in again.items():
            assert m[name] == pytest.approx(value, abs=1e-6), name
    recompute_cli([str(tmp_path)])
    assert "test/geneval_w3/overall" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["ignore_text", "blank"])
def test_summaries_of_bad_generators(mode):
    prompts = subset_per_category(load_eval_prompts(), 15)
    images = OracleGenerator(mode).generate(prompts, generator=torch.Generator().manual_seed(0))
    m = summarise("k", images, prompts)
    if mode == "blank":
        assert m["k/overall"] == 0.0 and m["k/colors_se"] == 0.0 and m["k/reward"] == 0.0
    else:
        assert m["k/overall"] < 0.35 and 0 < m["k/reward"] < 0.7
    assert m["k/colors_n"] == 15 and "k/heldout" in m and "k/seen" in m


def test_fid_separates_data_from_blank():
    dm = ShapesDataModule(n_train=256, n_val=16, n_test=16)
    dm.setup()
    net = train_feature_net(dm.train_set.x, dm.train_set.extras["label"], steps=10, seed=0)
    real = (dm.train_set.x[:128] + 1) / 2
    same = (dm.train_set.x[128:256] + 1) / 2
    assert fid(net, real, same) < fid(net, real, torch.full_like(real, 0.1))


def test_subset_per_category_keeps_file_order():
    prompts = load_eval_prompts()
    sub = subset_per_category(prompts, 3)
    first = {}
    for i, p in enumerate(prompts):
        first.setdefault(p["tag"], []).append(i)
    assert sub == [prompts[i] for i in sorted(i for idx in first.values() for i in idx[:3])]
    assert subset_per_category(prompts, 0) == prompts


def test_callback_refuses_modules_without_generate(tmp_path):
    cb = GenEvalCallback()
    with pytest.raises(TypeError, match="generate"):
        cb.generate(torch.nn.Linear(1, 1), load_eval_prompts()[:2], 1, None)
