"""Uniformly random k examples of the seed corpus (seeded): the floor every method must beat.

``balance: classes`` draws the same per-class quotas select_balanced gives each autolabel class
(``class_quotas``), uniformly within each class. It is the control for class-balanced selectors: what
balancing the autolabels alone buys, with no gradient or likelihood in the choice.
"""
import torch

from src.errors import UserError
from src.selectors.base import Selection, SelectionContext, Selector


class RandomSelector(Selector):
    name = "random"

    def __init__(self, seed_offset: int = 0, balance: str = "none", name: str = "random"):
        if balance not in ("none", "classes"):
            raise UserError(f"random: balance must be none or classes, got {balance!r}")
        self.name = name
        self.seed_offset = seed_offset
        self.balance = balance
        self.needs_classes = balance == "classes"

    def select(self, ctx: SelectionContext, k: int) -> Selection:
        gen = torch.Generator().manual_seed(ctx.rng + self.seed_offset)
        if self.balance == "none":
            return Selection(torch.randperm(ctx.n_seed, generator=gen)[:k])
        if ctx.labels is None:
            raise UserError("random_balanced needs class autolabels; this task has none (use random)")
        from src.selectors.topk_balanced import balanced_top  # the quota logic select_balanced uses

        return Selection(balanced_top(torch.rand(ctx.n_seed, generator=gen), ctx.labels, k))
