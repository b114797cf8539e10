"""Passes over a ``Rows`` source: the only places selection reads the gradient matrix.

A greedy step and a top-k are memory-bound: each reads every stored number once and does two
flops with it. So a pass multiplies each stored [n, d] block by a vector *in the stored dtype*
(a 2-D matrix–vector product, the fastest kernel for it on CPU and GPU; float32 accumulation
inside), widens only the [n] result to float32, and never widens the block: widening a float16
block costs far more than the product (``precision="float32"`` does it anyway, as a check).

Rounding the result to float16 adds a relative error of 2^-11 of each product, the same order as
storing the gradients in float16 already did. To keep results in float16's normal range (no
overflow, no subnormals), the vector is rescaled per block so the largest possible product,
max_i ‖g_i‖ · ‖v‖, is 2^14, and the result is scaled back in float32.

Row statistics that never change (‖g_i‖², the seed mean ḡ_j) are computed once (or read from
the store) and kept as [P, N] / [P, d] vectors: O(P·N) memory, never O(P·N·d).
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

LOW = (torch.float16, torch.bfloat16)
_TOP = 2.0 ** 14  # largest product magnitude a rescaled low-precision pass may produce
_ELEM = 2.0 ** 15  # largest element of a rescaled vector


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _bar(rows, progress, desc):
    return tqdm(total=len(rows.block_bounds()), desc=desc, unit="block", disable=not progress, mininterval=1.0,
                leave=False)


def _mv(blk: torch.Tensor, v: torch.Tensor, rmax: float, acc, precision: str) -> torch.Tensor:
    """blk [n, d] @ v [d] -> [n] in ``acc``: in the block's dtype with a rescaled vector, or widened."""
    if blk.dtype not in LOW or precision == "float32":
        return blk.to(acc) @ v.to(acc)
    nv = float(v.norm())
    if nv == 0.0:
        return torch.zeros(blk.shape[0], dtype=acc, device=blk.device)
    s = min(_TOP / max(rmax, 1e-30), _ELEM) / nv
    return (blk @ (v * s).to(blk.dtype)).to(acc) / s


def _rmax(sq: torch.Tensor, j: int, lo: int, hi: int) -> float:
    return float(sq[j, lo:hi].max().clamp_min(0).sqrt()) if hi > lo else 0.0


def stats_pass(rows, acc, need_sq: bool, need_mean: bool, progress=False):
    """One pass for what is not stored: ‖g_ij‖² [P, N] and the mean row ḡ_j [P, d] (both in ``acc``)."""
    P, N, d = rows.shape
    sq = torch.empty(P, N, dtype=acc, device=rows.device) if need_sq else None
    total = torch.zeros(P, d, dtype=acc, device=rows.device) if need_mean else None
    with _bar(rows, progress, "row statistics") as bar:
        for j, lo, blk in rows.blocks():
            w = blk.to(acc)
            if need_sq:
                sq[j, lo:lo + len(blk)] = (w * w).sum(-1)
            if need_mean:
                total[j] += w.sum(0)
            bar.update()
    return sq, (total / max(N, 1) if need_mean else None)


def centred_pass(rows, gbar: torch.Tensor, T: torch.Tensor, acc, progress=False):
    """One widened pass for centring: per row ⟨g − ḡ_j, T_j⟩, ‖g − ḡ_j‖², ⟨g − ḡ_j, ḡ_j⟩ and ‖g‖² ([P, N] each).

    Every block is widened to ``acc`` and ḡ_j subtracted before any product: when ḡ dominates the
    rows (LM heads), g − ḡ is small against g, and a product rounded in a low-precision dtype, or a
    difference of two large products, would lose it.
    """
    P, N, d = rows.shape
    a, b, e, sq = (torch.empty(P, N, dtype=acc, device=rows.device) for _ in range(4))
    with _bar(rows, progress, "centred statistics") as bar:
        for j, lo, blk in rows.blocks():
            hi = lo + len(blk)
            w = blk.to(acc)
            sq[j, lo:hi] = (w * w).sum(-1)
            w = w - gbar[j]  # not in place: ``to`` returns the stored block itself when it is already ``acc``
            a[j, lo:hi], b[j, lo:hi], e[j, lo:hi] = w @ T[j], (w * w).sum(-1), w @ gbar[j]
            bar.update()
    return a, b, e, sq


def products(rows, vecs: list[torch.Tensor], sq: torch.Tensor, precision="stored", progress=False, desc="pass"):
    """For each [P, d] vector V in ``vecs``: [P, N] with out[j, i] = G[j, i] · V[j], in one pass over G."""
    P, N, _ = rows.shape
    acc = vecs[0].dtype
    outs = [torch.empty(P, N, dtype=acc, device=rows.device) for _ in vecs]
    with _bar(rows, progress, desc) as bar:
        for j, lo, blk in rows.blocks():
            hi = lo + len(blk)
            rmax = _rmax(sq, j, lo, hi) if blk.dtype in LOW else 1.0
            for out, V in zip(outs, vecs):
                out[j, lo:hi] = _mv(blk, V[j], rmax, acc, precision)
            bar.update()
    return outs


def gathered_products(G: torch.Tensor, V: torch.Tensor, sq: torch.Tensor, acc, precision="stored"):
    """G [P, m, d] (gathered rows), V [P, d] -> [P, m] with out[j] = G[j] @ V[j]; ``sq`` [P, m]."""
    return torch.stack([_mv(G[j], V[j], _rmax(sq, j, 0, G.shape[1]), acc, precision) for j in range(G.shape[0])])


def centred_products(rows, st: dict, U: torch.Tensor, precision="stored") -> torch.Tensor:
    """[P, N]: ⟨g'_ij, U_j⟩ = ⟨g_ij − ḡ_j, U_j⟩·r_ij for a [P, d] ``U``, in one pass over G.

    Centred, ⟨g, U⟩ − ⟨ḡ, U⟩ would cancel when ḡ dominates, and ⟨g, U⟩ is a product in the stored
    dtype. So U is split into U⊥ ⟂ ḡ_j plus β_j ḡ_j: ⟨g − ḡ, U⟩ = ⟨g, U⊥⟩ − ⟨ḡ, U⊥⟩ + β_j ⟨g − ḡ, ḡ⟩,
    where ⟨g, U⊥⟩ = ⟨g − ḡ, U⊥⟩ carries only the small part (its rounding is relative to it) and
    ⟨g − ḡ, ḡ⟩ came from the widened pass of ``prepare``.
    """
    if not st["center"]:
        (gu,) = products(rows, [U], st["sq"], precision)
        return gu * st["r"]
    gbar, gg = st["gbar"], st["gg"]
    beta = torch.where(gg > 0, (U * gbar).sum(-1, keepdim=True) / gg.clamp_min(torch.finfo(st["acc"]).tiny),
                       torch.zeros_like(gg))
    perp = U - beta * gbar
    (gu,) = products(rows, [perp], st["sq"], precision)
    return (gu - (gbar * perp).sum(-1, keepdim=True) + beta * st["e"]) * st["r"]
