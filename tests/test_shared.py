"""Down-weighting shared gradient directions (src/selectors/shared.py) against dense references."""
import pytest
import torch

from src.errors import UserError
from src.selectors.base import SelectionContext
from src.selectors.rows import TensorRows
from src.selectors.select import SelectSelector, greedy_select
from src.selectors.shared import shared_map, top_directions


def rows_with_a_shared_direction(P=2, N=60, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(d, generator=g)
    G = 0.3 * torch.randn(P, N, d, generator=g) + 3.0 * torch.rand(P, N, 1, generator=g) * common
    return G.double(), (common / common.norm()).double()


def test_top_directions_match_the_dense_second_moment_eigenvectors():
    G, common = rows_with_a_shared_direction()
    rows = TensorRows(G, block_rows=7)  # several blocks per checkpoint: the sums run over blocks
    V, ev, mean_sq = top_directions(rows, 3, iters=6)
    flat = G.reshape(-1, G.shape[2])
    dense_ev, dense_V = torch.linalg.eigh(flat.T @ flat / len(flat))
    # Randomised subspace iteration: the dominant pair is exact, the bulk (a flat spectrum) close.
    assert torch.allclose(ev, dense_ev.flip(0)[:3], rtol=1e-4)
    overlap = (V.T @ dense_V.flip(1)[:, :3]).abs().diagonal()
    assert overlap[0] > 1 - 1e-9 and overlap.min() > 0.99
    assert mean_sq == pytest.approx(float(dense_ev.sum()) / G.shape[2])
    assert abs(float(V[:, 0] @ common)) > 0.99  # the planted shared direction is found first


def test_drop_removes_the_top_directions_from_rows_and_target():
    G, common = rows_with_a_shared_direction()
    t = torch.randn(G.shape[2], dtype=G.dtype)
    mapped, t2 = shared_map(TensorRows(G, block_rows=16), t, "drop", rank=2, ridge=1.0)
    V, _, _ = top_directions(TensorRows(G), 2)
    out = torch.cat([b for _, _, b in mapped.blocks()]).reshape(G.shape)
    assert (out.reshape(-1, G.shape[2]) @ V).abs().max() < 1e-8
    assert (t2 @ V).abs().max() < 1e-8
    assert torch.allclose(out, G - (G @ V) @ V.T, atol=1e-10)
    assert torch.allclose(mapped.gather(torch.tensor([3, 0])), out[:, [3, 0]])


def test_full_rank_ridge_is_the_dense_trak_whitening():
    G, _ = rows_with_a_shared_direction(d=6)
    t = torch.randn(6, dtype=G.dtype)
    mapped, t2 = shared_map(TensorRows(G), t, "ridge", rank=6, ridge=0.5)
    flat = G.reshape(-1, 6)
    C = flat.T @ flat / len(flat)
    lam = 0.5 * float(torch.trace(C)) / 6
    ev, U = torch.linalg.eigh(C + lam * torch.eye(6, dtype=G.dtype))
    W = lam ** 0.5 * (U * ev.rsqrt()) @ U.T  # √λ (C + λI)^(-1/2): unit gain where C has nothing
    out = torch.cat([b for _, _, b in mapped.blocks()]).reshape(G.shape)
    assert torch.allclose(out, G @ W, atol=1e-8)
    assert torch.allclose(t2, t @ W, atol=1e-8)


def test_select_with_shared_runs_greedy_on_the_mapped_rows():
    G, _ = rows_with_a_shared_direction(P=1, N=40, d=10)
    t = torch.randn(10, dtype=G.dtype)
    ctx = SelectionContext(n_seed=40, labels=None, logp_f=None, logp_0=None, grads=G, target=t, rng=0,
                           progress=False)
    sel = SelectSelector(running_sum="shared", shared="drop", shared_rank=1)(ctx, 8)
    mapped, t2 = shared_map(TensorRows(G), t, "drop", rank=1, ridge=1.0, seed=0)
    Gm = torch.cat([b for _, _, b in mapped.blocks()])[None]
    ref = greedy_select(Gm, t2, 8, running_sum="shared")
    assert sel.indices.tolist() == torch.as_tensor(ref[0]).tolist()
    plain = SelectSelector(running_sum="shared")(ctx, 8)
    assert plain.indices.tolist() != sel.indices.tolist()  # the shared direction decided the plain picks


@pytest.mark.parametrize("kw", [dict(shared="whiten"), dict(shared="drop", shared_rank=0),
                                dict(shared="ridge", shared_ridge=0.0)])
def test_bad_shared_options_fail_when_the_selector_is_built(kw):
    with pytest.raises(UserError, match="shared"):
        SelectSelector(**kw)
