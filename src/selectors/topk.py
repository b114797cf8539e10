"""Top-k gradient alignment: the k examples whose own gradient best aligns with the target.

Scores each example alone, (1/P) Σ_j cos(g_ij, t), with no running sum, so near-duplicates
of the best direction all get picked: the failure SELECT's greedy sum is designed to avoid.

``center`` (as in SELECT, see src/selectors/select.py): score cos(g_ij − ḡ_j, t_j) with ḡ_j the
seed mean at checkpoint j and t_j the target with its component along ḡ_j removed.
"""
import torch
import torch.nn.functional as F

from src.selectors.base import Selection, SelectionContext, Selector, top_indices
from src.selectors.select import center_naive, centering


def alignment(grads: torch.Tensor, target: torch.Tensor, chunk: int = 16384, *, center: bool = False) -> torch.Tensor:
    """[P, N, d], [d] -> [N]: mean over checkpoints of cos(g_ij, t), widened block by block."""
    acc = torch.float64 if grads.dtype == torch.float64 else torch.float32
    if not center:
        t = target.to(acc)[None, None]
        return torch.cat([F.cosine_similarity(grads[:, lo:lo + chunk].to(acc), t, dim=-1).mean(0)
                          for lo in range(0, grads.shape[1], chunk)])
    G = grads if grads.dim() == 3 else grads[None]
    gbar, t = centering(G, target.to(acc), acc, chunk)                    # t: unit t̂_j ⟂ ḡ_j
    gg, gt = (gbar * gbar).sum(-1), (gbar * t).sum(-1)                      # [P]
    out = []
    for lo in range(0, G.shape[1], chunk):
        blk = G[:, lo:lo + chunk].to(acc)
        ab = blk @ torch.stack([t, gbar], -1)                              # [P, n, 2]: g·t̂_j, g·ḡ_j
        sq = ((blk * blk).sum(-1) - 2 * ab[..., 1] + gg[:, None]).clamp_min(0)  # ‖g − ḡ‖²
        out.append(((ab[..., 0] - gt[:, None]) / sq.sqrt().clamp_min(1e-8)).mean(0))
    return torch.cat(out)


def alignment_naive(grads: torch.Tensor, target: torch.Tensor, *, center: bool = False) -> torch.Tensor:
    """Reference: float64, centred copy materialised, cosine taken directly."""
    G = grads.double() if grads.dim() == 3 else grads.double()[None]
    t = target.double()[None].expand(G.shape[0], -1)
    if center:
        G, t = center_naive(G, t)
    return F.cosine_similarity(G, t[:, None], dim=-1).mean(0)


class TopKSelector(Selector):
    name = "topk"
    needs_gradients = True

    def __init__(self, center: bool = False):
        self.center = center

    def select(self, ctx: SelectionContext, k: int) -> Selection:
        return Selection(top_indices(alignment(ctx.grads, ctx.target, center=self.center), k))
