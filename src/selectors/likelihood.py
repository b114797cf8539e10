"""The k examples θf is most confident about (highest log p_θf(autolabel | x))."""
from src.selectors.base import Selection, SelectionContext, Selector, top_indices


class LikelihoodSelector(Selector):
    name = "likelihood"

    def select(self, ctx: SelectionContext, k: int) -> Selection:
        return Selection(top_indices(ctx.logp_f, k))
