"""The accuracy-vs-NFE evaluation: with a model that is always right, every method is right and every
method's NFE per problem is exact (verification passes included), batches add up, bad configs fail early."""

import pytest
import torch

from core.tasks.checkable import make_task
from core.search.prism import PrismConfig, expected_prism_nfe
from core.search.evaluate import SearchConfig, evaluate_problems, summarize
from tests.core.search.test_search import TASK, oracle_model


def test_every_method_is_right_and_its_nfe_exact_with_an_oracle_model():
    cfg = SearchConfig.from_dict({"bon_sizes": [1, 2, 4], "prism_n": [4, 8], "by_step_problems": 3})
    g = torch.Generator().manual_seed(0)
    p1 = TASK.sample_problems(5, "test", g)
    p2 = TASK.sample_problems(3, "train", g)
    res = [evaluate_problems(oracle_model, TASK, p1, cfg, g, by_step=3),
           evaluate_problems(oracle_model, TASK, p2, cfg, g)]
    metrics, rows = summarize(res, TASK.n_steps)
    T = TASK.n_steps
    expected = {"single": T, "bon_sv@2": 2 * (T + 1), "bon_sv@4": 4 * (T + 1), "majority@2": 2 * T,
                "majority@4": 4 * T, "oracle@4": 4 * T,
                "prism@4": expected_prism_nfe(cfg.prism_config(4), T),
                "prism@8": expected_prism_nfe(cfg.prism_config(8), T),
                "prism_no_sv@8": expected_prism_nfe(cfg.prism_config(8, self_verify=False), T)}
    for name, nfe in expected.items():
        assert metrics[f"test/{name}/nfe"] == pytest.approx(nfe), name
        assert metrics[f"test/{name}/acc"] == 1.0 and metrics[f"test/{name}/gain_vs_single"] == 0.0
    assert "prism_no_sv@4" not in {r[0] for r in rows}  # ablations only at the largest width
    assert metrics["test/n_problems"] == 8 and metrics["test/sv_n"] == 8 * 4
    assert metrics[f"test/greedy_acc_step1of{T}"] == 1.0  # the oracle's greedy completion is right at once
    assert "test/sv_auroc" not in metrics  # every candidate right: no AUROC, and no NaN in results.json
    assert expected["prism@8"] == expected_prism_nfe(PrismConfig(n_initial=8, shrink=2.0), T)


def test_a_wrong_model_is_caught_by_the_checker_and_its_verdicts_rank():
    task = make_task({"name": "arith", "op": "mul", "a_digits": 3, "b_digits": 2})

    def off_by_one(x, t):  # the oracle's digits shifted by one token: never right
        logits = oracle_model(x, t)
        logits[:, : task.gen_len] = logits[:, : task.gen_len].roll(1, dims=-1)
        return logits

    cfg = SearchConfig.from_dict({"bon_sizes": [1, 2], "prism_n": [2], "by_step_problems": 0})
    g = torch.Generator().manual_seed(1)
    metrics, _ = summarize([evaluate_problems(off_by_one, task, task.sample_problems(4, "test", g), cfg, g)],
                           task.n_steps)
    assert metrics["test/single/acc"] == 0.0 and metrics["test/oracle@2/acc"] == 0.0


def test_bad_search_configs_fail_early_naming_the_key():
    with pytest.raises(ValueError, match="module.search: unknown key"):
        SearchConfig.from_dict({"widht": 2}, "module.search")
    with pytest.raises(ValueError, match="bon_sizes must contain 1"):
        SearchConfig.from_dict({"bon_sizes": [2, 4]})
    with pytest.raises(ValueError, match="window"):
        SearchConfig.from_dict({"window": [0.6, 0.1]})
    with pytest.raises(ValueError, match="prism_n"):
        SearchConfig.from_dict({"prism_n": []})


def test_make_task_names_the_key_and_the_choices():
    assert make_task({"name": "sudoku", "n_blanks": 5}).n_steps == 5
    with pytest.raises(ValueError, match=r"module.task.name 'chess'.*arith"):
        make_task({"name": "chess"}, "module.task")
    with pytest.raises(ValueError, match=r"arith has no field\(s\) \['n_blanks'\]"):
        make_task({"name": "arith", "n_blanks": 3})
