"""Whole-model per-layer gradients (LoGra-style hooks, one backward per batch) against per-example autograd
through the same maps, on tiny random GPT-2 (Conv1D) and Llama (nn.Linear) models."""
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from src.config import run_options
from src.errors import UserError
from src.gradients.layers import (LayersSpec, _output_grads, _weight_layout, choose_layers, combine,
                                  layer_projectors, layer_second_moments, per_layer_grads, projected_deltas)
from src.reference import naive_layer_grads
from src.tasks.causal import per_example_nll

ARCHS = {"gpt2": dict(n_embd=16, n_layer=2, n_head=2, n_positions=32, tie_word_embeddings=False),  # untied, as θ0 is
         "llama": dict(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, max_position_embeddings=32)}


def tiny(arch, seed=0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(arch, vocab_size=40, **ARCHS[arch])).double().eval()


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 40, (3, 9), generator=g)
    att = torch.ones_like(ids)
    att[1, 6:], att[2, 4:] = 0, 0  # right padding
    return {"input_ids": ids * att, "attention_mask": att, "prompt_lengths": torch.tensor([2, 1, 3])}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_hooked_layer_gradients_equal_per_example_autograd(arch):
    model = tiny(arch)
    names = choose_layers(model, "all", "lm_head")
    assert "lm_head" in names and len(names) >= 9
    projectors = layer_projectors(model, names, 12, seed=3)
    b = batch()
    got = per_layer_grads(model, b, per_example_nll, names, projectors)
    want = naive_layer_grads(model, b, per_example_nll, names, projectors)
    for name in names:
        torch.testing.assert_close(got[name].double(), want[name].double(), rtol=1e-6, atol=1e-7, msg=name)
        assert got[name].abs().sum() > 0, name


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_adafactor_second_moments_and_preconditioned_rows_equal_the_dense_forms(arch):
    model, b = tiny(arch), batch()
    names = choose_layers(model, "all", "lm_head")
    sums = layer_second_moments(model, b, per_example_nll, names)
    assert float(sums["m"]) == float(b["attention_mask"].sum())
    mods = dict(model.named_modules())
    inputs, deltas = _output_grads(model, b, per_example_nll, names)
    m = b["attention_mask"].bool()
    factors = {}
    for name in names:  # dense: every real position's V×H gradient e_t h_tᵀ, squared, row and column sums
        err, h = _weight_layout(mods[name], deltas[name], inputs[name])
        sq = torch.einsum("kv,kh->kvh", err[m], h[m]) ** 2
        assert sq.shape[1:] == mods[name].weight.shape
        torch.testing.assert_close(sums[f"r:{name}"], sq.sum((0, 2)), msg=name)
        torch.testing.assert_close(sums[f"c:{name}"], sq.sum((0, 1)), msg=name)
        factors[name] = (sums[f"r:{name}"] / sums["m"], sums[f"c:{name}"] / sums["m"])
    projectors = layer_projectors(model, names, 12, seed=3)
    got = per_layer_grads(model, b, per_example_nll, names, projectors, factors=factors)
    want = naive_layer_grads(model, b, per_example_nll, names, projectors, factors=factors)
    raw = per_layer_grads(model, b, per_example_nll, names, projectors)
    for name in names:  # G/√(r cᵀ) elementwise, then the same map
        torch.testing.assert_close(got[name].double(), want[name].double(), rtol=1e-6, atol=1e-7, msg=name)
        assert not torch.allclose(got[name], raw[name]), name


def test_layer_choices_and_errors():
    model = tiny("llama")
    allnames = choose_layers(model, "all", "lm_head")
    assert choose_layers(model, "head", "lm_head") == ["lm_head"]
    last = choose_layers(model, "last:1", "lm_head")
    assert last[-1] == "lm_head" and all(".layers.1." in n for n in last[:-1]) and len(last) == 8
    assert choose_layers(model, r"mlp\.down_proj", "lm_head") == [n for n in allnames if n.endswith("mlp.down_proj")]
    with pytest.raises(UserError, match="names no linear layer"):
        choose_layers(model, "nothing_like_this", "lm_head")
    with pytest.raises(UserError, match="last:N needs an integer"):
        choose_layers(model, "last:x", "lm_head")
    # one map per layer, the same for the same (seed, name) whatever else is chosen
    a = layer_projectors(model, allnames, 12, seed=3)
    b = layer_projectors(model, allnames[-2:], 12, seed=3)
    assert torch.equal(a["lm_head"].matrix_B(), b["lm_head"].matrix_B())


