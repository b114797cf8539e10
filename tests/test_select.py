"""Greedy SELECT: fast == reference, no repeats, greedy-optimal steps, redundancy stops paying."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from src.selectors.base import SelectionContext
from src.selectors.greedy import objective_trace
from tests.conftest import LargestTensor
from src.errors import UserError
from src.reference import greedy_select_naive
from src.selectors.select import SelectSelector, greedy_select
from src.selectors.topk import TopKSelector, alignment

MODES = ["per_checkpoint", "shared"]


def rand(P, N, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(P, N, d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("mode,reset,normalize", list(itertools.product(MODES, [None, 3], [False, True])))
def test_fast_greedy_equals_reference(mode, reset, normalize):
    G, t = rand(3, 40, 8, seed=0)
    a, oa = greedy_select(G, t, 12, running_sum=mode, reset_every=reset, normalize=normalize)
    b, ob = greedy_select_naive(G, t, 12, running_sum=mode, reset_every=reset, normalize=normalize)
    c, _ = greedy_select(G, t, 12, running_sum=mode, reset_every=reset, normalize=normalize, chunk=7)
    assert a.tolist() == b.tolist() == c.tolist()
    torch.testing.assert_close(oa, ob, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("running_sum", ["per_checkpoint", "shared"])
def test_float16_store_is_selected_without_widening_it_whole(center, running_sum):
    G, t = rand(2, 50, 8, seed=1)
    half = G.half()
    with LargestTensor(dtypes=(torch.float32, torch.float64)) as seen:
        a, _ = greedy_select(half, t, 10, chunk=16, center=center, running_sum=running_sum)
    b, _ = greedy_select_naive(half.double(), t, 10, center=center, running_sum=running_sum)
    assert a.tolist() == b.tolist()
    # Nothing wide the size of the matrix (2·50·8 = 800 numbers) was made: at most one 16-row block
    # (16·8 = 128) is widened at a time, besides O(P·N) per-row statistics (2·50 = 100).
    assert seen.largest <= 128, seen.largest


@settings(max_examples=40, deadline=None)
@given(P=st.integers(1, 3), N=st.integers(1, 30), d=st.integers(1, 6), seed=st.integers(0, 10_000),
       mode=st.sampled_from(MODES), data=st.data())
def test_greedy_never_repeats_and_returns_k(P, N, d, seed, mode, data):
    k = data.draw(st.integers(1, N))
    G, t = rand(P, N, d, seed)
    idx, obj = greedy_select(G, t, k, running_sum=mode)
    assert len(idx) == k and len(set(idx.tolist())) == k
    assert idx.min() >= 0 and idx.max() < N
    assert torch.isfinite(obj).all()


def objective(G, t, S, mode):
    """The stated objective of a set S, from scratch: (1/P) Σ_j cos(Σ_{m∈S} G[j, m], t) (per_checkpoint),
    or cos(Σ_{m∈S} (1/P) Σ_j G[j, m], t) (shared: every row averaged over the checkpoints first)."""
    rows = G if mode == "per_checkpoint" else G.mean(0, keepdim=True)
    return F.cosine_similarity(rows[:, S].sum(1), t[None], dim=-1).mean().item()


@pytest.mark.parametrize("mode", MODES)
def test_each_step_is_the_best_one_element_extension(mode):
    # The property greedy guarantees: its m-th pick maximises F(S_{m-1} ∪ {i}) over i ∉ S_{m-1}, with F the
    # stated objective of a set, and the objective it reports is F of the set so far. Brute force, P = 3.
    G, t = rand(3, 15, 5, seed=3)
    idx, obj = greedy_select(G, t, 6, running_sum=mode)
    ref, oref = greedy_select_naive(G, t, 6, running_sum=mode)
    assert idx.tolist() == ref.tolist()
    for m in range(6):
        prefix = idx[:m].tolist()
        best = max(objective(G, t, prefix + [i], mode) for i in range(15) if i not in prefix)
        assert abs(objective(G, t, prefix + [idx[m].item()], mode) - best) < 1e-10
        assert abs(obj[m].item() - best) < 1e-10 and abs(oref[m].item() - best) < 1e-10
    # A set function: the reported value does not depend on the order the set was picked in.
    perm = idx.flip(0)
    assert abs(objective_trace(G, t, perm.tolist(), running_sum=mode)[-1] - obj[-1].item()) < 1e-10


def test_first_pick_is_topk_first_pick():
    G, t = rand(3, 50, 7, seed=5)
    ctx = SelectionContext(n_seed=50, labels=None, logp_f=None, logp_0=None, grads=G, target=t)
    assert SelectSelector(running_sum="per_checkpoint")(ctx, 1).indices.tolist() == TopKSelector()(ctx, 1).indices.tolist()


def test_redundant_examples_stop_paying_off():
    # Target (1, 1). Examples 0 and 1 are the same gradient (1, 0.2): individually the best aligned.
    # Example 2 points the other way, (0.15, 0.9). Top-k takes both duplicates; SELECT takes
    # one duplicate, then the complement, whose sum aligns with the target far better.
    G = torch.tensor([[[1.0, 0.2], [1.0, 0.2], [0.15, 0.9], [0.5, -0.5]]], dtype=torch.float64)
    t = torch.tensor([1.0, 1.0], dtype=torch.float64)
    ctx = SelectionContext(n_seed=4, labels=None, logp_f=None, logp_0=None, grads=G, target=t)
    assert sorted(TopKSelector()(ctx, 2).indices.tolist()) == [0, 1]
    picked = SelectSelector()(ctx, 2).indices.tolist()
    assert picked[1] == 2 and picked[0] in (0, 1)
    assert alignment(G, t)[0] > alignment(G, t)[2]  # the complement alone scores lower


def test_reset_every_restarts_the_running_sum():
    # With reset_every=1 each pick is judged alone, so greedy degenerates to top-k.
    G, t = rand(1, 30, 4, seed=8)
    idx, _ = greedy_select(G, t, 10, reset_every=1)
    assert idx.tolist() == torch.argsort(-alignment(G, t), stable=True)[:10].tolist()


def test_unknown_running_sum_mode_is_a_clear_error():
    G, t = rand(1, 5, 3, seed=0)
    with pytest.raises(ValueError, match="running_sum"):
        greedy_select(G, t, 2, running_sum="nope")


@pytest.mark.parametrize("mode,normalize,reset", list(itertools.product(MODES, [False, True], [None, 4])))
def test_centred_fast_greedy_equals_centred_reference(mode, normalize, reset):
    G, t = rand(3, 40, 8, seed=11)
    G = G + torch.randn(3, 1, 8, dtype=torch.float64)  # a shared direction per checkpoint, as in LM heads
    kw = dict(running_sum=mode, normalize=normalize, reset_every=reset, center=True)
    a, oa = greedy_select(G, t, 12, **kw)
    b, ob = greedy_select_naive(G, t, 12, **kw)
    c, _ = greedy_select(G, t, 12, chunk=7, **kw)
    assert a.tolist() == b.tolist() == c.tolist()
    torch.testing.assert_close(oa, ob, rtol=1e-9, atol=1e-9)


def test_centring_removes_the_shared_direction_and_its_target_component():
    # Every row is ḡ + a small private part; the target is mostly ḡ. Uncentred, every row looks alike
    # to the target; centred, only the private parts (and the target's ⟂ part) are compared.
    G, t = rand(2, 30, 6, seed=12)
    from src.reference import center_naive
    Gc, tj = center_naive(G, t[None].expand(2, -1))
    torch.testing.assert_close(Gc.mean(1), torch.zeros(2, 6, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close((tj * G.mean(1)).sum(-1), torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    from src.reference import alignment_naive
    for center in (False, True):
        torch.testing.assert_close(alignment(G, t, center=center), alignment_naive(G, t, center=center))
        torch.testing.assert_close(alignment(G, t, chunk=7, center=center), alignment_naive(G, t, center=center))
    # float16 store, float32 passes: same answer to float16 precision
    torch.testing.assert_close(alignment(G.half(), t, center=True), alignment_naive(G.half(), t, center=True).float(),
                               atol=2e-3, rtol=0)


def test_centred_first_pick_is_centred_topk_first_pick():
    G, t = rand(3, 50, 7, seed=13)
    ctx = SelectionContext(n_seed=50, labels=None, logp_f=None, logp_0=None, grads=G, target=t)
    assert SelectSelector(center=True)(ctx, 1).indices.tolist() == TopKSelector(center=True)(ctx, 1).indices.tolist()


def test_class_balanced_select_is_one_capped_greedy_and_reports_its_own_objective():
    import torch.nn.functional as F

    from src.selectors.select import class_quotas

    G, t = rand(2, 60, 6, seed=9)
    labels = torch.tensor([0] * 30 + [1] * 25 + [2] * 5)
    ctx = SelectionContext(n_seed=60, labels=labels, logp_f=torch.zeros(60), logp_0=torch.zeros(60), grads=G,
                           target=t)
    sel = SelectSelector(balance="classes")(ctx, 18)
    picks = sel.indices
    quotas = class_quotas(labels, 18)
    assert quotas == {0: 7, 1: 6, 2: 5}  # class 2 holds only 5: its last pick goes to class 0
    assert [int((labels[picks] == c).sum()) for c in range(3)] == [7, 6, 5]
    want, want_obj = greedy_select_naive(G, t, 18, groups=labels, caps=quotas)  # brute force over the union
    assert picks.tolist() == want.tolist()
    # the objective column is cos(Σ picked so far, target) recomputed from the picks, per checkpoint mean
    brute = [float(F.cosine_similarity(G[:, picks[: i + 1]].double().sum(1), t.double()[None], dim=-1).mean())
             for i in range(18)]
    torch.testing.assert_close(sel.objective, torch.tensor(brute, dtype=torch.float64))
    torch.testing.assert_close(want_obj, torch.tensor(brute, dtype=torch.float64))
    with pytest.raises(UserError, match="needs class autolabels"):
        SelectSelector(balance="classes")(SelectionContext(n_seed=60, labels=None, logp_f=torch.zeros(60),
                                                           logp_0=torch.zeros(60), grads=G, target=t), 5)


@pytest.mark.parametrize("task", ["lm", "sft"])
def test_class_balance_on_a_task_without_classes_fails_before_any_compute(task):
    from src.checks import preflight
    from src.config import compose_config, run_options
    from src.selectors.registry import build_selectors

    cfg = run_options(compose_config([f"task={task}", "baselines=[random,select_balanced,topk_balanced]"]))
    with pytest.raises(UserError, match=r"\['select_balanced', 'topk_balanced'\] balance picks over autolabel classes"):
        preflight(cfg, build_selectors(cfg.selectors))
    rest = run_options(compose_config([f"task={task}", "baselines=[random]"]))
    preflight(rest, build_selectors(rest.selectors))  # the rest passes


def test_auto_balance_is_classes_with_class_autolabels_and_plain_without():
    G, t = rand(2, 60, 6, seed=9)
    labels = torch.tensor([0] * 30 + [1] * 25 + [2] * 5)
    kw = dict(n_seed=60, logp_f=torch.zeros(60), logp_0=torch.zeros(60), grads=G, target=t)
    with_classes = SelectionContext(labels=labels, **kw)
    without = SelectionContext(labels=None, **kw)
    assert not SelectSelector(balance="auto").needs_classes  # so preflight keeps it on lm and sft
    assert SelectSelector(balance="auto")(with_classes, 18).indices.tolist() \
        == SelectSelector(balance="classes")(with_classes, 18).indices.tolist()
    assert SelectSelector(balance="auto")(without, 18).indices.tolist() \
        == SelectSelector(balance="none")(without, 18).indices.tolist()


def test_prefilter_runs_greedy_on_the_top_rows_of_a_statistic():
    G, t = rand(2, 40, 6, seed=4)
    labels = torch.tensor([0, 1] * 20)
    lf = torch.linspace(-3, 0, 40)  # likelihood rises with the row index
    ctx = SelectionContext(n_seed=40, labels=labels, logp_f=lf, logp_0=torch.zeros(40), grads=G, target=t)
    full = SelectSelector(balance="classes")(ctx, 6).indices
    assert SelectSelector(balance="classes", prefilter="likelihood", prefilter_keep=1.0)(ctx, 6).indices.tolist() \
        == full.tolist()
    picks = SelectSelector(balance="classes", prefilter="likelihood", prefilter_keep=0.25)(ctx, 6).indices
    assert picks.min() >= 30 and [int((labels[picks] == c).sum()) for c in (0, 1)] == [3, 3]
    want, _ = greedy_select_naive(G[:, 30:], t, 6, running_sum="per_checkpoint", groups=labels[30:],
                                  caps={0: 3, 1: 3})
    assert picks.tolist() == (want + 30).tolist()
    with pytest.raises(UserError, match="prefilter 'nope'"):
        SelectSelector(prefilter="nope")(ctx, 3)
