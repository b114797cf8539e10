"""The k examples with the highest (or lowest) value of one per-example statistic of the texts.

Two kinds of statistic (``src.scores.token_stats``, computed with the autolabels):
- give-away detectors that know nothing of θf's change: ``length`` (tokens) and ``nll_0`` (novelty: mean
  NLL under θ0). In a benchmark world they should sit at random; one that does not flags the world.
- two-model token statistics: ``lr_mean`` (the text's own token log-ratio), ``ez_ratio`` (error zone),
  ``mink_lr`` (lowest-δ tail) and, for label words, ``label_kl`` (θf vs θ0 over the label words).
"""
from src.errors import UserError
from src.selectors.base import Selection, SelectionContext, Selector, top_indices


class StatisticSelector(Selector):
    def __init__(self, name: str, statistic: str, largest: bool = True):
        self.name, self.statistic, self.largest = name, statistic, bool(largest)

    def select(self, ctx: SelectionContext, k: int) -> Selection:
        if self.statistic not in ctx.stats:
            raise UserError(f"selector '{self.name}' ranks by the token statistic '{self.statistic}', which this task's "
                            f"autolabels do not have (have: {sorted(ctx.stats) or 'none'}); tasks classify_lm and lm "
                            "compute them")
        s = ctx.stats[self.statistic]
        return Selection(top_indices(s if self.largest else -s, k))
