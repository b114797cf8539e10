"""A run's options: made once from the config, each object checking its own values, frozen, and what
cache keys hash; a selector's gradient options are the run's with its own values replaced."""
from dataclasses import FrozenInstanceError, replace

import pytest

from src.cache import stable_hash
from src.config import run_options
from src.errors import UserError
from src.options import GradientOptions, SourceOptions, build
from tests.conftest import compose_cfg


def test_the_config_becomes_options_once():
    opts = run_options(compose_cfg(["task=classify_lm", "d=32", "P=2", "gradient.precondition=adafactor"]))
    assert (opts.gradient.d, opts.gradient.P, opts.gradient.precondition) == (32, 2, "adafactor")
    assert opts.task.name == "classify_lm" and opts.task.batch_size == opts.gradient.batch_size
    assert opts.task.label_words == tuple(opts.dataset.label_words) and "{text}" in opts.task.lm_prompt
    assert opts.selectors["selector"]["_target_"].endswith("SelectSelector")  # the main selector's plain spec
    with pytest.raises(FrozenInstanceError):
        opts.task.trainer.progress_bar = False


def test_a_selectors_gradients_replace_the_runs_and_are_checked():
    run = GradientOptions(d=16, P=3, precondition="adafactor")
    raw = run.with_selector({"precondition": "none", "P": 1})
    assert (raw.precondition, raw.P, raw.d) == ("none", 1, 16) and run.precondition == "adafactor"
    with pytest.raises(UserError, match=r"selector gradients: unknown option\(s\) \['whiten'\]"):
        run.with_selector({"whiten": True})
    with pytest.raises(UserError, match="gradient.precondition must be one of"):
        run.with_selector({"precondition": "adam"})
    # Whole-model gradients take the run's preconditioner per layer; only their projection is fixed.
    assert run.with_selector({"layers": "all"}).precondition == "adafactor"
    with pytest.raises(UserError, match="gradient.layers other than head"):
        run.with_selector({"layers": "all", "projection": "dense"})


def test_an_unknown_option_in_a_group_is_named():
    with pytest.raises(UserError, match=r"seed: unknown option\(s\) \['max_exampels'\]"):
        build(SourceOptions, {"path": "x.jsonl", "max_exampels": 10}, "seed")
    with pytest.raises(UserError, match=r"gradient: unknown option\(s\) \['projections'\]"):
        run_options(compose_cfg(["+gradient.projections=dense"]))


def test_keys_hash_the_option_values():
    a = GradientOptions(d=16)
    assert stable_hash(a) == stable_hash(GradientOptions(d=16)) != stable_hash(replace(a, d=32))


def test_whole_model_selector_at_theta0_takes_its_gradients_on_the_theta0_grid():
    from src.models import checkpoint_alphas
    from src.selectors.registry import build_selectors

    opts = run_options(compose_cfg(["task=classify_lm", "P=3", "baselines=[select_layers_theta0]"]))
    sel = build_selectors(opts.selectors)["select_layers_theta0"]
    g = opts.gradient.with_selector(dict(sel.gradients))
    assert (g.layers, g.checkpoints, g.P, g.precondition) == ("all", "theta_0", 1, "none")
    assert checkpoint_alphas(g.P, g.checkpoints) == [0.0]  # the gradients of θ0 itself
    assert opts.gradient.checkpoints == "theta_f" and opts.gradient.P == 3  # the run's own are untouched
