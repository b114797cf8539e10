"""Label-word classification through the LM head: label tokens, gradients vs the dense reference (raw,
preconditioned, dense map), the projected target, cache keys with a given θf, and the pipeline end to end."""
import logging

import pytest
import torch

from src.config import run_options
from src.errors import UserError
from src.pipeline import run
from src.reference import naive_lm_head_grads
from src.stages import autolabel, gradient_rows, gradients, load_data, load_models
from src.tasks import get_task
from src.tasks.classify_lm import default_label_word
from tests.conftest import TINY_BASE_LM, compose_cfg

TINY_CLM = ["task=classify_lm", *TINY_BASE_LM, "dataset.n_train=40", "dataset.n_test=24", "dataset.n_val=16",
            "seed.max_examples=60", "finetune.epochs=1", "retrain.epochs=2", "d=16", "P=2",
            "gradient.precondition_rows=32"]


@pytest.fixture(scope="module")
def clm_cfg(tmp_path_factory):
    # One cache per module: θf and autolabels are built once and reused by every test here.
    cache = tmp_path_factory.mktemp("clm")
    return lambda *o: compose_cfg([*TINY_CLM, *o], cache)


def setup(cfg):
    data = load_data(cfg)
    task = get_task(cfg.task, data.task.classes)
    return task, data, load_models(cfg, data, task)


def test_default_label_words_come_from_class_names():
    assert default_label_word("noun.animal") == " animal"
    assert default_label_word("Sci/Tech") == " Tech"
    assert default_label_word("World") == " World"


def test_label_words_must_have_distinct_first_tokens(clm_cfg):
    cfg = run_options(clm_cfg("dataset.label_words=[' animal',' animal',' food',' object']"))
    data = load_data(cfg)
    with pytest.raises(UserError, match="share a first token"):
        get_task(cfg.task, data.task.classes).build_base(data.task)


def test_label_words_count_must_match_classes(clm_cfg):
    cfg = run_options(clm_cfg("dataset.label_words=[' animal',' plant']"))
    with pytest.raises(UserError, match="2 words for 4 classes"):
        get_task(cfg.task, load_data(cfg).task.classes)


def answer_batch(spec, data, labels, n):
    return spec.collate(spec.items(data.seed, labels, range(n)))


@pytest.mark.parametrize("precondition", ["none", "adafactor"])
def test_projected_gradients_equal_dense_reference(clm_cfg, precondition):
    cfg = run_options(clm_cfg(f"gradient.precondition={precondition}"))
    task, data, pair = setup(cfg)
    labels = autolabel(cfg, pair, data, task)
    G, t = gradients(cfg, pair, data, labels, task)
    assert G.shape == (2, 60, 16) and t.shape == (16,)
    spec = task.gradient_spec(pair, data.seed, labels, [0.5, 1.0], cfg.gradient)
    model = pair.load(1.0)  # checkpoint P = θf
    batch = answer_batch(spec, data, labels, 5)
    assert (batch["attention_mask"].sum(1) - batch["prompt_lengths"]).tolist() == [1] * 5  # a one-token response
    tokens = task.label_tokens(pair.tokenizer)
    last = batch["input_ids"][torch.arange(5), batch["attention_mask"].sum(1) - 1]
    assert last.tolist() == tokens[labels["labels"][:5]].tolist()  # ... the autolabel's label word
    dense = naive_lm_head_grads(model, batch["input_ids"], batch["attention_mask"], batch["prompt_lengths"])
    assert spec.factors is None if precondition == "none" else spec.factors is not None
    if precondition == "adafactor":  # G/√v̂ with v̂ ∝ r cᵀ (the constant √Σr drops out of every cosine)
        r, c = spec.factors
        dense = dense / (r.double().clamp_min(float(r.max()) * 1e-12 + 1e-30).sqrt()[:, None]
                         * c.double().clamp_min(float(c.max()) * 1e-12 + 1e-30).sqrt()[None, :])
    torch.testing.assert_close(G[-1, :5].double(), spec.projector.project_matrix(dense), rtol=1e-3, atol=1e-6)
    delta = pair.statef["lm_head.weight"].double() - pair.state0["lm_head.weight"].double()
    torch.testing.assert_close(t.double(), -spec.projector.project_matrix(delta[None])[0], rtol=1e-4, atol=1e-7)


def test_second_moments_are_row_and_column_means_of_squared_gradients():
    from src.gradients.last_layer import Positions, errors, second_moments

    g = torch.Generator().manual_seed(0)
    W, h = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(7, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (7,), generator=g)
    err = errors(h, y, W, None)
    sq = (err[:, :, None] * h[:, None, :]) ** 2                 # [n, V, H]
    r, c, m = second_moments(Positions(h, y, torch.arange(7), 7), W, None, max_chunk_elems=10)  # chunked
    assert m == 7
    torch.testing.assert_close(r / m, sq.mean(0).sum(1))
    torch.testing.assert_close(c / m, sq.mean(0).sum(0))


def test_dense_projection_option_matches_its_own_matrix(clm_cfg):
    cfg = run_options(clm_cfg("gradient.projection=dense", "gradient.precondition=none", "P=1"))
    task, data, pair = setup(cfg)
    labels = autolabel(cfg, pair, data, task)
    G, t = gradients(cfg, pair, data, labels, task)
    spec = task.gradient_spec(pair, data.seed, labels, [1.0], cfg.gradient)
    batch = answer_batch(spec, data, labels, 3)
    dense = naive_lm_head_grads(pair.load(1.0), batch["input_ids"], batch["attention_mask"], batch["prompt_lengths"])
    torch.testing.assert_close(G[0, :3].double(), dense.flatten(1) @ spec.projector.matrix().double().T,
                               rtol=1e-3, atol=1e-6)


