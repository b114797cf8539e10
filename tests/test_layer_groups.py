"""The layer-group diagnostic (src/bench/layer_groups.py) on hand-built blocks and a tiny Llama's layer names."""
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from src.bench.layer_groups import group_scores, layer_cosines, layer_groups
from src.gradients.layers import choose_layers


def test_layer_cosines_are_each_blocks_own_cosine():
    g = torch.Generator().manual_seed(0)
    sizes = [3, 5, 2]
    rows, target = torch.randn(4, 10, generator=g), torch.randn(10, generator=g)
    got = layer_cosines(rows, target, sizes)
    lo = 0
    for l, n in enumerate(sizes):
        for i in range(4):
            want = torch.nn.functional.cosine_similarity(rows[i, lo:lo + n], target[lo:lo + n], dim=0)
            assert got[i, l].item() == pytest.approx(want.item(), abs=1e-6)
        lo += n
    with pytest.raises(ValueError):
        layer_cosines(rows, target, [3, 5])


def test_groups_cover_every_layer_by_kind_and_by_depth():
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=3,
                               num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    names = choose_layers(AutoModelForCausalLM.from_config(cfg), "all", "lm_head")
    groups = layer_groups(names, "lm_head")
    assert groups["head"] == [names.index("lm_head")]
    kinds = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert kinds <= set(groups)
    assert sorted(i for k in kinds for i in groups[k]) == [i for i, n in enumerate(names) if n != "lm_head"]
    assert all(len(groups[k]) == 3 for k in kinds)  # one per block
    depth = [groups[f"depth {p}/3"] for p in (1, 2, 3)]
    assert sorted(sum(depth, [])) == sorted(sum((groups[k] for k in kinds), []))
    assert all(".layers.0." in names[i] for i in depth[0]) and all(".layers.2." in names[i] for i in depth[2])


def test_every_layer_is_one_vote_whatever_its_spread():
    g = torch.Generator().manual_seed(1)
    cos = torch.randn(50, 4, generator=g)
    scaled = cos * torch.tensor([1.0, 100.0, 0.01, 3.0]) + torch.tensor([0.5, -2.0, 0.0, 1.0])
    a, b = group_scores(cos, {"x": [0, 1]}), group_scores(scaled, {"x": [0, 1]})
    assert torch.allclose(a["all"], b["all"], atol=1e-5) and torch.allclose(a["x"], b["x"], atol=1e-5)
    assert not torch.allclose(a["x"], a["all"])
