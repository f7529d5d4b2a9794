import pickle

import numpy as np
import pytest
import torch

from datamodules.cifar import CIFAR10DataModule
from modules.variational_classifier import make_net


def write_fake_cifar(root, n_per_batch=20):
    """A tiny folder in torchvision's CIFAR-10 layout (pickled batches, no checksums needed)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": list(rng.integers(0, 10, n_per_batch))}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)


def test_loads_a_torchvision_layout(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    # the fake files have no official checksums
    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    write_fake_cifar(tmp_path)
    dm = CIFAR10DataModule(root=str(tmp_path), n_train=30, n_val=5)
    dm.setup()
    x = dm.train_tensor()
    assert x.shape == (30, 3072) and -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert len(dm.val_set) == 5 and len(dm.test_set) == 15


def test_missing_folder_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py not found"):
        CIFAR10DataModule(root=str(tmp_path)).setup()


def test_resnet18_takes_flat_cifar_images():
    net = make_net("resnet18", 32, 3, 10, width=0, depth=0, patch=4, heads=1)
    assert net(torch.randn(2, 3072)).shape == (2, 10)
