"""Every cached stage downstream of θ0 is keyed by θ0's own config: the embedded LM's pretraining
(``base_lm.*``) and the trainer's precision change the θf, autolabel and gradient-store keys."""
from src.config import run_options
from src.stages import _gradient_store, autolabel, base_key, load_models, load_task_data
from tests.conftest import TINY_BASE_LM, compose_cfg

TINY_CLM = ["task=classify_lm", *TINY_BASE_LM, "dataset.n_train=24", "dataset.n_test=16", "dataset.n_val=8",
            "seed.max_examples=24", "finetune.epochs=1", "d=16", "P=1"]


def keys(cfg):
    cfg = run_options(cfg)
    data, task = load_task_data(cfg)
    pair = load_models(cfg, data, task)
    labels = autolabel(cfg, pair, data, task)
    store, _, _ = _gradient_store(cfg, cfg.gradient, pair, data, labels, task)
    return pair.key, labels["key"], store.root.name


def test_base_lm_and_precision_change_every_downstream_key(tmp_path):
    cache = tmp_path / "shared"  # one cache: a key that ignored the change would find the old entry
    default = keys(compose_cfg(TINY_CLM, cache))
    other_base = keys(compose_cfg([*TINY_CLM, "base_lm.max_steps=6"], cache))
    other_precision = keys(compose_cfg([*TINY_CLM, "trainer.precision=bf16-mixed"], cache))
    for changed in (other_base, other_precision):
        assert all(a != b for a, b in zip(default, changed)), (default, changed)
    assert keys(compose_cfg(TINY_CLM, cache)) == default  # and an unchanged config reuses all three


def test_base_lm_config_is_ignored_for_other_models():
    a = run_options(compose_cfg(["task=classify_lm", "model=tiny_gpt2"]))
    b = run_options(compose_cfg(["task=classify_lm", "model=tiny_gpt2", "base_lm.max_steps=6"]))
    assert base_key(a) == base_key(b)
    other = run_options(compose_cfg(["task=classify_lm", "model=tiny_gpt2", "trainer.precision=16-mixed"]))
    assert base_key(a) != base_key(other)
