"""The real Hydra config composes with the user's overrides and every option instantiates."""
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from src.errors import UserError
from src.checks import validate
from src.config import run_options
from src.selectors.registry import build_selectors
from src.selectors.base import Selector
from tests.conftest import CONF, ROOT, compose_cfg


def test_user_knobs_override_as_documented():
    cfg = compose_cfg(["d=4096", "P=5", "k=1000", "selector=select", "seed=nq"])
    assert (cfg.d, cfg.P, cfg.k) == (4096, 5, 1000)
    assert cfg.seed.path == "sentence-transformers/natural-questions"
    assert cfg.selector._target_.endswith("SelectSelector")


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "selector").glob("*.yaml")))
def test_every_selector_config_instantiates(name):
    sel = build_selectors(run_options(compose_cfg([f"selector={name}", "baselines=[]"])).selectors)[name]
    assert isinstance(sel, Selector) and sel.name == name and isinstance(sel.gradients, dict)


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "projector").glob("*.yaml")))
def test_every_projector_config_instantiates(name):
    proj = instantiate(compose_cfg([f"projector={name}"]).projector)(in_dim=10, d=4)
    assert proj.project(__import__("torch").ones(1, 10)).shape == (1, 4)


# The keys every option of a group carries: what the code reads from it, whatever the task.
REQUIRED = {"model": {"name_or_path", "head", "max_length", "finetuned"},
            "dataset": {"path", "n_train", "n_test", "n_val", "label_words", "lm_prompt"},
            "seed": {"path", "max_examples"}, "trainer": {"accelerator", "devices", "precision", "progress_bar"},
            "embedder": {"name_or_path", "batch_size", "max_length"}}


@pytest.mark.parametrize("group", sorted(REQUIRED))
def test_every_option_of_each_group_composes_with_the_keys_the_code_reads(group):
    options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    assert options
    for name in options:
        node = OmegaConf.to_container(compose_cfg([f"{group}={name}"])[group], resolve=False)
        assert REQUIRED[group] <= set(node), (name, REQUIRED[group] - set(node))


def test_every_experiment_composes_and_passes_the_option_checks():
    names = sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml"))
    assert "paper_ag_news" in names and "baselines" in names
    for name in names:
        opts = run_options(compose_cfg([f"experiment={name}"]))  # raises on any option out of its set
        validate(opts, build_selectors(opts.selectors))


def test_unknown_baseline_name_suggests_the_right_one():
    with pytest.raises(UserError, match="Unknown selector 'topkk'. Did you mean: topk"):
        run_options(compose_cfg(["baselines=[topkk]"]))


@pytest.mark.parametrize("override,msg", [("d=0", "d must be positive"), ("d=-5", "d must be positive"),
                                          ("P=0", "P .* must be >= 1"), ("k=0", "k .* must be positive")])
def test_bad_knobs_fail_before_any_work(override, msg):
    with pytest.raises(UserError, match=msg):
        run_options(compose_cfg([override]))

