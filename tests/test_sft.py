"""The SFT path on a tiny base LM: masking, generation, gradients vs reference, end to end."""
import pytest
import torch

from src.pipeline import run
from src.stages import autolabel, gradients, load_data, load_models
from src.tasks import get_task
from src.tasks.sft import response_nll, sft_collate

# A tiny base LM (pretrained for a few steps on a few hundred texts) so the whole path runs in seconds.
TINY_SFT = ["task=sft", "model=wordnet_lm", "dataset=wordnet_definitions", "seed=wordnet_prompts",
            "finetune=sft", "retrain=sft", "dataset.n_train=40", "dataset.n_test=24", "seed.max_examples=60",
            "finetune.epochs=1", "retrain.epochs=1", "generation.max_new_tokens=8",
            "base_lm.n_embd=16", "base_lm.n_layer=1", "base_lm.n_head=2", "base_lm.vocab_size=300",
            "base_lm.max_steps=5", "base_lm.max_texts=300"]


@pytest.fixture
def sft_cfg(tiny_cfg):
    return lambda *o: tiny_cfg(*TINY_SFT, *o)


@pytest.fixture
def sft_setup(sft_cfg):
    cfg = sft_cfg()
    task = get_task(cfg)
    data = load_data(cfg)
    return cfg, task, data, load_models(cfg, data, task)


def test_loss_counts_only_response_tokens(sft_setup):
    cfg, task, data, pair = sft_setup
    collate = sft_collate(pair.tokenizer, cfg.model.max_length)
    a = collate([("oak (noun.plant):", " a tree"), ("cat (noun.animal):", " a small feline")])
    b = collate([("a much longer prompt about oak trees (noun.plant):", " a tree"), ("x:", " a small feline")])
    _, na = response_nll(pair.model, a)
    _, nb = response_nll(pair.model, b)
    assert na.tolist() == nb.tolist()  # prompt changes never change what the loss counts
    resp = len(pair.tokenizer(" a tree", add_special_tokens=False)["input_ids"]) + 1  # + EOS
    assert na[0].item() == resp


def test_generation_is_batched_deterministic_and_seeded(sft_setup, sft_cfg):
    cfg, task, data, pair = sft_setup
    prompts = data.seed["prompt"][:10]
    model = pair.load(1.0)
    first, second = task.generate(model, pair.tokenizer, prompts), task.generate(model, pair.tokenizer, prompts)
    assert len(first) == 10 and first == second
    sampled = get_task(sft_cfg("generation.do_sample=true"))
    s1, s2 = sampled.generate(model, pair.tokenizer, prompts), sampled.generate(model, pair.tokenizer, prompts)
    assert s1 == s2  # sampling is seeded by rng
    assert pair.tokenizer.padding_side == "right"  # generation's left padding does not leak out


def test_sft_gradients_equal_dense_reference(sft_setup):
    from src.gradients.lm_head import naive_lm_head_grads

    cfg, task, data, pair = sft_setup
    labels = autolabel(cfg, pair, data, task)
    G, t = gradients(cfg, pair, data, labels, task)
    assert G.shape == (2, 60, 16) and t.shape == (16,)
    proj = task.make_projector(pair)
    model = pair.load(1.0)  # checkpoint P = θf
    batch = sft_collate(pair.tokenizer, cfg.model.max_length)([(data.seed["prompt"][i], labels["responses"][i])
                                                               for i in range(4)])
    dense = naive_lm_head_grads(model, batch["input_ids"], batch["attention_mask"], batch["prompt_lengths"],
                                head_name="lm_head")
    torch.testing.assert_close(G[-1, :4], proj.project_matrix(dense).float(), rtol=1e-4, atol=1e-6)


def test_sft_end_to_end_reports_perplexity_for_every_selector(sft_cfg, tmp_path):
    res = run(sft_cfg(), tmp_path / "run")
    assert res["task"] == "sft" and res["metric"] == "perplexity"
    assert [r["selector"] for r in res["results"]] == ["select", "topk", "random", "likelihood",
                                                       "likelihood_ratio", "expert"]
    for r in res["results"]:
        assert r["perplexity"] > 1.0 and r["ot_distance"] >= 0 and abs(sum(r["groups"].values()) - 1) < 1e-6
    expert = next(r for r in res["results"] if r["selector"] == "expert")
    assert set(expert["groups"]) <= {"noun.animal", "noun.plant", "noun.food"}  # the true data's files
