"""The recovery benchmark's own arithmetic: candidate sets at a planted share, each selector on its own
gradients, and the tables (no model is run here; `make bench-recovery` runs the worlds)."""
import json

import pytest
import torch

from src.bench.recovery import candidates, default_variants, world_overrides
from src.bench.recovery_report import confounds, format_tables, summarise
from src.config import compose_config, run_options
from src.selectors.registry import build_selectors


def test_candidates_plant_the_share_asked_half_trained_half_unseen():
    leaked = torch.zeros(1300, dtype=torch.bool)
    unseen = torch.zeros(1300, dtype=torch.bool)
    leaked[1000:1150], unseen[1150:1300] = True, True
    for share in (0.02, 0.07, 0.2):
        idx, k = candidates(leaked, unseen, share, rng=0)
        planted = (leaked | unseen)[idx]
        assert int(planted.sum()) == k and k / len(idx) == pytest.approx(share, abs=1e-3)
        assert abs(int(leaked[idx].sum()) - int(unseen[idx].sum())) <= 1 and len(set(idx.tolist())) == len(idx)
        assert int((~planted).sum()) == 1000  # every other-topic row is a candidate
    assert torch.equal(candidates(leaked, unseen, 0.07, rng=1)[0], candidates(leaked, unseen, 0.07, rng=1)[0])
    with pytest.raises(ValueError, match="planted rows needed"):
        candidates(leaked, unseen, 0.5, rng=0)


