"""Rank fusion: gradient alignment with θf − θ0 and a two-model token statistic, each a ranking of the rows,
averaged (weighted) by rank. The two see different things (alignment: the direction of the change on the
chosen layers; a token statistic: how much θf raised the text itself), so rows both rank high are the
likeliest training rows. With ``balance: classes`` the top rows are taken per autolabel class at
select_balanced's quotas.
"""
import torch

from src.errors import UserError
from src.selectors.base import Selection, SelectionContext, Selector, top_indices
from src.selectors.rows import as_rows
from src.selectors.topk import alignment
from src.selectors.topk_balanced import balanced_top


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """[N] rank of each score in [0, 1] (1 = highest), ties broken by index as ``top_indices`` does."""
    order = torch.argsort(-scores.double(), stable=True)
    r = torch.empty(len(scores), dtype=torch.float64)
    r[order] = torch.arange(len(scores), 0, -1, dtype=torch.float64) / max(1, len(scores))
    return r


class FusionSelector(Selector):
    needs_gradients = True

    def __init__(self, statistic: str = "lr_mean", weight: float = 0.5, center: bool = False, balance: str = "none",
                 name: str = "fusion"):
        if not 0 <= float(weight) <= 1:
            raise UserError(f"{name}: weight (of the token statistic) must be in [0, 1], got {weight}")
        if balance not in ("none", "classes"):
            raise UserError(f"{name}: balance must be none or classes, got {balance!r}")
        self.statistic, self.weight, self.center, self.balance, self.name = statistic, float(weight), center, balance, name
        self.needs_classes = balance == "classes"

    def select(self, ctx: SelectionContext, k: int) -> Selection:
        if self.statistic not in ctx.stats:
            raise UserError(f"{self.name}: token statistic '{self.statistic}' is not among this task's autolabels "
                            f"({sorted(ctx.stats) or 'none'}); tasks classify_lm and lm compute them")
        rows = as_rows(ctx.grads, device=ctx.device, block_rows=ctx.block_rows)
        align = alignment(rows, ctx.target, center=self.center, precision=ctx.precision, progress=ctx.progress)
        fused = (1 - self.weight) * ranks(align.cpu()) + self.weight * ranks(ctx.stats[self.statistic].cpu())
        if self.balance == "classes":
            if ctx.labels is None:
                raise UserError(f"{self.name}: balance=classes needs class autolabels; this task has none")
            return Selection(balanced_top(fused, ctx.labels, k))
        return Selection(top_indices(fused, k))
