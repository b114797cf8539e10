"""Uniformly random k examples of the seed corpus (seeded): the floor every method must beat."""
import torch

from src.selectors.base import Selection, SelectionContext, Selector


class RandomSelector(Selector):
    name = "random"

    def __init__(self, seed_offset: int = 0):
        self.seed_offset = seed_offset

    def select(self, ctx: SelectionContext, k: int) -> Selection:
        gen = torch.Generator().manual_seed(ctx.rng + self.seed_offset)
        return Selection(torch.randperm(ctx.n_seed, generator=gen)[:k])
