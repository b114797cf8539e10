"""Down-weighting the gradient directions every candidate shares, before greedy or top-k scores them.

Per-example gradients of one model are far from isotropic: a few directions (on an LM head, the
common hidden-state component and the push-down of every non-label token) hold most of every row's
norm, so alignment with the target is decided there whatever a row's content. Two low-rank maps,
fitted on the candidates being scored (never on planted rows alone) and applied to the rows *and* the
target alike:

- ``drop``: remove the top ``rank`` principal directions of the rows' second moment (uncentred, so
  the mean direction is among them): g ↦ g − V Vᵀ g.
- ``ridge``: TRAK-style whitening by (ΦᵀΦ/n + λI)^(-1/2) restricted to those directions, scaled so
  the rest keep unit gain: the top direction k is multiplied by √(λ / (σ_k² + λ)), where σ_k² is its
  second moment and λ = ``ridge`` × the mean second moment per dimension (trace / d).

The directions come from a few rounds of block subspace iteration over ``Rows`` (one read of the
matrix per round), so the map works out of core; applying it costs N·d·rank per pass, never d².
"""
from __future__ import annotations

import torch

from src.errors import UserError
from src.selectors.rows import Rows

SHARED = ("none", "drop", "ridge")


def top_directions(rows: Rows, rank: int, *, iters: int = 4, oversample: int = 8, seed: int = 0):
    """(V [d, rank], σ² [rank], mean second moment per dimension): the top eigenvectors of
    Σ_rows g gᵀ / n over every checkpoint's rows, by randomised subspace iteration."""
    P, N, d = rows.shape
    n, m = P * N, min(d, rank + oversample)
    gen = torch.Generator().manual_seed(int(seed))
    Q = torch.linalg.qr(torch.randn(d, m, generator=gen, dtype=torch.float64))[0]
    trace = 0.0
    for it in range(iters):
        Y = torch.zeros(d, m, dtype=torch.float64)
        for _, _, blk in rows.blocks():
            b = blk.to("cpu", torch.float64)
            Y += b.T @ (b @ Q)
            if it == 0:
                trace += float((b * b).sum())
        Q = torch.linalg.qr(Y)[0]
    # Rayleigh–Ritz on the final basis: exact eigenpairs of the second moment within span(Q).
    B = torch.zeros(m, m, dtype=torch.float64)
    for _, _, blk in rows.blocks():
        z = blk.to("cpu", torch.float64) @ Q
        B += z.T @ z
    ev, W = torch.linalg.eigh(B / n)
    order = ev.argsort(descending=True)[:rank]
    return Q @ W[:, order], ev[order].clamp_min(0), trace / (n * d)


class MappedRows(Rows):
    """rows ↦ rows + ((rows V) · (s − 1)) Vᵀ, block by block: a low-rank linear map of every row."""

    def __init__(self, rows: Rows, V: torch.Tensor, scale: torch.Tensor):
        self.rows, self.shape, self.device, self.resident = rows, rows.shape, rows.device, None
        self.dtype = torch.float64 if rows.dtype == torch.float64 else torch.float32
        self.V, self.gain = V.to(rows.device, self.dtype), (scale - 1).to(rows.device, self.dtype)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        return x + ((x @ self.V) * self.gain) @ self.V.T

    def block_bounds(self):
        return self.rows.block_bounds()

    def blocks(self):
        for j, lo, blk in self.rows.blocks():
            yield j, lo, self.apply(blk)

    def gather(self, idx):
        return self.apply(self.rows.gather(idx))


def shared_map(rows: Rows, target: torch.Tensor, how: str, rank: int, ridge: float, seed: int = 0):
    """(rows, target) with the shared directions down-weighted as ``how`` says (``none``: unchanged)."""
    check_options(how, rank, ridge)
    if how == "none":
        return rows, target
    d = rows.shape[2]
    rank = min(int(rank), d)
    V, ev, mean_sq = top_directions(rows, rank, seed=seed)
    if how == "drop":
        scale = torch.zeros_like(ev)
    else:
        lam = float(ridge) * mean_sq
        scale = (lam / (ev + lam)).sqrt()
    mapped = MappedRows(rows, V, scale)
    return mapped, mapped.apply(target.reshape(1, -1)).reshape(target.shape).to(target.dtype)


def check_options(how: str, rank, ridge) -> None:
    if how not in SHARED:
        raise UserError(f"shared must be one of {list(SHARED)}, got '{how}'")
    if how != "none" and int(rank) < 1:
        raise UserError(f"shared_rank must be at least 1, got {rank}")
    if how == "ridge" and not float(ridge) > 0:
        raise UserError(f"shared_ridge must be positive, got {ridge}")
