"""The upper bound: k examples of the hidden true training data itself, with their true labels."""
import logging

import torch

from src.selectors.base import Selection, SelectionContext, Selector

log = logging.getLogger(__name__)


class ExpertSelector(Selector):
    name = "expert"
    needs_true_data = True

    def __call__(self, ctx: SelectionContext, k: int) -> Selection:
        return self.select(ctx, k)  # k is bounded by the true data, not by the seed corpus

    def select(self, ctx: SelectionContext, k: int) -> Selection:
        n = min(int(k), ctx.n_true)
        if n < k:
            log.info("expert: k=%d exceeds the true data (%d examples); using all of it", k, ctx.n_true)
        gen = torch.Generator().manual_seed(ctx.rng)
        return Selection(torch.randperm(ctx.n_true, generator=gen)[:n], source="true")
