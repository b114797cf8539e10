"""Top-k balanced: top-k by gradient alignment with an equal share of the picks per autolabel class.

Each class gets the same quota select_balanced gives it (``class_quotas``: equal shares of k, the
largest classes taking the remainder, what a small class cannot fill spread over the others): its
best-aligned rows by (1/P) Σ_j cos(g_ij, t). This is the paper's guard against top-k collapsing onto one
class; it needs class autolabels, so tasks without classes (SFT, LM) cannot use it.
"""
import torch

from src.errors import UserError
from src.selectors.base import Selection, SelectionContext, Selector, top_indices
from src.selectors.rows import as_rows
from src.selectors.select import class_quotas
from src.selectors.topk import alignment


def balanced_top(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of k rows: the best ``scores`` of each class, as many as select_balanced's quota for it
    (``class_quotas``: equal shares, what a small class cannot fill spread over the others)."""
    picks = []
    for c, n in class_quotas(labels, k).items():
        rows = torch.nonzero(labels == c)[:, 0]
        picks.append(rows[top_indices(scores[rows], n)])
    return torch.cat(picks)


class TopKBalancedSelector(Selector):
    name = "topk_balanced"
    needs_gradients = True
    needs_classes = True  # checked in preflight, before any compute

    def __init__(self, center: bool = False):
        self.center = center  # as in top-k: score against the seed-mean-removed gradients

    def select(self, ctx: SelectionContext, k: int) -> Selection:
        if ctx.labels is None:
            raise UserError("topk_balanced needs class autolabels; this task has none (use topk)")
        rows = as_rows(ctx.grads, device=ctx.device, block_rows=ctx.block_rows)  # same pass as top-k's
        scores = alignment(rows, ctx.target, center=self.center, precision=ctx.precision, progress=ctx.progress)
        return Selection(balanced_top(scores, ctx.labels, k), info={"device": str(rows.device)})
