"""The whole pipeline in-process on tiny configs: every selector, caching, and bad input."""
import json
import logging

import pytest
import torch

from src.config import run_options
from src.errors import UserError
from src.pipeline import run

SELECTORS = ["select", "topk", "random", "likelihood", "likelihood_ratio", "expert"]


def test_full_run_reports_every_selector_and_reuses_cached_stages(tiny_cfg, tmp_path, caplog):
    cfg = tiny_cfg()
    res = run(cfg, tmp_path / "run1")
    assert [r["selector"] for r in res["results"]] == SELECTORS
    for r in res["results"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["ot_distance"] >= 0.0
        assert r["k"] == 8 and abs(sum(r["class_balance"].values()) - 1) < 1e-6
        sel = json.loads((tmp_path / "run1" / "selections" / f"{r['selector']}.json").read_text())
        assert len(sel["indices"]) == 8 == len(set(sel["indices"]))
    assert set(res["reference"]) == {"theta0_accuracy", "thetaf_accuracy"}
    for stage in ("data", "models", "autolabel", "gradients", "select/select", "select/retrain"):
        assert stage in res["timings"]

    # Same upstream config, other selector and k: θf, autolabels and gradient shards come from the cache.
    with caplog.at_level(logging.INFO):
        res2 = run(tiny_cfg("k=5", "selector=topk", "baselines=[]"), tmp_path / "run2")
    assert "θf: reusing" in caplog.text and "autolabel: reusing" in caplog.text
    assert "0 of 2 shards computed" in caplog.text
    assert [r["selector"] for r in res2["results"]] == ["topk"]


def test_gradient_cache_is_keyed_by_what_produced_it(tiny_cfg, tmp_path, caplog):
    run(tiny_cfg("baselines=[]"), tmp_path / "a")
    with caplog.at_level(logging.INFO):
        run(tiny_cfg("baselines=[]", "d=24"), tmp_path / "b")  # another d: new projections
    assert "2 of 2 shards computed" in caplog.text


def test_k_larger_than_seed_corpus_fails_before_training(tiny_cfg, tmp_path):
    with pytest.raises(UserError, match="k=500 is larger than the seed corpus \\(60 examples\\)"):
        run(tiny_cfg("k=500"), tmp_path / "out")
    assert not (tmp_path / "cache" / "thetaf").exists()  # nothing expensive ran


def test_empty_seed_corpus_is_a_clear_error(tiny_cfg, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UserError, match="seed corpus"):
        run(tiny_cfg("seed=local", f"seed.path={empty}"), tmp_path / "out")


def test_missing_seed_corpus_is_a_clear_error(tiny_cfg, tmp_path):
    with pytest.raises(UserError, match="seed corpus file not found"):
        run(tiny_cfg("seed=local", f"seed.path={tmp_path / 'nope.csv'}"), tmp_path / "out")


def test_finetuned_model_with_other_shapes_is_rejected(tiny_cfg, tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    other = AutoModelForSequenceClassification.from_config(
        AutoConfig.for_model("bert", hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=64, num_labels=4))
    other.save_pretrained(tmp_path / "thetaf")
    # Caught from the two configs, before θf's weights are loaded or anything is computed.
    with pytest.raises(UserError, match="different architectures or vocabularies: hidden_size is 32 in the base and 48"):
        run(tiny_cfg(f"model.finetuned={tmp_path / 'thetaf'}"), tmp_path / "out")
    assert not (tmp_path / "cache" / "autolabel").exists()


def test_given_finetuned_model_is_used_as_theta_f(tiny_cfg, tmp_path):
    from src.stages import load_models, load_task_data

    cfg = run_options(tiny_cfg())
    data, task = load_task_data(cfg)
    pair = load_models(cfg, data, task)  # θf made by finetuning
    pair.load(1.0).save_pretrained(tmp_path / "thetaf")
    cfg2 = run_options(tiny_cfg(f"model.finetuned={tmp_path / 'thetaf'}"))
    given = load_models(cfg2, data, load_task_data(cfg2)[1])
    for k, v in pair.statef.items():
        torch.testing.assert_close(given.statef[k], v)


def test_gradient_stage_resumes_and_never_reuses_a_corrupt_shard(tiny_cfg, tmp_path, caplog):
    from src.stages import autolabel, gradients, load_models, load_task_data

    cfg = run_options(tiny_cfg())
    data, task = load_task_data(cfg)
    pair = load_models(cfg, data, task)
    labels = autolabel(cfg, pair, data, task)
    G, t = gradients(cfg, pair, data, labels, task)
    assert G.shape == (2, 60, 16) and t.shape == (16,)
    store = next((tmp_path / "cache" / "grads").iterdir())
    (store / "ckpt1-00001.safetensors").unlink()              # as if killed before this shard
    with open(store / "ckpt2-00000.safetensors", "r+b") as f:  # a flipped byte
        f.seek(-5, 2)
        f.write(b"\xff")
    with caplog.at_level(logging.INFO):
        G2, t2 = gradients(cfg, pair, data, labels, task)
    assert "checkpoint 1/2 (alpha=0.500): 1 of 2 shards computed" in caplog.text
    assert "checkpoint 2/2 (alpha=1.000): 1 of 2 shards computed" in caplog.text
    assert "missing or corrupt" in caplog.text
    torch.testing.assert_close(G2, G, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(t2, t)
