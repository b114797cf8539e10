"""Baselines: each returns k distinct indices by its stated rule; bad k fails clearly."""
import pytest
import torch

from src.errors import UserError
from src.selectors.base import SelectionContext
from src.selectors.expert import ExpertSelector
from src.selectors.likelihood import LikelihoodSelector
from src.selectors.likelihood_ratio import LikelihoodRatioSelector
from src.selectors.random import RandomSelector
from src.selectors.select import SelectSelector
from src.selectors.topk import TopKSelector


def ctx(N=20, rng=0):
    g = torch.Generator().manual_seed(0)
    return SelectionContext(n_seed=N, labels=torch.randint(0, 3, (N,), generator=g),
                            logp_f=-torch.rand(N, generator=g), logp_0=-torch.rand(N, generator=g),
                            n_true=7, grads=torch.randn(2, N, 5, generator=g), target=torch.randn(5, generator=g), rng=rng)


def test_random_is_seeded_and_distinct():
    a, b, c = RandomSelector()(ctx(), 10), RandomSelector()(ctx(), 10), RandomSelector()(ctx(rng=1), 10)
    assert a.indices.tolist() == b.indices.tolist() != c.indices.tolist()
    assert len(set(a.indices.tolist())) == 10


def test_random_balanced_draws_select_balanceds_quotas():
    from src.selectors.select import class_quotas

    c = ctx(N=30)
    sel = RandomSelector(balance="classes", name="random_balanced")
    a, b = sel(c, 9), sel(c, 9)
    assert a.indices.tolist() == b.indices.tolist() and len(set(a.indices.tolist())) == 9
    counts = torch.bincount(c.labels[a.indices], minlength=3).tolist()
    assert counts == [class_quotas(c.labels, 9).get(k, 0) for k in range(3)]
    assert sel.needs_classes and not RandomSelector().needs_classes
    with pytest.raises(UserError, match="balance"):
        RandomSelector(balance="classs")


def test_likelihood_picks_most_confident():
    c = ctx()
    idx = LikelihoodSelector()(c, 5).indices
    assert set(idx.tolist()) == set(torch.topk(c.logp_f, 5).indices.tolist())


def test_likelihood_balanced_takes_the_most_confident_rows_of_each_class_at_the_quotas():
    from src.selectors.select import class_quotas

    c = ctx(N=30)
    sel = LikelihoodSelector(balance="classes", name="likelihood_balanced")
    idx = sel(c, 9).indices
    quotas = class_quotas(c.labels, 9)
    for cls in range(3):
        rows = torch.nonzero(c.labels == cls)[:, 0]
        best = rows[torch.topk(c.logp_f[rows], quotas.get(cls, 0)).indices]
        assert set(idx[c.labels[idx] == cls].tolist()) == set(best.tolist())
    assert sel.needs_classes and not LikelihoodSelector().needs_classes
    with pytest.raises(UserError, match="balance"):
        LikelihoodSelector(balance="class")


def test_likelihood_ratio_picks_largest_gain():
    c = ctx()
    idx = LikelihoodRatioSelector()(c, 5).indices
    assert set(idx.tolist()) == set(torch.topk(c.logp_f - c.logp_0, 5).indices.tolist())


def test_topk_scores_each_example_alone():
    c = ctx()
    cos = torch.nn.functional.cosine_similarity(c.grads.double(), c.target.double()[None, None], dim=-1).mean(0)
    assert set(TopKSelector()(c, 4).indices.tolist()) == set(torch.topk(cos, 4).indices.tolist())


def test_expert_draws_from_the_true_data_and_caps_at_its_size():
    sel = ExpertSelector()(ctx(), 5)
    assert sel.source == "true" and len(sel.indices) == 5 and sel.indices.max() < 7
    assert len(ExpertSelector()(ctx(), 50).indices) == 7  # k beyond the true data: all of it


@pytest.mark.parametrize("cls", [RandomSelector, LikelihoodSelector, LikelihoodRatioSelector, TopKSelector, SelectSelector])
def test_k_larger_than_corpus_or_nonpositive_is_a_user_error(cls):
    with pytest.raises(UserError, match="larger than the seed corpus"):
        cls()(ctx(N=20), 21)
    with pytest.raises(UserError, match="positive"):
        cls()(ctx(N=20), 0)


def test_topk_balanced_gives_each_class_an_equal_share_of_its_best_rows():
    from src.selectors.topk import alignment
    from src.selectors.topk_balanced import TopKBalancedSelector

    c = ctx(N=30)
    idx = TopKBalancedSelector()(c, 9).indices
    scores = alignment(c.grads, c.target)
    assert len(set(idx.tolist())) == 9
    for cls in range(3):
        rows = torch.nonzero(c.labels == cls)[:, 0]
        mine = [i for i in idx.tolist() if c.labels[i] == cls]
        assert len(mine) == 3
        assert set(mine) == set(rows[torch.argsort(-scores[rows])[:3]].tolist())


def test_topk_balanced_uses_select_balanced_quotas_and_needs_labels():
    from src.selectors.topk_balanced import balanced_top

    labels = torch.tensor([0, 0, 0, 0, 0, 1])
    scores = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    assert sorted(balanced_top(scores, labels, 4).tolist()) == [0, 1, 2, 5]  # class 1 has one row only
    labels = torch.tensor([0] * 30 + [1] * 25 + [2] * 5)  # the quotas of the select_balanced test: 7, 6, 5
    picks = balanced_top(torch.arange(60.0), labels, 18)
    assert [int((labels[picks] == c).sum()) for c in range(3)] == [7, 6, 5]
    c = ctx()
    c.labels = None
    from src.selectors.topk_balanced import TopKBalancedSelector

    with pytest.raises(UserError, match="needs class autolabels"):
        TopKBalancedSelector()(c, 4)
