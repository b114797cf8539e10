"""The real Hydra config composes with the user's overrides and every option instantiates."""
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from src.errors import UserError
from src.pipeline import build_selectors, validate
from src.selectors.base import Selector
from tests.conftest import CONF, ROOT, compose_cfg


def test_user_knobs_override_as_documented():
    cfg = compose_cfg(["d=4096", "P=5", "k=1000", "selector=select", "seed=nq"])
    assert (cfg.d, cfg.P, cfg.k) == (4096, 5, 1000)
    assert cfg.seed.path == "sentence-transformers/natural-questions"
    assert cfg.selector._target_.endswith("SelectSelector")


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "selector").glob("*.yaml")))
def test_every_selector_config_instantiates(name):
    sel = instantiate(compose_cfg([f"selector={name}"]).selector)
    assert isinstance(sel, Selector) and sel.name == name


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "projector").glob("*.yaml")))
def test_every_projector_config_instantiates(name):
    proj = instantiate(compose_cfg([f"projector={name}"]).projector)(in_dim=10, d=4)
    assert proj.project(__import__("torch").ones(1, 10)).shape == (1, 4)


@pytest.mark.parametrize("group", ["model", "dataset", "seed", "trainer", "logger", "embedder"])
def test_every_option_of_each_group_composes(group):
    for p in (CONF / group).glob("*.yaml"):
        cfg = compose_cfg([f"{group}={p.stem}"])
        OmegaConf.to_container(cfg[group] if group in cfg else {}, resolve=False)


def test_experiment_configs_compose():
    for p in (ROOT / "experiments").glob("*.yaml"):
        cfg = compose_cfg([f"experiment={p.stem}"])
        assert cfg.selector is not None


def test_unknown_baseline_name_suggests_the_right_one():
    with pytest.raises(UserError, match="Unknown selector 'topkk'. Did you mean: topk"):
        build_selectors(compose_cfg(["baselines=[topkk]"]))


@pytest.mark.parametrize("override,msg", [("d=0", "d must be positive"), ("d=-5", "d must be positive"),
                                          ("P=0", "P .* must be >= 1"), ("k=0", "k .* must be positive")])
def test_bad_knobs_fail_before_any_work(override, msg):
    with pytest.raises(UserError, match=msg):
        validate(compose_cfg([override]))


def test_main_entry_point_is_short():
    assert len(Path(ROOT / "src" / "main.py").read_text().splitlines()) < 150