def test_target_blocks_and_rows_combine_per_layer():
    m0, mf = tiny("gpt2", 0), tiny("gpt2", 1)
    names = choose_layers(m0, "all", "lm_head")
    projectors = layer_projectors(m0, names, 12, seed=0)
    s0, sf = m0.state_dict(), mf.state_dict()
    deltas = projected_deltas(s0, sf, names, projectors)
    spec = LayersSpec(items=None, collate=None, loss_fn=per_example_nll, names=names, projectors=projectors,
                      state0=s0, statef=sf, unit=True, weights="equal", key={})
    blocks = spec.target.split([deltas[n].numel() for n in names])
    for blk, name in zip(blocks, names):  # equal: every layer's target block has unit norm, same direction
        torch.testing.assert_close(blk.norm(), torch.tensor(1.0))
        torch.testing.assert_close(blk, (deltas[name] / deltas[name].norm()).float())
    rows = spec(m0, batch())["g"]
    assert rows.shape == (3, spec.d)
    for blk in rows.split([deltas[n].numel() for n in names], dim=1):
        torch.testing.assert_close(blk.norm(dim=1), torch.ones(3))
    raw = combine(deltas, names, unit=False)
    assert torch.equal(LayersSpec(items=None, collate=None, loss_fn=None, names=names, projectors=projectors,
                                  state0=s0, statef=sf, unit=False, weights="delta", key={}).target, raw.float())


@pytest.mark.parametrize("task", ["classify_lm", "lm"])
def test_layer_gradients_through_the_store_match_the_hooks_on_each_row(tmp_path, task):
    from src.stages import autolabel, gradients, load_models, load_task_data
    from tests.conftest import TINY_BASE_LM, compose_cfg

    cfg = run_options(compose_cfg([f"task={task}", *TINY_BASE_LM, "dataset.n_train=16", "dataset.n_test=8",
                                   "dataset.n_val=4", "seed.max_examples=12", "finetune.epochs=1", "P=1",
                                   "gradient.layers=last:1", "gradient.layer_d=16", "gradient.shard_size=8",
                                   "gradient.batch_size=5"], tmp_path))
    data, task_ = load_task_data(cfg)
    pair = load_models(cfg, data, task_)
    labels = autolabel(cfg, pair, data, task_)
    G, t = gradients(cfg, pair, data, labels, task_)
    spec = task_.gradient_spec(pair, data.seed, labels, [1.0], cfg.gradient)
    assert spec.names[-1] == "lm_head" and len(spec.names) == 5  # the last block's 4 Conv1D layers + the head
    assert G.shape == (1, 12, 16 * 5) and t.shape == (16 * 5,)
    one = spec(pair.load(1.0), spec.collate(spec.items(data.seed, labels, range(3, 4))))["g"][0]
    torch.testing.assert_close(G[0, 3], one, rtol=1e-4, atol=1e-5)  # batched, sharded = alone


def test_preconditioned_layer_gradients_run_through_the_store_under_their_own_key(tmp_path):
    import json

    from src.stages import autolabel, gradients, load_models, load_task_data
    from tests.conftest import TINY_BASE_LM, compose_cfg

    base = ["task=lm", *TINY_BASE_LM, "dataset.n_train=16", "dataset.n_test=8", "dataset.n_val=4",
            "seed.max_examples=12", "finetune.epochs=1", "P=1", "gradient.layers=last:1", "gradient.layer_d=16",
            "gradient.shard_size=8", "gradient.batch_size=5", "gradient.precondition_rows=6"]
    out = {}
    for pre in ("none", "adafactor"):
        cfg = run_options(compose_cfg([*base, f"gradient.precondition={pre}"], tmp_path))
        data, task_ = load_task_data(cfg)
        pair = load_models(cfg, data, task_)
        labels = autolabel(cfg, pair, data, task_)
        G, t = gradients(cfg, pair, data, labels, task_)
        spec = task_.gradient_spec(pair, data.seed, labels, [1.0], cfg.gradient)
        assert (spec.factors is None) == (pre == "none")
        one = spec(pair.load(1.0), spec.collate(spec.items(data.seed, labels, range(3, 4))))["g"][0]
        torch.testing.assert_close(G[0, 3], one, rtol=1e-4, atol=1e-5)
        out[pre] = G, t
    torch.testing.assert_close(out["none"][1], out["adafactor"][1])  # the target is −P(θf − θ0) either way
    assert not torch.allclose(out["none"][0], out["adafactor"][0])
    pres = sorted(json.loads(p.read_text())["config"]["spec"]["precondition"] for p in tmp_path.rglob("grads/*/meta.json"))
    assert pres == ["adafactor", "none"]  # two stores, one per preconditioner


def test_a_target_that_is_zero_on_every_chosen_layer_is_an_error():
    m0 = tiny("gpt2", 0)
    names = choose_layers(m0, "all", "lm_head")
    projectors = layer_projectors(m0, names, 12, seed=0)
    s0 = m0.state_dict()
    with pytest.raises(UserError, match="identical to θ0 on every layer"):
        LayersSpec(items=None, collate=None, loss_fn=per_example_nll, names=names, projectors=projectors,
                   state0=s0, statef=s0, unit=True, weights="equal", key={})
    sf = {k: v.clone() for k, v in s0.items()}  # one changed layer is enough
    sf[f"{names[0]}.weight"] += 0.1
    LayersSpec(items=None, collate=None, loss_fn=per_example_nll, names=names, projectors=projectors,
               state0=s0, statef=sf, unit=True, weights="equal", key={})
