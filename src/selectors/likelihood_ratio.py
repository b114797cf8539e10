"""The k examples whose autolabel gained most likelihood in finetuning: log p_θf − log p_θ0.

Unlike plain likelihood this discounts examples θ0 already found easy, which is what
finetuning on them would not have changed.
"""
from src.selectors.base import Selection, SelectionContext, Selector, top_indices


class LikelihoodRatioSelector(Selector):
    name = "likelihood_ratio"

    def select(self, ctx: SelectionContext, k: int) -> Selection:
        return Selection(top_indices(ctx.logp_f - ctx.logp_0, k))
