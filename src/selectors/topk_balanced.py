"""Top-k balanced: top-k by gradient alignment with an equal share of the picks per autolabel class.

Each class c gets ⌊k/C⌋ picks (the first k mod C classes, by size of their pool, one more): its
best-aligned rows by (1/P) Σ_j cos(g_ij, t). A class with too few rows gives its unused share
to the best-aligned rows left over. This is the paper's guard against top-k collapsing onto one
class; it needs class autolabels, so tasks without classes (SFT, LM) cannot use it.
"""
import torch

from src.errors import UserError
from src.selectors.base import Selection, SelectionContext, Selector, top_indices
from src.selectors.rows import as_rows
from src.selectors.topk import alignment


def balanced_top(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of k rows: the best ``scores`` per class in equal shares, leftovers by score."""
    classes = torch.unique(labels)
    sizes = torch.stack([(labels == c).sum() for c in classes])
    order = torch.argsort(-sizes, stable=True)                     # larger pools take the remainder
    share = torch.full((len(classes),), k // len(classes))
    share[order[: k % len(classes)]] += 1
    picks = []
    for c, n in zip(classes, share.tolist()):
        rows = torch.nonzero(labels == c)[:, 0]
        picks.append(rows[top_indices(scores[rows], min(n, len(rows)))])
    chosen = torch.cat(picks)
    if len(chosen) < k:                                            # some class ran out: fill by score
        rest = torch.ones(len(scores), dtype=torch.bool)
        rest[chosen] = False
        left = torch.nonzero(rest)[:, 0]
        chosen = torch.cat([chosen, left[top_indices(scores[left], k - len(chosen))]])
    return chosen


class TopKBalancedSelector(Selector):
    name = "topk_balanced"
    needs_gradients = True

    def __init__(self, center: bool = False):
        self.center = center  # as in top-k: score against the seed-mean-removed gradients

    def select(self, ctx: SelectionContext, k: int) -> Selection:
        if ctx.labels is None:
            raise UserError("topk_balanced needs class autolabels; this task has none (use topk)")
        rows = as_rows(ctx.grads, device=ctx.device, block_rows=ctx.block_rows)  # same pass as top-k's
        scores = alignment(rows, ctx.target, center=self.center, precision=ctx.precision, progress=ctx.progress)
        return Selection(balanced_top(scores, ctx.labels, k), info={"device": str(rows.device)})
