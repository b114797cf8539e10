"""The SFT path on a tiny base LM: masking, greedy and sampled generation, gradients vs reference and
vs θf's own batch loss, end to end."""
import pytest
import torch

from src.config import run_options
from src.pipeline import run
from src.reference import naive_lm_head_grads
from src.stages import autolabel, gradients, load_data, load_models
from src.tasks import get_task
from src.tasks.causal import response_nll, token_mean_loss
from tests.conftest import TINY_BASE_LM, compose_cfg

# A tiny base LM (pretrained for a few steps on a few hundred texts) so the whole path runs in seconds.
TINY_SFT = ["task=sft", *TINY_BASE_LM, "dataset=wordnet_definitions", "seed=wordnet_prompts",
            "finetune=sft", "retrain=sft", "dataset.n_train=40", "dataset.n_test=24", "seed.max_examples=60",
            "finetune.epochs=1", "retrain.epochs=1", "generation.max_new_tokens=8"]


@pytest.fixture(scope="module")
def sft_cfg(tmp_path_factory):
    # One cache per module: θf and autolabels are built once and reused by every test here.
    cache = tmp_path_factory.mktemp("sft")
    return lambda *o: compose_cfg([*TINY_SFT, *o], cache)


@pytest.fixture(scope="module")
def sft_setup(sft_cfg):
    cfg = run_options(sft_cfg())
    data = load_data(cfg)
    task = get_task(cfg.task, data.task.classes)
    return cfg, task, data, load_models(cfg, data, task)


def test_loss_counts_only_response_tokens(sft_setup):
    cfg, task, data, pair = sft_setup
    collate = task.collate(pair.tokenizer)
    a = collate([("oak (noun.plant):", " a tree"), ("cat (noun.animal):", " a small feline")])
    b = collate([("a much longer prompt about oak trees (noun.plant):", " a tree"), ("x:", " a small feline")])
    _, na = response_nll(pair.model, a)
    _, nb = response_nll(pair.model, b)
    assert na.tolist() == nb.tolist()  # prompt changes never change what the loss counts
    resp = len(pair.tokenizer(" a tree", add_special_tokens=False)["input_ids"]) + 1  # + EOS
    assert na[0].item() == resp


def greedy_by_hand(model, tok, prompt: str, n: int) -> str:
    """Greedy decoding one token at a time, from the model's own next-token argmax."""
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    out = []
    for _ in range(n):
        with torch.no_grad():
            nxt = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
        if nxt == tok.eos_token_id:
            break
        out.append(nxt)
    return tok.decode(out, skip_special_tokens=True)


def test_greedy_generation_is_the_argmax_continuation_and_sampling_is_seeded(sft_setup, sft_cfg):
    cfg, task, data, pair = sft_setup
    prompts = data.seed["prompt"][:6]
    model = pair.load(1.0)
    greedy = get_task(run_options(sft_cfg("generation.do_sample=false")).task)
    out = greedy.generate(model, pair.tokenizer, prompts)  # batched, left-padded
    assert out == [greedy_by_hand(model, pair.tokenizer, p, cfg.task.generation.max_new_tokens) for p in prompts]
    sampled = get_task(run_options(sft_cfg("generation.do_sample=true", "generation.temperature=2.0")).task)
    s1, s2 = sampled.generate(model, pair.tokenizer, prompts), sampled.generate(model, pair.tokenizer, prompts)
    assert s1 == s2  # sampling is seeded by rng
    assert s1 != out  # and at temperature 2 it is not greedy decoding
    other = get_task(run_options(sft_cfg("generation.do_sample=true", "generation.temperature=2.0", "rng=1")).task)
    assert other.generate(model, pair.tokenizer, prompts) != s1  # another seed, other samples
    assert pair.tokenizer.padding_side == "right"  # generation's left padding does not leak out


def test_sft_gradients_equal_dense_reference(sft_setup):
    cfg, task, data, pair = sft_setup
    labels = autolabel(cfg, pair, data, task)
    G, t = gradients(cfg, pair, data, labels, task)
    assert G.shape == (2, 60, 16) and t.shape == (16,)
    spec = task.gradient_spec(pair, data.seed, labels, [1.0], cfg.gradient)
    model = pair.load(1.0)  # checkpoint P = θf
    batch = spec.collate(spec.items(data.seed, labels, range(4)))
    dense = naive_lm_head_grads(model, batch["input_ids"], batch["attention_mask"], batch["prompt_lengths"])
    torch.testing.assert_close(G[-1, :4], spec.projector.project_matrix(dense).float(), rtol=1e-4, atol=1e-6)


def test_an_example_twice_as_long_counts_as_theta_f_training_counted_it(sft_setup):
    # θf is trained on the token mean over a batch: Σ_i Σ_t ℓ_it / Σ_i n_i. An example's share of that
    # step is its token *sum* over the batch's token count, so the stored rows, summed and divided by the
    # batch's tokens, must be the projected gradient of the batch loss itself: a row twice as long weighs
    # twice as much, as it did in θf's training (a per-example mean would weigh both the same).
    cfg, task, data, pair = sft_setup
    spec = task.gradient_spec(pair, data.seed, autolabel(cfg, pair, data, task), [1.0], cfg.gradient)
    model = pair.load(1.0)
    items = [("oak (noun.plant):", " a tree with lobed leaves"),
             ("oak (noun.plant):", " a tree with lobed leaves and acorns, a tree with lobed leaves and acorns")]
    batch = spec.collate(items)
    _, n = response_nll(model, batch)
    assert n[1] >= 2 * n[0] - 1  # the second response is (about) twice as long
    rows = spec(model, batch)["g"]
    model.zero_grad(set_to_none=True)
    token_mean_loss(model, batch)[0].backward()
    batch_grad = model.lm_head.weight.grad.double()
    model.zero_grad(set_to_none=True)
    want = spec.projector.project_matrix(batch_grad[None])[0]
    torch.testing.assert_close(rows.double().sum(0) / n.sum(), want, rtol=1e-4, atol=1e-7)
    per_mean = rows.double() / n[:, None]  # what per-example means would have stored: not θf's weighting
    assert not torch.allclose(per_mean.sum(0) / 2, want, rtol=1e-2, atol=1e-7)


def test_sft_end_to_end_reports_perplexity_for_every_selector(sft_cfg, tmp_path):
    res = run(sft_cfg(), tmp_path / "run")
    assert res["task"] == "sft" and res["metric"] == "perplexity"
    assert [r["selector"] for r in res["results"]] == ["select", "topk", "random", "likelihood",
                                                       "likelihood_ratio", "expert"]
    for r in res["results"]:
        assert r["perplexity"] > 1.0 and r["ot_distance"] >= 0 and abs(sum(r["groups"].values()) - 1) < 1e-6
    expert = next(r for r in res["results"] if r["selector"] == "expert")
    assert set(expert["groups"]) <= {"noun.animal", "noun.plant", "noun.food"}  # the true data's files
