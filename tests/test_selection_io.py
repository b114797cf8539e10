"""The selection files' objective column: SELECT's greedy objective, recomputed along a pick order."""
import itertools

import pytest
import torch

from src.pipeline import run
from src.selectors.greedy import objective_trace
from src.selectors.select import greedy_select


@pytest.mark.parametrize("running_sum,normalize,reset_every",
                         list(itertools.product(["shared", "per_checkpoint"], [False, True], [None, 3])))
def test_objective_trace_equals_what_greedy_maximised(running_sum, normalize, reset_every):
    torch.manual_seed(0)
    G, t = torch.randn(3, 40, 8) + 0.3, torch.randn(8)
    kw = dict(running_sum=running_sum, normalize=normalize, reset_every=reset_every)
    idx, obj = greedy_select(G, t, 7, **kw)
    trace = torch.tensor(objective_trace(G, t, idx.tolist(), **kw), dtype=torch.float64)
    torch.testing.assert_close(trace, obj.double(), rtol=0, atol=1e-6)


def test_objective_trace_of_any_order_is_the_cosine_of_the_running_sum():
    torch.manual_seed(1)
    G, t = torch.randn(1, 20, 5), torch.randn(5)
    order = [4, 0, 9]
    trace = objective_trace(G, t, order)
    for r in range(3):
        want = torch.nn.functional.cosine_similarity(G[0, order[:r + 1]].double().sum(0), t.double(), dim=0)
        assert trace[r] == pytest.approx(float(want), abs=1e-9)


def test_each_select_variant_writes_the_objective_it_maximised(tiny_cfg, tmp_path, caplog):
    import logging

    import datasets

    with caplog.at_level(logging.WARNING):
        res = run(tiny_cfg("P=3", "baselines=[select_centered,random]"), tmp_path / "run")
    rows = {r["selector"]: r for r in res["results"]}

    def column(name):
        path = tmp_path / "run" / "selections" / name / "selection.parquet"
        return datasets.load_dataset("parquet", data_files=str(path), split="train")["objective"]

    sel, cen, rnd = column("select"), column("select_centered"), column("random")
    assert sel[-1] == pytest.approx(rows["select"]["objective_last"], abs=1e-9)
    assert cen[-1] == pytest.approx(rows["select_centered"]["objective_last"], abs=1e-9)  # its own, centred
    assert cen[0] == pytest.approx(rows["select_centered"]["objective_first"], abs=1e-9)
    assert cen != pytest.approx(sel)  # two objectives, not one column twice
    # A selector that optimises nothing is scored on the main SELECT's scale, and no option is "ignored".
    assert len(rnd) == 8 and all(-1 - 1e-9 <= v <= 1 + 1e-9 for v in rnd)
    assert "ignores SELECT option" not in caplog.text
