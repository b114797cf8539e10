"""Two-model token statistics against a per-example loop written from their definitions."""
import math

import torch

from src.scores.token_stats import per_token, summarise
from src.selectors.base import SelectionContext
from src.selectors.statistic import StatisticSelector


def reference(lp_f, lp_0, hit, lengths, k_frac=0.2, eps=1e-3):
    out = {k: [] for k in ("length", "nll_0", "nll_f", "lr_mean", "ez_ratio", "mink_lr")}
    for i, n in enumerate(lengths):
        f, z, h = lp_f[i, :n].tolist(), lp_0[i, :n].tolist(), hit[i, :n].tolist()
        d = [a - b for a, b in zip(f, z)]
        zone = [x for x, right in zip(d, h) if not right]
        k = max(1, math.ceil(n * k_frac))
        out["length"].append(n)
        out["nll_0"].append(-sum(z) / n)
        out["nll_f"].append(-sum(f) / n)
        out["lr_mean"].append(sum(d) / n)
        out["ez_ratio"].append(math.log(sum(max(x, 0) for x in zone) + eps) - math.log(sum(max(-x, 0) for x in zone) + eps))
        out["mink_lr"].append(sum(sorted(d)[:k]) / k)
    return {k: torch.tensor(v) for k, v in out.items()}


def test_summarise_matches_the_definitions():
    g = torch.Generator().manual_seed(0)
    lengths = [7, 1, 12, 4]
    T = 12
    mask = torch.zeros(4, T)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    lp_f, lp_0 = -torch.rand(4, T, generator=g) * 5, -torch.rand(4, T, generator=g) * 5
    hit = (torch.rand(4, T, generator=g) < 0.4).float()
    got = summarise(lp_f * mask, lp_0 * mask, hit * mask, mask)
    want = reference(lp_f, lp_0, hit, lengths)
    for k in want:
        torch.testing.assert_close(got[k], want[k].float(), rtol=1e-5, atol=1e-5, msg=k)


def test_per_token_reads_next_token_probabilities_and_pads():
    logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]]]))
    ids = torch.tensor([[0, 1, 2]])
    out = per_token(logits, ids, torch.tensor([[1, 1, 0]]), width=5)  # positions 0, 1 predict tokens 1, 2
    assert out["lp"].shape == (1, 4)
    torch.testing.assert_close(out["lp"][0, :2], torch.log(torch.tensor([0.2, 0.8])))
    assert out["hit"][0].tolist() == [0, 1, 0, 0] and out["m"][0].tolist() == [1, 1, 0, 0]


def test_statistic_selector_ranks_and_names_a_missing_statistic():
    ctx = SelectionContext(n_seed=4, labels=None, logp_f=torch.zeros(4), logp_0=torch.zeros(4),
                           stats={"length": torch.tensor([3.0, 9.0, 1.0, 5.0])})
    assert StatisticSelector("length", "length")(ctx, 2).indices.tolist() == [1, 3]
    assert StatisticSelector("short", "length", largest=False)(ctx, 1).indices.tolist() == [2]
    try:
        StatisticSelector("novelty", "nll_0")(ctx, 1)
    except Exception as e:
        assert "nll_0" in str(e) and "length" in str(e)
    else:
        raise AssertionError("a missing statistic must fail")


def test_fusion_ranks_alignment_and_a_statistic_together():
    from src.selectors.fusion import FusionSelector, ranks

    assert ranks(torch.tensor([0.1, 0.9, 0.5])).tolist() == [1 / 3, 1.0, 2 / 3]
    t = torch.tensor([1.0, 0.0])
    G = torch.tensor([[[1.0, 0.0], [0.9, 0.4], [0.0, 1.0], [0.5, 0.5]]])  # alignment order 0, 1, 3, 2
    stats = {"lr_mean": torch.tensor([0.0, 3.0, 2.0, 1.0])}              # statistic order 1, 2, 3, 0
    ctx = SelectionContext(n_seed=4, labels=torch.tensor([0, 0, 1, 1]), logp_f=torch.zeros(4), logp_0=torch.zeros(4),
                           grads=G, target=t, stats=stats)
    assert FusionSelector(weight=0.0)(ctx, 2).indices.tolist() == [0, 1]   # alignment alone
    assert FusionSelector(weight=1.0)(ctx, 2).indices.tolist() == [1, 2]   # the statistic alone
    assert FusionSelector(weight=0.5)(ctx, 1).indices.tolist() == [1]      # second on one, first on the other
    picks = FusionSelector(weight=0.5, balance="classes")(ctx, 2).indices.tolist()
    assert sorted(ctx.labels[picks].tolist()) == [0, 1]
