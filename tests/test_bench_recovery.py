"""The recovery benchmark's own arithmetic: candidate sets at a planted share, each selector on its own
gradients, and the tables (no model is run here; `make bench-recovery` runs the worlds)."""
import pytest
import torch

from src.bench.recovery import candidates, default_variants, format_tables, summarise, world_overrides
from src.config import compose_config
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


def test_each_selector_scores_on_the_gradients_its_config_names():
    base = world_overrides("wordnet_lm", "classify_lm", 0, 2000, 500)
    cfg = compose_config([*base, "gradient.precondition=adafactor"])
    sels = build_selectors(compose_config([*base, "gradient.precondition=adafactor", "selector=select",
                                           "baselines=[select_paper,select_balanced,random]"]))
    variants = default_variants(cfg, sels)
    assert {k: v[1] for k, v in variants.items()} == {"default": ["select", "random"],
                                                       "precondition=none": ["select_paper", "select_balanced"]}
    assert variants["default"][0].gradient.precondition == "adafactor"
    assert variants["precondition=none"][0].gradient.precondition == "none"
    raw = default_variants(compose_config(base), sels)  # a raw run: select_paper's raw gradients are its own
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
    assert "0.700 ± 0.141" in text and "0.100 ± 0.000" in text