def test_matched_candidates_give_the_matched_features_no_edge():
    g = torch.Generator().manual_seed(0)
    n_other, n_plant = 3000, 600
    lengths = torch.cat([torch.randint(10, 80, (n_other,), generator=g), torch.randint(30, 120, (n_plant,), generator=g)])
    leaked, unseen = torch.zeros(n_other + n_plant, dtype=torch.bool), torch.zeros(n_other + n_plant, dtype=torch.bool)
    leaked[n_other:n_other + n_plant // 2], unseen[n_other + n_plant // 2:] = True, True
    planted = leaked | unseen

    def longest_precision(idx, k):
        return planted[idx[torch.argsort(-lengths[idx].double(), stable=True)[:k]]].float().mean().item()

    raw_idx, raw_k = candidates(leaked, unseen, 0.07, rng=0)
    assert longest_precision(raw_idx, raw_k) > 0.3  # the give-away, before matching (random: 0.07)
    for share in (0.02, 0.07, 0.2):
        idx, k = candidates(leaked, unseen, share, rng=0, features=[lengths])
        assert int(planted[idx].sum()) == k and k / len(idx) == pytest.approx(share, abs=2e-3)
        assert len(set(idx.tolist())) == len(idx) and abs(int(leaked[idx].sum()) - int(unseen[idx].sum())) <= 1
        assert longest_precision(idx, k) < share + 2 * (share * (1 - share) / k) ** 0.5 + 0.02, share
    # two features at once: a second give-away (novelty) is matched too
    nov = torch.cat([torch.rand(n_other, generator=g), 0.5 + torch.rand(n_plant, generator=g)])
    idx, k = candidates(leaked, unseen, 0.07, rng=0, features=[lengths, nov])
    top = idx[torch.argsort(-nov[idx].double(), stable=True)[:k]]
    assert planted[top].float().mean() < 0.07 + 2 * (0.07 * 0.93 / k) ** 0.5 + 0.03


def test_confounded_worlds_are_named():
    rows = [{"lm": "m", "text": "t", "task": "lm", "variant": "default", "selector": s, "share": 0.07, "k": 100,
             "rng": r, "precision": p, "trained": 0, "unseen": 0}
            for s, ps in (("random", (0.07, 0.08, 0.06)), ("length", (0.30, 0.28, 0.32)), ("novelty", (0.08, 0.07, 0.06)))
            for r, p in zip((3, 4, 5), ps)]
    flags = confounds(summarise(rows))
    assert len(flags) == 1 and "length 0.300 vs random 0.070" in flags[0] and "held-out" in flags[0]
    assert "CONFOUNDED" in format_tables(summarise(rows), [0.07])


def test_the_markdown_cli_prints_the_give_aways_of_its_own_seeds_only(tmp_path, capsys):
    from src.bench.recovery_report import main

    # length is a give-away on the dev seeds (0-2) only
    rows = [{"lm": "m", "text": "t", "task": "lm", "variant": "default", "selector": s, "share": 0.07, "k": 100,
             "rng": r, "precision": p, "trained": 0, "unseen": 0}
            for s, ps in (("random", (0.07, 0.08, 0.06, 0.07, 0.08, 0.06)), ("length", (0.30, 0.28, 0.32, 0.07, 0.06, 0.08)))
            for r, p in zip(range(6), ps)]
    path = tmp_path / "recovery.json"
    path.write_text(json.dumps({"rows": rows}))
    main([str(path), "--split", "dev"])
    out = capsys.readouterr().out
    assert "CONFOUNDED m, t, task=lm (dev seeds): length 0.300" in out and "held-out seeds" not in out
    main([str(path), "--split", "held-out"])
    out = capsys.readouterr().out
    assert "CONFOUNDED" not in out and "No world confounded on the held-out seeds" in out


def test_each_selector_scores_on_the_gradients_its_config_names():
    base = world_overrides("wordnet_lm", "classify_lm", 0, 2000, 500)
    cfg = run_options(compose_config([*base, "gradient.precondition=adafactor"]))
    sels = build_selectors(run_options(compose_config([*base, "gradient.precondition=adafactor", "selector=select",
                                                       "baselines=[select_paper,select_balanced,random]"])).selectors)
    variants = default_variants(cfg, sels)
    assert {k: v[1] for k, v in variants.items()} == {"default": ["select", "random"],
                                                       "precondition=none": ["select_paper", "select_balanced"]}
    assert variants["default"][0].gradient.precondition == "adafactor"
    assert variants["precondition=none"][0].gradient.precondition == "none"
    raw = default_variants(run_options(compose_config(base)), sels)  # a raw run: select_paper's raw gradients are its own
    assert list(raw) == ["default"] and sorted(raw["default"][1]) == ["random", "select", "select_balanced", "select_paper"]
    assert "seed.leak_fraction=0.15625" in base and "seed.unseen_rows=250" in base


def test_summary_is_mean_and_std_over_seeds_per_selector_and_share():
    rows = [{"lm": "m", "task": "t", "variant": "default", "selector": s, "share": 0.07, "k": 10, "rng": r,
             "precision": p, "trained": p / 2, "unseen": p / 2}
            for s, ps in (("select", (0.6, 0.8)), ("random", (0.1, 0.1))) for r, p in enumerate(ps)]
    summary = summarise(rows)
    sel = next(r for r in summary if r["selector"] == "select")
    assert sel["precision_mean"] == pytest.approx(0.7) and sel["precision_std"] == pytest.approx(0.1414, abs=1e-4)
    assert sel["n_seeds"] == 2
    text = format_tables(summary, [0.07])
    assert "0.700 ± 0.141" in text and "0.100 ± 0.000" in text and "dev seeds (0,1)" in text


def test_markdown_table_bolds_the_best_selector_per_world():
    from src.bench.recovery_report import markdown

    rows = [{"lm": "m", "text": "t", "task": "lm", "variant": "default", "selector": s, "share": 0.07, "k": 10,
             "rng": r, "precision": p, "trained": 0, "unseen": 0}
            for s, ps in (("random", (0.1, 0.1)), ("select", (0.5, 0.7))) for r, p in zip((3, 4), ps)]
    table = markdown(summarise(rows))
    assert "| m, t, lm |" in table and "| select | **0.600 ± 0.141** |" in table and "| random | 0.100 ± 0.000 |" in table


def test_seeds_six_to_eight_are_their_own_split():
    from src.bench.recovery_report import split_of

    assert [split_of(r) for r in (0, 2, 3, 5, 6, 8, 9)] == ["dev", "dev", "held-out", "held-out", "fresh", "fresh", "dev"]
    rows = [{"lm": "m", "text": "t", "task": "lm", "variant": "default", "selector": "random", "share": 0.07, "k": 100,
             "rng": r, "precision": 0.1 * r, "trained": 0, "unseen": 0} for r in (3, 6, 7)]
    by_split = {r["split"]: r for r in summarise(rows)}
    assert by_split["held-out"]["n_seeds"] == 1 and by_split["fresh"]["seeds"] == [6, 7]
    assert abs(by_split["fresh"]["precision_mean"] - 0.65) < 1e-9


def test_ceiling_probe_scores_every_row_out_of_fold_and_finds_a_linear_signal():
    from src.bench.ceiling import cv_scores

    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 16, generator=g)
    y = torch.zeros(200)
    y[:20] = 1
    X[:20, 0] += 8.0  # positives stand out along one direction only
    s = cv_scores(X, y, folds=5, seed=0)
    assert s.shape == (200,) and torch.isfinite(s).all()
    assert y[torch.argsort(-s)[:20]].mean() >= 0.8  # the held-out folds still rank them first
    assert torch.equal(cv_scores(X, y, seed=0), s)  # seeded folds: the same scores again
    # Out of fold: rows told apart only by features of their own (one-hot, which an in-sample fit would
    # memorise) carry nothing to the rows the fit did not see, so the scores find about the base rate.
    own = torch.cat([torch.eye(200) * 5, torch.randn(200, 16, generator=g)], 1)
    assert y[torch.argsort(-cv_scores(own, y, seed=0))[:20]].mean() <= 0.4


def test_ceiling_hits_count_oracle_counts_and_quotas_per_class():
    from src.bench.ceiling import hits

    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    planted = torch.tensor([1, 1, 0, 0, 1, 0, 0, 0])
    score = torch.tensor([4.0, 1.0, 3.0, 0.0, 0.0, 2.0, 1.0, 3.0])
    # class 0 takes 2 (its planted count) in order rows 0, 2 -> 1 hit; class 1 takes 1: row 7 -> 0 hits
    # with quotas 3 / 1: rows 0, 2, 1 -> 2 hits; row 7 -> 0
    assert hits(score, planted, labels, {0: 3, 1: 1}) == (1, 2)
