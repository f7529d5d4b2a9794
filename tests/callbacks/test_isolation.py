"""callbacks.isolation.measuring: the global RNG and the module's NFE counter come back as they were."""

import torch

from callbacks.isolation import measuring
from core.utils.nfe import EvalCounter


class Counted(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.nfe = torch.nn.Linear(2, 2), EvalCounter()


def test_measuring_restores_the_global_rng_and_the_nfe_counter():
    module = Counted()
    module.nfe.add(3, 30)
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    with measuring(module):
        torch.manual_seed(123)  # what core.eval.features.train_feature_net does
        torch.rand(100)
        module.nfe.add(7, 70)
    assert torch.equal(torch.rand(4), expected)
    assert (module.nfe.calls, module.nfe.items) == (3, 30)


def test_measuring_restores_after_an_error():
    module = Counted()
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    try:
        with measuring(module):
            torch.rand(10)
            module.nfe.add(1, 1)
            raise RuntimeError("measurement failed")
    except RuntimeError:
        pass
    assert torch.equal(torch.rand(4), expected) and module.nfe.calls == 0
