"""The self-trained gradient probe (src/selectors/probe.py)."""
import pytest
import torch

from src.errors import UserError
from src.selectors.base import SelectionContext
from src.selectors.probe import ProbeSelector, fit_logistic
from src.selectors.rows import TensorRows
from src.selectors.topk_balanced import balanced_top


def test_fit_logistic_reaches_the_regularised_optimum():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(80, 6, generator=g, dtype=torch.float64)
    y = (X[:, 0] + 0.5 * torch.randn(80, generator=g, dtype=torch.float64) > 0).double()
    w, b = fit_logistic(X, y, l2=2.0)
    # First-order optimality of Σ BCE + (l2/2)‖w‖²: Xᵀ(σ(z) − y) + l2·w = 0 and Σ(σ(z) − y) = 0.
    r = torch.sigmoid(X @ w + b) - y
    # (on the summed objective; the solver stops on the mean, 80× smaller)
    assert (X.T @ r + 2.0 * w).abs().max() < 1e-4 and abs(float(r.sum())) < 1e-4
    assert w[0] > 0.5 and w[0] == w.abs().max()  # the informative feature carries the weight


def world(seed=0, N=300, d=16):
    """Three classes; planted rows share a gradient direction per class. θf's confidence is a noisy
    hint: planted rows are more confident on average, but noise hides half of them."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (N,), generator=g)
    planted = torch.rand(N, generator=g) < 0.15
    dirs = torch.randn(3, d, generator=g)
    G = torch.randn(N, d, generator=g)
    G[planted] += 3 * dirs[labels[planted]]
    conf = planted.double() * 1.0 + 1.0 * torch.randn(N, generator=g, dtype=torch.float64)
    ctx = SelectionContext(n_seed=N, labels=labels, logp_f=conf, logp_0=torch.zeros(N),
                           grads=G[None], target=torch.randn(d, generator=g), rng=0)
    return ctx, planted


def test_probe_finds_rows_whose_gradients_look_like_the_confident_ones():
    ctx, planted = world()
    k = int(planted.sum())
    lik = planted[balanced_top(ctx.logp_f, ctx.labels, k)].float().mean()
    probe = ProbeSelector(fuse="probe")(ctx, k)
    fused = ProbeSelector()(ctx, k)
    assert len(set(probe.indices.tolist())) == k and len(set(fused.indices.tolist())) == k
    assert planted[probe.indices].float().mean() > lik + 0.2
    assert planted[fused.indices].float().mean() > lik
    # Same quotas as likelihood_balanced: only the ranking within a class differs.
    base = balanced_top(ctx.logp_f, ctx.labels, k)
    assert torch.bincount(ctx.labels[fused.indices], minlength=3).tolist() == \
        torch.bincount(ctx.labels[base], minlength=3).tolist()


def test_probe_is_seeded_and_reads_rows_in_blocks_like_a_tensor():
    ctx, _ = world(N=200)
    a = ProbeSelector(max_rows=40)(ctx, 30).indices
    blocked = SelectionContext(**{**ctx.__dict__, "grads": TensorRows(ctx.grads, block_rows=17)})
    assert a.tolist() == ProbeSelector(max_rows=40)(blocked, 30).indices.tolist()
    assert a.tolist() == ProbeSelector(max_rows=40)(ctx, 30).indices.tolist()


def test_probe_without_classes_is_one_class():
    ctx, planted = world()
    ctx.labels = None
    sel = ProbeSelector(fuse="probe")(ctx, 40)
    assert len(set(sel.indices.tolist())) == 40


@pytest.mark.parametrize("kw", [dict(positives=0), dict(negatives=1.0), dict(l2=0), dict(fuse="mean")])
def test_bad_probe_options_fail_when_built(kw):
    with pytest.raises(UserError, match="probe_balanced"):
        ProbeSelector(**kw)
