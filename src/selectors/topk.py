"""Top-k gradient alignment: the k examples whose own gradient best aligns with the target.

Scores each example alone, (1/P) Σ_j cos(g_ij, t), with no running sum, so near-duplicates
of the best direction all get picked: the failure SELECT's greedy sum is designed to avoid.

``center`` (as in SELECT, see src/selectors/select.py): score cos(g_ij − ḡ_j, t_j) with ḡ_j the
seed mean at checkpoint j and t_j the target with its component along ḡ_j removed.

``alignment`` is one pass over the matrix when the store carries the rows' squared norms (one
more to compute them otherwise, one more for ḡ when centring), block by block on the selection
device (src/selectors/greedy.py); ``src.reference.alignment_naive`` is the float64 reference.
"""
import torch

from src.selectors.base import Selection, SelectionContext, Selector, top_indices
from src.selectors.greedy import top_scores
from src.selectors.rows import as_rows


def alignment(grads, target: torch.Tensor, chunk: int = 16384, *, center: bool = False, device=None,
              precision: str = "stored", progress: bool = False) -> torch.Tensor:
    """[P, N, d] tensor or ``Rows`` source, [d] -> [N] (CPU): mean over checkpoints of cos(g_ij, t)."""
    return top_scores(as_rows(grads, device=device, block_rows=chunk), target, center=center, precision=precision,
                      progress=progress)


class TopKSelector(Selector):
    name = "topk"
    needs_gradients = True

    def __init__(self, center: bool = False, name: str = "topk"):
        self.center, self.name = center, name  # a variant's config (e.g. topk_layers) names its own result row

    def select(self, ctx: SelectionContext, k: int) -> Selection:
        rows = as_rows(ctx.grads, device=ctx.device, block_rows=ctx.block_rows)
        scores = alignment(rows, ctx.target, center=self.center, precision=ctx.precision, progress=ctx.progress)
        return Selection(top_indices(scores, k), info={"device": str(rows.device)})
