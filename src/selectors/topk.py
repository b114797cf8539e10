"""Top-k gradient alignment: the k examples whose own gradient best aligns with the target.

Scores each example alone, (1/P) Σ_j cos(g_ij, t), with no running sum, so near-duplicates
of the best direction all get picked: the failure SELECT's greedy sum is designed to avoid.
"""
import torch
import torch.nn.functional as F

from src.selectors.base import Selection, SelectionContext, Selector, top_indices


def alignment(grads: torch.Tensor, target: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    """[P, N, d], [d] -> [N]: mean over checkpoints of cos(g_ij, t), widened block by block."""
    acc = torch.float64 if grads.dtype == torch.float64 else torch.float32
    t = target.to(acc)[None, None]
    return torch.cat([F.cosine_similarity(grads[:, lo:lo + chunk].to(acc), t, dim=-1).mean(0)
                      for lo in range(0, grads.shape[1], chunk)])


class TopKSelector(Selector):
    name = "topk"
    needs_gradients = True

    def select(self, ctx: SelectionContext, k: int) -> Selection:
        return Selection(top_indices(alignment(ctx.grads, ctx.target), k))
