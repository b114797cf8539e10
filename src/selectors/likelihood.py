"""The k examples θf is most confident about (highest log p_θf(autolabel | x)).

``balance: classes`` takes the most confident rows of each autolabel class, at the per-class quotas
select_balanced gives (``class_quotas``). Within a class θf's confidence in its own label ranks planted rows
about as well as the gradients do on label words (the recovery bench's ``likelihood_balanced``), so it is the
baseline a class-balanced gradient selector has to beat, not plain likelihood, which a dominant class floods.
"""
from src.errors import UserError
from src.selectors.base import Selection, SelectionContext, Selector, top_indices
from src.selectors.topk_balanced import balanced_top  # the quota logic select_balanced uses


class LikelihoodSelector(Selector):
    name = "likelihood"

    def __init__(self, balance: str = "none", name: str = "likelihood"):
        if balance not in ("none", "classes"):
            raise UserError(f"likelihood: balance must be none or classes, got {balance!r}")
        self.name = name
        self.balance = balance
        self.needs_classes = balance == "classes"

    def select(self, ctx: SelectionContext, k: int) -> Selection:
        if self.balance == "none":
            return Selection(top_indices(ctx.logp_f, k))
        if ctx.labels is None:
            raise UserError("likelihood_balanced needs class autolabels; this task has none (use likelihood)")
        return Selection(balanced_top(ctx.logp_f, ctx.labels, k))
