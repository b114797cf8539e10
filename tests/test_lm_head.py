"""LM-head (SFT, LM, label-word) per-example gradients: the factored projected pass == the factored map
applied to dense autograd gradients; JL accuracy within theory; response-only masking; bounded memory."""
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from src.errors import UserError
from src.gradients.last_layer import (Positions, errors, head_inputs, layer_delta, projected_grads,
                                      projected_target, response_mask, response_positions)
from src.gradients.projectors import FactoredProjector, GaussianProjector
from src.reference import naive_lm_head_grads
from tests.conftest import LargestTensor

VOCAB, HID, PAD = 64, 16, 0


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These tests run many tiny ops; on a shared, oversubscribed 2-core box OpenMP's spin-waiting
    # made each op ~100x slower with 2 threads than with 1 (6.5 s vs 0.04 s for 100 small
    # projections). Results don't depend on the thread count beyond float rounding.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_lm(seed=0):
    torch.manual_seed(seed)
    cfg = GPT2Config(n_embd=HID, n_layer=1, n_head=2, vocab_size=VOCAB, n_positions=32,
                     bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).double().eval()


def make_batch(n=5, seed=0, extra_pad=0):
    """Right-padded random examples, lengths 8..14, prompt = first half (at least 1 token)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(8, 15, (n,), generator=g)
    prompt = (lengths // 2).clamp(min=1)
    T = int(lengths.max()) + extra_pad
    ids = torch.full((n, T), PAD, dtype=torch.long)
    am = torch.zeros(n, T, dtype=torch.long)
    for i, L in enumerate(lengths.tolist()):
        ids[i, :L] = torch.randint(1, VOCAB, (L,), generator=g)
        am[i, :L] = 1
    return {"input_ids": ids, "attention_mask": am}, prompt


def fast_grads(model, batch, prompt, proj, **kw):
    pos = response_positions(model, {**batch, "prompt_lengths": prompt}, "lm_head")
    return projected_grads(pos, model.lm_head.weight, None, proj, **kw)


def logits_of(model, batch):
    """Logits recomputed from the captured head input, as the fast path computes them."""
    with torch.no_grad():
        h = head_inputs(model, batch, "lm_head")
    return h, torch.nn.functional.linear(h, model.lm_head.weight)


def unit(G):
    return G / G.flatten(1).norm(dim=1)[:, None, None]


# -- masking ------------------------------------------------------------------------------
def test_response_mask_causal_shift_and_either_padding_side():
    # 6 real tokens, 2 of them prompt: response tokens are indices 2..5, predicted at positions 1..4.
    ids = torch.arange(1, 7)[None]
    right = torch.cat([ids, torch.zeros(1, 2, dtype=torch.long)], 1)
    am_r = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0]])
    m = response_mask(right, [2], am_r)
    assert m[0].nonzero().flatten().tolist() == [1, 2, 3, 4]
    left, am_l = right.roll(2, 1), am_r.roll(2, 1)
    assert response_mask(left, [2], am_l)[0].nonzero().flatten().tolist() == [3, 4, 5, 6]
    assert m.sum(1).tolist() == [4]
    # No padding, no prompt: every position but the last predicts a response token.
    assert response_mask(ids, [0]).sum().item() == 5
    # All prompt: nothing counts.
    assert response_mask(ids, [6]).sum().item() == 0


def test_changing_prompt_tokens_leaves_response_positions_unchanged():
    model = tiny_lm()
    batch, prompt = make_batch()
    pos = response_positions(model, {**batch, "prompt_lengths": prompt}, "lm_head")
    counts = torch.bincount(pos.example, minlength=pos.n)
    assert counts.tolist() == (batch["attention_mask"].sum(1) - prompt).tolist()
    other = batch["input_ids"].clone()
    for i, p in enumerate(prompt.tolist()):
        other[i, :p] = torch.randint(1, VOCAB, (p,), generator=torch.Generator().manual_seed(9 + i))
    assert not torch.equal(other, batch["input_ids"])
    pos2 = response_positions(model, {**batch, "input_ids": other, "prompt_lengths": prompt}, "lm_head")
    assert torch.equal(pos.example, pos2.example) and torch.equal(pos.target, pos2.target)


def test_padding_is_ignored():
    model = tiny_lm()
    proj = FactoredProjector(VOCAB, HID, d=64, seed=1)
    batch, prompt = make_batch()
    padded, _ = make_batch(extra_pad=5)
    assert padded["input_ids"].shape[1] == batch["input_ids"].shape[1] + 5
    a = fast_grads(model, batch, prompt, proj)
    b = fast_grads(model, padded, prompt, proj)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_example_without_response_has_zero_gradient_not_nan():
    model = tiny_lm()
    batch, prompt = make_batch(n=3)
    prompt = prompt.clone()
    prompt[1] = batch["attention_mask"][1].sum()  # all prompt
    proj = FactoredProjector(VOCAB, HID, d=64, seed=0)
    g = fast_grads(model, batch, prompt, proj)
    dense = naive_lm_head_grads(model, batch["input_ids"], batch["attention_mask"], prompt)
    assert torch.isfinite(g).all() and g[1].abs().max() == 0 and dense[1].abs().max() == 0
    assert g[0].abs().max() > 0


# -- exactness: structured map applied both ways --------------------------------------------
def test_closed_form_error_matches_autograd_and_model_logits():
    model = tiny_lm()
    batch, prompt = make_batch()
    h, logits = logits_of(model, batch)
    torch.testing.assert_close(logits, model(**batch).logits, rtol=1e-10, atol=1e-10)
    pos = response_positions(model, {**batch, "prompt_lengths": prompt}, "lm_head")
    err = errors(pos.h, pos.target, model.lm_head.weight.detach(), None)
    closed = torch.zeros(5, VOCAB, HID, dtype=torch.float64).index_add_(0, pos.example, err[:, :, None] * pos.h[:, None])
    naive = naive_lm_head_grads(model, batch["input_ids"], batch["attention_mask"], prompt)
    assert naive.shape == (5, VOCAB, HID)
    torch.testing.assert_close(closed, naive, rtol=1e-9, atol=1e-12)


def test_projected_pass_equals_factored_projection_of_dense_gradients():
    model = tiny_lm()
    batch, prompt = make_batch()
    proj = FactoredProjector(VOCAB, HID, d_V=8, d_H=4, seed=3, block_size=24)  # 3 blocks of A
    naive = naive_lm_head_grads(model, batch["input_ids"], batch["attention_mask"], prompt)
    ref = proj.project_matrix(naive)
    scale = ref.abs().max()
    fast = fast_grads(model, batch, prompt, proj)
    assert fast.shape == (5, 32) and fast.dtype == torch.float64
    torch.testing.assert_close(fast, ref, rtol=1e-6, atol=1e-6 * scale)
    # Tiny chunks (one position at a time) give the same answer.
    torch.testing.assert_close(fast_grads(model, batch, prompt, proj, max_chunk_elems=1), ref, rtol=1e-6,
                               atol=1e-6 * scale)
    # A dense JL map on the flattened gradient, through the same pass.
    dense = GaussianProjector(VOCAB * HID, 32, seed=3, block_size=300)
    torch.testing.assert_close(fast_grads(model, batch, prompt, dense), naive.flatten(1) @ dense.matrix().double().T,
                               rtol=1e-6, atol=1e-6 * scale)


def test_factored_map_is_kronecker_matrix_and_outer_form_agrees():
    proj = FactoredProjector(30, 7, d_V=5, d_H=3, seed=2, block_size=8)
    G = torch.randn(4, 30, 7, dtype=torch.float64)
    dense = G.reshape(4, -1) @ proj.matrix().double().T
    torch.testing.assert_close(proj.project_matrix(G), dense)
    err, h = torch.randn(4, 6, 30, dtype=torch.float64), torch.randn(4, 6, 7, dtype=torch.float64)
    m = torch.rand(4, 6, dtype=torch.float64)
    torch.testing.assert_close(proj.project_outer(err, h, m), proj.project_matrix(torch.einsum("nt,ntv,nth->nvh", m, err, h)))
    assert proj.describe() == {"kind": "factored", "V": 30, "H": 7, "d": 15, "d_V": 5, "d_H": 3, "seed": 2, "block_size": 8}


# -- JL accuracy ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def unit_grads():
    model = tiny_lm()
    batch, prompt = make_batch(n=6, seed=1)
    return unit(naive_lm_head_grads(model, batch["input_ids"], batch["attention_mask"], prompt))


def test_inner_products_match_frobenius_within_jl_tolerance(unit_grads):
    # Theory: for the Kronecker Gaussian map, Var<P(Gi),P(Gj)> has the closed form in
    # FactoredProjector.inner_product_variance (Gaussian 4th moments, conditioning on B), bounded for
    # unit Gi, Gj by 2/d_V·(1+2/d_H) + 2/d_H (worst case rank 1). So the tolerance per pair is
    # k·σ_ij. A single seed: k = 5 (Chebyshev alone gives ≤ 4% per pair; the error is a low-order
    # Gaussian chaos, whose tails are far lighter: over 300 seeds the largest |err|/σ seen among all
    # 21 pairs was 4.1, median per seed 2.1, seed 0: 1.4). Across S seeds the errors are independent,
    # so unbiasedness and the variance formula itself are checked with CLT-sized tolerances.
    G = unit_grads
    exact = G.flatten(1) @ G.flatten(1).T
    ref = FactoredProjector(VOCAB, HID, d_V=32, d_H=32, seed=0)
    sigma = ref.inner_product_variance(G).sqrt()
    assert (sigma <= ref.worst_case_std() + 1e-12).all()
    p = ref.project_matrix(G)
    assert ((p @ p.T - exact).abs() <= 5 * sigma).all()

    S = 100
    errs = []
    for s in range(S):
        q = FactoredProjector(VOCAB, HID, d_V=32, d_H=32, seed=s).project_matrix(G)
        errs.append(q @ q.T - exact)
    E = torch.stack(errs)
    assert (E.mean(0).abs() <= 5 * sigma / math.sqrt(S)).all()       # unbiased
    z2 = (E ** 2 / sigma ** 2).mean().item()
    assert 0.6 <= z2 <= 1.5, z2                                        # variance as predicted


def test_error_shrinks_with_factor_dims(unit_grads):
    G = unit_grads
    exact = G.flatten(1) @ G.flatten(1).T

    def rms(dv, dh):
        e = [(lambda q: q @ q.T - exact)(FactoredProjector(VOCAB, HID, d_V=dv, d_H=dh, seed=s).project_matrix(G))
             for s in range(20)]
        return torch.stack(e).pow(2).mean().sqrt().item()

    assert rms(64, 64) < rms(4, 4) / 4  # theory: σ ∝ √(1/d_V + 1/d_H), 4x smaller expected


def test_dense_and_factored_maps_both_preserve_inner_products(unit_grads):
    G = unit_grads
    m, D = G.shape[0], VOCAB * HID
    exact = G.flatten(1) @ G.flatten(1).T
    dense = GaussianProjector(D, 256, seed=5, block_size=512).project(G.reshape(m, D))
    eps = math.sqrt(8 * math.log(2 * m * m / 1e-6) / 256)  # TRAK-style union bound, as in test_projectors
    assert (dense @ dense.T - exact).abs().max() <= eps
    fac = FactoredProjector(VOCAB, HID, d=256, seed=5)
    assert (fac.d_V, fac.d_H) == (16, 16)
    f = fac.project_matrix(G)
    assert ((f @ f.T - exact).abs() <= 5 * fac.inner_product_variance(G).sqrt()).all()


# -- seeding, construction --------------------------------------------------------------------
def test_same_seed_same_projection_other_seed_other():
    model = tiny_lm()
    batch, prompt = make_batch()
    a = fast_grads(model, batch, prompt, FactoredProjector(VOCAB, HID, d=64, seed=11))
    b = fast_grads(model, batch, prompt, FactoredProjector(VOCAB, HID, d=64, seed=11))
    c = fast_grads(model, batch, prompt, FactoredProjector(VOCAB, HID, d=64, seed=12))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    p1, p2 = FactoredProjector(100, 8, d=16, seed=4, block_size=30), FactoredProjector(100, 8, d=16, seed=4, block_size=30)
    assert torch.equal(p1.matrix(), p2.matrix())
    # A and B come from independent streams (CPU generators keep only 32 bits of a seed).
    A, B = p1.matrix_A(), p1.matrix_B()
    assert not torch.equal(A.flatten()[:8], B.flatten()[:8])
    # Batch independence.
    G = torch.randn(5, 100, 8)
    torch.testing.assert_close(p1.project_matrix(G), torch.cat([p1.project_matrix(G[i:i + 1]) for i in range(5)]),
                               rtol=1e-5, atol=1e-5)


def test_factor_choice_and_bad_d():
    assert FactoredProjector.choose_factors(1024, 50257, 1024) == (32, 32)
    assert FactoredProjector.choose_factors(2048, 50257, 1024) == (64, 32)   # tie broken toward V
    assert FactoredProjector.choose_factors(4096, 50257, 16) == (256, 16)    # d_H capped by H
    assert FactoredProjector(VOCAB, HID, d=256).describe()["d_V"] == 16
    for bad in (0, -4):
        with pytest.raises(UserError, match="positive"):
            FactoredProjector(VOCAB, HID, d=bad)
    with pytest.raises(UserError, match="cannot factor"):
        FactoredProjector(VOCAB, HID, d=VOCAB * HID * 2)
    with pytest.raises(UserError, match="cannot factor"):
        FactoredProjector(VOCAB, HID, d=67)                                  # prime > V and > H
    with pytest.raises(UserError, match="does not equal"):
        FactoredProjector(VOCAB, HID, d=10, d_V=2, d_H=4)
    assert FactoredProjector(VOCAB, HID, d=12, d_H=3).d_V == 4


# -- target -------------------------------------------------------------------------------------
def test_target_is_minus_projected_head_delta():
    m0, mf = tiny_lm(0), tiny_lm(1)
    s0, sf = m0.state_dict(), mf.state_dict()
    proj = FactoredProjector(VOCAB, HID, d=64, seed=0)
    delta, bias = layer_delta(s0, sf, "lm_head")
    assert bias is None
    torch.testing.assert_close(delta, (mf.lm_head.weight - m0.lm_head.weight).float().detach())
    torch.testing.assert_close(projected_target(s0, sf, "lm_head", proj), -(proj.matrix() @ delta.reshape(-1)),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match="not in"):
        layer_delta(s0, sf, "head")


# -- memory / complexity -----------------------------------------------------------------------
def test_project_outer_at_gpt2_vocab_never_builds_v_by_h():
    V, H, T, n = 50257, 64, 8, 2
    g = torch.Generator().manual_seed(0)
    err, h = torch.randn(n, T, V, generator=g), torch.randn(n, T, H, generator=g)
    mask = torch.ones(n, T)
    proj = FactoredProjector(V, H, d=256, seed=0)
    with LargestTensor() as seen:
        out = proj.project_outer(err, h, mask)
    assert out.shape == (n, 256) and torch.isfinite(out).all()
    assert seen.largest < V * H, seen.largest  # inputs are n·T·V; nothing per-example V×H
    # The whole LM pass (logits from W at response positions only) is bounded the same way.
    W = torch.randn(V, H, generator=g) / H ** 0.5
    ids = torch.randint(0, V, (n, T), generator=g)
    i, t = response_mask(ids, [3, 3]).nonzero(as_tuple=True)
    pos = Positions(h[i, t], ids[i, t + 1], i, n)
    with LargestTensor() as seen2:
        g2 = projected_grads(pos, W, None, proj)
    assert g2.shape == (n, 256) and seen2.largest < V * H, seen2.largest


def test_project_rows_equals_project_outer():
    proj = FactoredProjector(40, 6, d_V=4, d_H=3, seed=1, block_size=16)
    g = torch.Generator().manual_seed(3)
    n, T = 4, 5
    err, h = torch.randn(n, T, 40, generator=g, dtype=torch.float64), torch.randn(n, T, 6, generator=g, dtype=torch.float64)
    w = torch.rand(n, T, generator=g, dtype=torch.float64) * (torch.rand(n, T, generator=g) > 0.3)
    w[2] = 0  # an example with no rows at all
    i, t = w.nonzero(as_tuple=True)
    perm = torch.randperm(len(i), generator=g)  # rows in any order
    rows = proj.project_rows(err[i, t][perm], h[i, t][perm], i[perm], n, weights=w[i, t][perm])
    torch.testing.assert_close(rows, proj.project_outer(err, h, w))
    assert rows[2].abs().max() == 0
