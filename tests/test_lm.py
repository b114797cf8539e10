"""The raw-text LM task on a tiny base LM: every-token loss, gradients vs autograd, perplexity by hand,
documents-only data, end to end through ``src.pipeline.run``."""
import json
import math

import pytest
import torch

from src.config import run_options
from src.errors import UserError
from src.pipeline import run
from src.reference import naive_lm_head_grads
from src.stages import autolabel, gradients, load_data, load_models
from src.tasks import get_task
from src.tasks.causal import response_nll
from tests.conftest import TINY_BASE_LM, compose_cfg

# A tiny base LM (pretrained for a few steps on a few hundred texts) so the whole path runs in seconds.
TINY_LM = ["task=lm", *TINY_BASE_LM, "dataset=wordnet_documents", "seed=wordnet_documents",
           "finetune=sft", "retrain=sft", "dataset.n_train=40", "dataset.n_test=24", "seed.max_examples=60",
           "finetune.epochs=1", "retrain.epochs=1"]


@pytest.fixture(scope="module")
def lm_cfg(tmp_path_factory):
    # One cache per module: the tiny base LM, θf and autolabels are built once and reused by every test.
    cache = tmp_path_factory.mktemp("lm")
    return lambda *o: compose_cfg([*TINY_LM, *o], cache)


@pytest.fixture(scope="module")
def lm_setup(lm_cfg):
    cfg = run_options(lm_cfg())
    data = load_data(cfg)
    task = get_task(cfg.task, data.task.classes)
    return cfg, task, data, load_models(cfg, data, task)


def test_data_are_plain_documents_without_a_topic_marker_from_the_half_theta0_never_saw(lm_setup):
    from src.data.buckets import id_bucket

    cfg, task, data, pair = lm_setup
    assert set(data.task.train.column_names) == {"id", "text", "group"} and data.task.classes == []
    assert set(data.seed.column_names) == {"id", "text", "group"}
    docs = list(data.task.train["text"]) + list(data.seed["text"])
    assert all(": " in d and "(noun." not in d and "(verb." not in d for d in docs)  # "word: definition"
    assert set(data.task.train["group"]) <= {"noun.animal", "noun.plant", "noun.food"}
    assert {id_bucket(i, 2) for i in [*data.task.train["id"], *data.seed["id"]]} == {1}
    assert set(data.seed["id"]).isdisjoint(set(data.task.train["id"]) | set(data.task.test["id"]))


def test_every_token_counts_after_bos(lm_setup):
    cfg, task, data, pair = lm_setup
    tok = pair.tokenizer
    docs = ["oak (noun.plant): a tree", "cat (noun.animal): a small domesticated feline"]
    batch = task.collate(tok)(task.training_items({"text": docs}, tok))
    assert batch["prompt_lengths"].tolist() == [1, 1]                     # the BOS only
    assert (batch["input_ids"][:, 0] == tok.bos_token_id).all()
    _, n = response_nll(pair.model, batch)
    assert n.tolist() == [len(tok(d, add_special_tokens=False)["input_ids"]) + 1 for d in docs]  # + EOS


