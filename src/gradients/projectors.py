"""Seeded Johnson–Lindenstrauss projections.

Interface: ``Projector(in_dim, d, seed).project(x: [n, in_dim]) -> [n, d]`` such that
``<project(x), project(y)> ≈ <x, y>`` (unbiased, error O(‖x‖‖y‖/√d)).

The matrix R (d × in_dim) is never held whole: it is generated column-block by
column-block from a generator seeded with ``(seed, block)``, so the projection of a
row depends only on ``seed`` and ``block_size``, not on batch size or device, and
memory stays O(d · block_size) even for a 50M-wide LM head.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


class Projector:
    """Base class: subclasses say how one block of R is sampled (``_sample``)."""

    kind = "base"

    def __init__(self, in_dim: int, d: int, seed: int = 0, block_size: int = 65536,
                 dtype: torch.dtype = torch.float32):
        if int(d) <= 0:
            from src.errors import UserError

            raise UserError(f"projection dimension d must be positive, got d={d}")
        self.in_dim, self.d, self.seed, self.block_size, self.dtype = int(in_dim), int(d), int(seed), int(block_size), dtype
        if self.d >= self.in_dim:
            # Legal (inner products are still preserved in expectation) but nothing is compressed.
            log.info("projection d=%d >= gradient size %d: the projection does not compress", self.d, self.in_dim)
        self._cache: dict[tuple, torch.Tensor] = {}

    # -- sampling -----------------------------------------------------------------
    def _sample(self, gen: torch.Generator, shape: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError

    def block(self, b: int, device=None) -> torch.Tensor:
        """Rows of Rᵀ for input coordinates [b*block_size, (b+1)*block_size): shape [width, d]."""
        key = (b, str(device))
        if key not in self._cache:
            lo = b * self.block_size
            width = min(self.block_size, self.in_dim - lo)
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + b)
            blk = self._sample(gen, (width, self.d)).to(self.dtype)
            # Small maps (all a classification head needs) are kept; wide ones are regenerated per call.
            if width * self.d <= 2**24:
                self._cache[key] = blk.to(device) if device is not None else blk
            else:
                return blk.to(device) if device is not None else blk
        return self._cache[key]

    @property
    def n_blocks(self) -> int:
        return (self.in_dim + self.block_size - 1) // self.block_size

    def matrix(self) -> torch.Tensor:
        """The dense R (d × in_dim). For tests and small sizes only."""
        return torch.cat([self.block(b) for b in range(self.n_blocks)], dim=0).T.contiguous()

    # -- use ----------------------------------------------------------------------
    def project(self, x: torch.Tensor) -> torch.Tensor:
        """x: [n, in_dim] -> [n, d], accumulated in float32 (or x's dtype if wider)."""
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"expected last dim {self.in_dim}, got {tuple(x.shape)}")
        acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        out = torch.zeros(x.shape[0], self.d, dtype=acc_dtype, device=x.device)
        for b in range(self.n_blocks):
            lo = b * self.block_size
            blk = self.block(b, x.device).to(acc_dtype)
            out += x[:, lo:lo + blk.shape[0]].to(acc_dtype) @ blk
        return out

    def describe(self) -> dict:
        return {"kind": self.kind, "in_dim": self.in_dim, "d": self.d, "seed": self.seed, "block_size": self.block_size}


class GaussianProjector(Projector):
    """R_ij ~ N(0, 1/d): the textbook JL map."""

    kind = "gaussian"

    def _sample(self, gen, shape):
        return torch.randn(shape, generator=gen) / self.d ** 0.5


class RademacherProjector(Projector):
    """R_ij = ±1/√d: same guarantee, cheaper to sample (TRAK's default on GPU)."""

    kind = "rademacher"

    def _sample(self, gen, shape):
        return (torch.randint(0, 2, shape, generator=gen).float() * 2 - 1) / self.d ** 0.5