@pytest.fixture(scope="module")
def given_thetaf(clm_cfg, tmp_path_factory):
    """θf as a user hands it over: a saved folder (the experiment's θf, finetuned once)."""
    cfg = run_options(clm_cfg())
    _, _, pair = setup(cfg)
    folder = tmp_path_factory.mktemp("thetaf") / "thetaf"
    pair.load(1.0).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("change", [["dataset.label_words=[' animal',' plant',' food',' thing']"],
                                    ["classify_lm.prompt='Definition: {text}\\nTopic:'", "dataset.lm_prompt=null"],
                                    ["dataset.lm_prompt='{text}\\nCategory:'"]])
def test_with_a_given_thetaf_label_words_and_prompt_key_autolabels_and_gradients(clm_cfg, given_thetaf, change,
                                                                                 caplog):
    def stages(*o):
        cfg = run_options(clm_cfg(f"model.finetuned={given_thetaf}", "P=1", *o))
        task, data, pair = setup(cfg)
        labels = autolabel(cfg, pair, data, task)
        _, _, store = gradient_rows(cfg, pair, data, labels, task)
        return labels, store

    base_labels, base_store = stages()
    with caplog.at_level(logging.INFO):
        labels, store = stages(*change)
    assert "autolabel: reusing" not in caplog.text and "0 of 1 shards computed" not in caplog.text
    assert labels["key"] != base_labels["key"] and store != base_store
    assert not torch.equal(labels["logp_f"], base_labels["logp_f"])  # really recomputed with the new words/prompt
    caplog.clear()
    with caplog.at_level(logging.INFO):
        again, store_again = stages()  # the original settings still find their own cache
    assert "autolabel: reusing" in caplog.text and again["key"] == base_labels["key"] and store_again == base_store


def test_classify_lm_end_to_end(clm_cfg, tmp_path):
    res = run(clm_cfg("baselines=[topk,random,expert]"), tmp_path / "run")
    assert res["task"] == "classify_lm" and res["metric"] == "accuracy"
    assert [r["selector"] for r in res["results"]] == ["select_balanced", "topk", "random", "expert"]
    for r in res["results"]:
        assert 0 <= r["accuracy"] <= 1 and r["k"] == 8
        assert 1 <= r["best_epoch"] <= r["epochs_run"] <= 2 and len(r["epoch_scores"]) == r["epochs_run"]
    assert 0 <= res["reference"]["thetaf_accuracy"] <= 1


def test_exact_projection_keeps_every_inner_product_of_the_dense_gradients(clm_cfg):
    cfg = run_options(clm_cfg("gradient.projection=exact", "gradient.precondition=none", "P=2"))
    task, data, pair = setup(cfg)
    labels = autolabel(cfg, pair, data, task)
    G, t = gradients(cfg, pair, data, labels, task)
    spec = task.gradient_spec(pair, data.seed, labels, [0.5, 1.0], cfg.gradient)
    dense = []
    for a in (0.5, 1.0):
        batch = answer_batch(spec, data, labels, 6)
        model = pair.load(a)
        dense.append(naive_lm_head_grads(model, batch["input_ids"], batch["attention_mask"],
                                         batch["prompt_lengths"]).flatten(1))
    dense = torch.cat(dense)                                   # [2·6, V·H]: two checkpoints' first 6 rows
    rows = torch.cat([G[0, :6], G[1, :6]]).double()
    delta = (pair.statef["lm_head.weight"].double() - pair.state0["lm_head.weight"].double()).flatten()
    scale = float(dense.norm(dim=1).max()) ** 2
    torch.testing.assert_close(rows @ rows.T, dense @ dense.T, rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(rows @ t.double(), dense @ -delta, rtol=0, atol=1e-5 * float(dense.norm(dim=1).max()
                                                                                        * delta.norm()))
    assert t.double().norm() == pytest.approx(float(delta.norm()), rel=1e-5)


def test_a_selector_with_its_own_gradient_options_selects_on_its_own_store(clm_cfg, tmp_path):
    import json

    res = run(clm_cfg("P=1", "selector=select", "gradient.precondition=adafactor", "baselines=[select_paper]",
                      "retrain.epochs=1", f"cache_dir={tmp_path / 'cache'}"), tmp_path / "run")
    assert [r["selector"] for r in res["results"]] == ["select", "select_paper"]
    stores = [json.loads(p.read_text())["config"]["spec"]["precondition"]
              for p in (tmp_path / "cache" / "grads").glob("*/meta.json")]
    assert sorted(stores) == ["adafactor", "none"]  # the run's gradients, and select_paper's raw ones
    assert {"gradients", "gradients/select_paper"} <= set(res["timings"])


def test_a_selectors_gradient_options_are_checked_before_any_data(clm_cfg, tmp_path):
    from src.selectors.registry import build_selectors

    cfg = run_options(clm_cfg("selector=select", "gradient.precondition=adafactor"))
    with pytest.raises(UserError, match="unknown option"):
        from src.checks import preflight

        sels = build_selectors(cfg.selectors)
        sels["select"].gradients = {"whiten": True}
        preflight(cfg, sels)
    sels["select"].gradients = {"precondition": "adam"}
    with pytest.raises(UserError, match="gradient.precondition must be one of"):
        preflight(cfg, sels)
    assert cfg.gradient.precondition == "adafactor"  # the run's own options are untouched
