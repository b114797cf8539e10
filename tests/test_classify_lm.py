"""Label-word classification through the LM head: label tokens, gradients vs the dense
reference (raw and preconditioned), the projected target, and the pipeline end to end."""
import pytest
import torch

from src.errors import UserError
from src.gradients import label_word as lw
from src.pipeline import run
from src.stages import autolabel, gradients, load_data, load_models
from src.tasks import get_task
from src.tasks.classify_lm import default_label_word

TINY_CLM = ["task=classify_lm", "model=wordnet_lm", "dataset.n_train=40", "dataset.n_test=24", "dataset.n_val=16",
            "seed.max_examples=60", "finetune.epochs=1", "retrain.epochs=2", "d=16", "P=2",
            "classify_lm.precondition_rows=32",
            "base_lm.n_embd=16", "base_lm.n_layer=1", "base_lm.n_head=2", "base_lm.vocab_size=300",
            "base_lm.max_steps=5", "base_lm.max_texts=300"]


@pytest.fixture
def clm_cfg(tiny_cfg):
    return lambda *o: tiny_cfg(*TINY_CLM, *o)


@pytest.fixture
def clm_setup(clm_cfg):
    cfg = clm_cfg()
    task = get_task(cfg)
    data = load_data(cfg)
    return cfg, task, data, load_models(cfg, data, task)


def test_default_label_words_come_from_class_names():
    assert default_label_word("noun.animal") == " animal"
    assert default_label_word("Sci/Tech") == " Tech"
    assert default_label_word("World") == " World"


def test_label_words_must_have_distinct_first_tokens(clm_cfg):
    cfg = clm_cfg("dataset.label_words=[' animal',' animal',' food',' object']")
    task = get_task(cfg)
    with pytest.raises(UserError, match="share a first token"):
        task.build_base(load_data(cfg).task)


def test_label_words_count_must_match_classes(clm_cfg):
    cfg = clm_cfg("dataset.label_words=[' animal',' plant']")
    with pytest.raises(UserError, match="2 words for 4 classes"):
        get_task(cfg).build_base(load_data(cfg).task)


@pytest.mark.parametrize("precondition", ["none", "adafactor"])
def test_projected_gradients_equal_dense_reference(clm_cfg, precondition):
    cfg = clm_cfg(f"classify_lm.precondition={precondition}")
    task = get_task(cfg)
    data = load_data(cfg)
    pair = load_models(cfg, data, task)
    labels = autolabel(cfg, pair, data, task)
    G, t = gradients(cfg, pair, data, labels, task)
    assert G.shape == (2, 60, 16) and t.shape == (16,)
    proj = task.make_projector(pair)
    model = pair.load(1.0)  # checkpoint P = θf
    items = [(data.seed["text"][i], int(labels["labels"][i])) for i in range(5)]
    batch = task.collate(pair.tokenizer)(items)
    dense = lw.naive_label_word_grads(model, batch, model.lm_head, task.label_tokens[batch["labels"]])
    if precondition == "adafactor":  # G/√v̂ with v̂ ∝ r cᵀ (the constant √Σr drops out of every cosine)
        r, c = task.factors
        dense = dense / (r.double().clamp_min(float(r.max()) * 1e-12 + 1e-30).sqrt()[:, None]
                         * c.double().clamp_min(float(c.max()) * 1e-12 + 1e-30).sqrt()[None, :])
    torch.testing.assert_close(G[-1, :5].double(), proj.project_matrix(dense), rtol=1e-3, atol=1e-6)
    delta = pair.statef["lm_head.weight"].double() - pair.state0["lm_head.weight"].double()
    torch.testing.assert_close(t.double(), -proj.project_matrix(delta[None])[0], rtol=1e-4, atol=1e-7)


def test_second_moment_factors_are_row_and_column_means_of_squared_gradients():
    g = torch.Generator().manual_seed(0)
    err, h = torch.randn(7, 5, generator=g), torch.randn(7, 3, generator=g)
    sq = (err[:, :, None] * h[:, None, :]) ** 2                 # [n, V, H]
    r, c = lw.second_moment_factors([err[:4], err[4:]], [h[:4], h[4:]])
    torch.testing.assert_close(r, sq.mean(0).sum(1))
    torch.testing.assert_close(c, sq.mean(0).sum(0))


def test_dense_projection_option_matches_its_own_matrix(clm_cfg):
    cfg = clm_cfg("classify_lm.projection=dense", "classify_lm.precondition=none", "P=1")
    task = get_task(cfg)
    data = load_data(cfg)
    pair = load_models(cfg, data, task)
    labels = autolabel(cfg, pair, data, task)
    G, t = gradients(cfg, pair, data, labels, task)
    proj = task.make_projector(pair)
    model = pair.load(1.0)
    batch = task.collate(pair.tokenizer)([(data.seed["text"][i], int(labels["labels"][i])) for i in range(3)])
    dense = lw.naive_label_word_grads(model, batch, model.lm_head, task.label_tokens[batch["labels"]])
    torch.testing.assert_close(G[0, :3].double(), dense.flatten(1) @ proj.matrix().double().T, rtol=1e-3, atol=1e-6)


def test_classify_lm_end_to_end(clm_cfg, tmp_path):
    res = run(clm_cfg("baselines=[topk,random,expert]"), tmp_path / "run")
    assert res["task"] == "classify_lm" and res["metric"] == "accuracy"
    assert [r["selector"] for r in res["results"]] == ["select", "topk", "random", "expert"]
    for r in res["results"]:
        assert 0 <= r["accuracy"] <= 1 and r["k"] == 8
        assert 1 <= r["best_epoch"] <= r["epochs_run"] <= 2 and len(r["epoch_scores"]) == r["epochs_run"]
    assert 0 <= res["reference"]["thetaf_accuracy"] <= 1
