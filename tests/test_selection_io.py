"""The selection files' objective column: SELECT's greedy objective, recomputed along a pick order."""
import itertools

import pytest
import torch

from src.selection_io import objective_trace
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