def per_document_nll(model, tok, docs, max_length):
    """Hand computation: each document alone, unpadded, summed next-token NLL after the BOS."""
    total, count = [], []
    for d in docs:
        ids = ([tok.bos_token_id] + tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])[:max_length]
        ids = torch.tensor([ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].double()
        logp = logits.log_softmax(-1)[:-1].gather(1, ids[0, 1:, None])[:, 0]
        total.append(-float(logp.sum()))
        count.append(ids.shape[1] - 1)
    return total, count


def test_perplexity_equals_hand_computation(lm_setup):
    cfg, task, data, pair = lm_setup
    model, test = pair.load(1.0), data.task.test
    total, count = per_document_nll(model, pair.tokenizer, test["text"], cfg.task.model.max_length)
    got = task.evaluate(model, pair.tokenizer, test)["perplexity"]
    assert got == pytest.approx(math.exp(sum(total) / sum(count)), rel=1e-4)
    assert got != pytest.approx(math.exp(sum(t / c for t, c in zip(total, count)) / len(total)), rel=1e-4)


def test_autolabel_only_scores_mean_token_loglikelihood(lm_setup):
    cfg, task, data, pair = lm_setup
    labels = autolabel(cfg, pair, data, task)
    assert "labels" not in labels and "responses" not in labels
    docs = data.seed["text"][:5]
    for key, alpha in (("logp_f", 1.0), ("logp_0", 0.0)):
        total, count = per_document_nll(pair.load(alpha), pair.tokenizer, docs, cfg.task.model.max_length)
        mean_logp = -torch.tensor(total) / torch.tensor(count, dtype=torch.double)
        torch.testing.assert_close(labels[key][:5].double(), mean_logp, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(labels["logp_f"], labels["logp_0"])  # θf and θ0 differ
    # the token statistics come from the same two passes: the mean log-ratio is logp_f − logp_0 per document
    torch.testing.assert_close(labels["stat_lr_mean"], labels["logp_f"] - labels["logp_0"], rtol=1e-4, atol=1e-5)
    assert labels["stat_length"][:5].tolist() == [float(c) for c in per_document_nll(
        pair.load(1.0), pair.tokenizer, docs, cfg.task.model.max_length)[1]]


def test_lm_gradients_equal_dense_every_token_reference(lm_setup):
    cfg, task, data, pair = lm_setup
    labels = autolabel(cfg, pair, data, task)
    G, t = gradients(cfg, pair, data, labels, task)
    assert G.shape == (2, 60, 16) and t.shape == (16,)
    spec = task.gradient_spec(pair, data.seed, labels, [0.5, 1.0], cfg.gradient)
    proj = spec.projector
    for j, alpha in ((0, 0.5), (1, 1.0)):  # both synthetic checkpoints θ̂_1, θ̂_2
        model = pair.load(alpha)
        batch = spec.collate(spec.items(data.seed, labels, range(4)))
        dense = naive_lm_head_grads(model, batch["input_ids"], batch["attention_mask"], batch["prompt_lengths"])
        torch.testing.assert_close(G[j, :4], proj.project_matrix(dense).float(), rtol=1e-4, atol=1e-6)
    # The target is −P(θf − θ0) on the head.
    delta = pair.statef["lm_head.weight"] - pair.state0["lm_head.weight"]
    torch.testing.assert_close(t, -proj.project_matrix(delta[None].float())[0], rtol=1e-5, atol=1e-7)


def test_dense_reference_with_prompt_length_0_is_the_plain_causal_lm_gradient():
    """Independent of the task code: with prompt length 0 the dense reference is the head gradient of
    the plain causal-LM loss (labels = input ids), the loss HF models compute themselves."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=32,
                                       tie_word_embeddings=False)).double().eval()
    ids = torch.randint(0, 50, (1, 12))
    dense = naive_lm_head_grads(model, ids, None, [0], reduction="mean")[0]
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()  # mean over the 11 predicted tokens
    torch.testing.assert_close(dense, model.lm_head.weight.grad)
    torch.testing.assert_close(naive_lm_head_grads(model, ids, None, [0])[0], 11 * model.lm_head.weight.grad)


def test_lm_end_to_end_reports_perplexity_for_every_selector(lm_cfg, tmp_path):
    res = run(lm_cfg("finetune.epochs=3"), tmp_path / "run")
    assert res["task"] == "lm" and res["metric"] == "perplexity"
    assert [r["selector"] for r in res["results"]] == ["select_layers", "select", "topk", "random", "likelihood",
                                                       "likelihood_ratio", "expert"]  # whole-model, last-layer, ...
    ref = res["reference"]
    assert ref["thetaf_perplexity"] < ref["theta0_perplexity"]  # training on true documents helps on held-out ones
    for r in res["results"]:
        assert r["k"] == 8 and r["perplexity"] > 1.0 and r["ot_distance"] >= 0
        assert abs(sum(r["groups"].values()) - 1) < 1e-6
    expert = next(r for r in res["results"] if r["selector"] == "expert")
    assert set(expert["groups"]) <= {"noun.animal", "noun.plant", "noun.food"}  # the true data's files
    sel = json.loads((tmp_path / "run" / "selections" / "select.json").read_text())
    assert sel["source"] == "seed" and len(set(sel["indices"])) == 8


# Your own documents: the tiny LM task with dataset=local (a JSONL file with a ``text`` field, no labels).
LOCAL = [o for o in TINY_LM if not o.startswith("dataset")] + ["dataset=local"]


@pytest.mark.parametrize("rows, msg", [
    ([{"text": "", "id": i} for i in range(10)], "every row's 'text' is blank or not text"),
    ([{"text": None, "id": i} for i in range(10)], "every row's 'text' is blank or not text"),
    ([{"body": "some words", "id": i} for i in range(10)], "no field 'text'"),
])
def test_bad_documents_are_user_errors(tiny_cfg, tmp_path, rows, msg):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tiny_cfg(*LOCAL, f"dataset.path={path}")
    with pytest.raises(UserError, match=msg) as e:
        run(cfg, tmp_path / "run")
    assert "\n" not in str(e.value)


def test_blank_documents_are_dropped_not_counted(tiny_cfg, tmp_path):
    path = tmp_path / "docs.jsonl"
    rows = [{"text": f"document number {i}" if i % 3 else "  ", "id": i} for i in range(30)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = run_options(tiny_cfg(*LOCAL, f"dataset.path={path}"))
    data = load_data(cfg)
    splits = [data.task.train, data.task.val, data.task.test]  # val: carved from train (dataset.n_val)
    assert sum(len(s) for s in splits) == 20
    assert all(t.strip() for s in splits for t in s["text"])


def test_hub_configs_compose_and_fail_offline_in_one_line(tiny_cfg):
    import os

    cfg = run_options(tiny_cfg("task=lm", "model=wordnet_lm", "dataset=msmarco_passages", "seed=nq"))
    assert cfg.task.name == "lm" and cfg.dataset.text_field == "text" and cfg.seed.text_field == "answer"
    assert not cfg.dataset.prompt_template and not cfg.dataset.label_field
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        pytest.skip("needs HF_HUB_OFFLINE=1 (set by conftest unless overridden)")
    with pytest.raises(UserError, match="sentence-transformers/msmarco-corpus") as e:
        load_data(cfg)
    assert "\n" not in str(e.value)
