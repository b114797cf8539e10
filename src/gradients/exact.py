"""Exact inner products, no projection: ``gradient.projection=exact`` for one-position losses (label words).

One example's last-layer gradient at one position is the rank-1 matrix g_i = e_i h_iᵀ (e_i = p_i − e_y over
the C outputs, h_i the layer's input), so every inner product SELECT needs is exact without forming it:

    ⟨g_i, g_m⟩ = ⟨e_i, e_m⟩ · ⟨h_i, h_m⟩,        ⟨g_i, T⟩ = e_iᵀ T h_i,        ‖T‖².

Over the P·N gradients of a corpus (every checkpoint) these give the Gram matrix K = (E Eᵀ) ∘ (H Hᵀ). Its
eigendecomposition K = U Λ Uᵀ embeds the gradients isometrically as the rows of X = U √Λ (rank r ≤ P·N), and
the target as (Λ^{-1/2} Uᵀ a, ‖T_⊥‖) with a_i = ⟨g_i, T⟩ and ‖T_⊥‖² = ‖T‖² − ‖T_∥‖², the part of T outside
the gradients' span. So the stored rows (one more column, zero for every gradient) and the target have
exactly the inner products and norms of the true V×H gradients, and every selector runs on them unchanged.

The price: E is P·N × C numbers (C the vocabulary), the Gram matrix (P·N)², and its eigendecomposition
O((P·N)³): a diagnostic for corpora of thousands of rows (``gradient.exact_max_rows``), not a method for
millions, where the factored projection serves.
"""
from __future__ import annotations

import logging
import math
import os

import torch

from src.errors import UserError
from src.gradients.last_layer import errors, layer_delta, precondition

log = logging.getLogger(__name__)


def factors_of_rows(model, batches, spec) -> tuple[torch.Tensor, torch.Tensor]:
    """(E [n, C], Ĥ [n, H]) of the one-position gradients of ``batches``, preconditioned as ``spec`` says."""
    module = model.get_submodule(spec.head)
    Es, Hs = [], []
    with torch.no_grad():
        for batch in batches:
            pos = spec.positions(model, batch)
            if len(pos.example) != pos.n or not torch.equal(pos.example, torch.arange(pos.n, device=pos.example.device)):
                raise UserError("gradient.projection=exact needs one loss position per example (label words, "
                                "classifiers); SFT and LM examples have many: use factored")
            e = errors(pos.h, pos.target, module.weight.detach(), None)
            e, h = precondition(e, pos.h, spec.factors)
            Es.append(e.float().cpu())
            Hs.append(h.float().cpu())
    return torch.cat(Es), torch.cat(Hs)


def embed(E: torch.Tensor, Hh: torch.Tensor, T: torch.Tensor, block: int = 2048, tol: float = 1e-10):
    """Rows X [n, r+1] and target t [r+1] with ⟨X_i, X_m⟩ = ⟨e_i h_iᵀ, e_m h_mᵀ⟩ and ⟨X_i, t⟩ = e_iᵀ T h_i, ‖t‖ = ‖T‖."""
    n = E.shape[0]
    K = torch.empty(n, n, dtype=torch.float64)
    for lo in range(0, n, block):  # E Eᵀ blockwise in float32 (C can be 49k wide), the product in float64
        K[lo:lo + block] = (E[lo:lo + block] @ E.T).double()
    K *= (Hh @ Hh.T).double()
    a = torch.cat([((E[lo:lo + block] @ T) * Hh[lo:lo + block]).sum(1) for lo in range(0, n, block)]).double()
    tt = float((T.double() ** 2).sum())
    lam, U = torch.linalg.eigh(K)
    keep = lam > tol * float(lam.max().clamp_min(1e-300))
    lam, U = lam[keep], U[:, keep]
    X = U * lam.sqrt()
    par = (U.T @ a) / lam.sqrt()
    perp = max(tt - float(par @ par), 0.0) ** 0.5
    rows = torch.cat([X, torch.zeros(n, 1, dtype=torch.float64)], 1)
    return rows, torch.cat([par, torch.tensor([perp], dtype=torch.float64)])


def memory_bytes(n: int, V: int, H: int) -> int:
    """Peak bytes of an exact embedding of n gradients of a V×H layer: the factors E and Ĥ (float32, held
    once), the Gram matrix, its eigenvectors and eigh's workspace (float64, n² each) and the rows (float64
    and their float32 copy, n·(n+1) each)."""
    return 4 * n * (V + H) + (8 + 8 + 8 + 8 + 4) * n * n


def available_bytes() -> int:
    """Memory the system can give without swapping (MemAvailable), or total RAM where that is unknown."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_bound(n: int, V: int, H: int, max_rows, available: int | None = None) -> None:
    """Fail in one line, before any compute, when n = P·N gradients exceed ``gradient.exact_max_rows`` or the
    memory an exact embedding needs exceeds what is available (saying the largest n that fits)."""
    if max_rows is not None and (not isinstance(max_rows, int) or max_rows <= 0):
        raise UserError(f"gradient.exact_max_rows must be a positive number of rows or null (no cap but memory), "
                        f"got {max_rows!r}")
    if max_rows is not None and n > max_rows:
        raise UserError(f"gradient.projection=exact embeds all {n} gradients (P·N) through their Gram matrix; "
                        f"gradient.exact_max_rows={max_rows} caps that: use a smaller corpus or factored")
    avail = available_bytes() if available is None else available
    need = memory_bytes(n, V, H)
    if need > avail:
        b = 4 * (V + H)  # largest n with 36 n² + b n <= avail
        largest = int((-b + math.sqrt(b * b + 4 * 36 * avail)) / (2 * 36))
        raise UserError(f"gradient.projection=exact on {n} gradients of a {V}×{H} layer needs about {need / 2**30:.1f} "
                        f"GiB, {avail / 2**30:.1f} GiB is available: at most {largest} gradients (P·N) fit; use a "
                        "smaller corpus or gradient.projection=factored")


def exact_rows(pair, alphas, spec, seed, autolabels, batch_size: int, max_rows):
    """[P, N, r+1] float32 rows and the [r+1] target, for every checkpoint in one joint embedding."""
    from src.models import interpolate

    N, P = len(seed), len(alphas)
    W = pair.state0[f"{spec.head}.weight"]
    check_bound(N * P, W.shape[0], W.shape[1], max_rows)
    items = spec.items(seed, autolabels, range(N))
    E = Hh = None  # filled in place, one checkpoint at a time: the factors are held once
    for j, a in enumerate(alphas):
        pair.model.load_state_dict(interpolate(pair.state0, pair.statef, a))
        pair.model.eval()
        batches = (spec.collate(items[lo:lo + batch_size]) for lo in range(0, N, batch_size))
        e, h = factors_of_rows(pair.model, batches, spec)
        if E is None:
            E, Hh = e.new_empty(P * N, e.shape[1]), h.new_empty(P * N, h.shape[1])
        E[j * N:(j + 1) * N], Hh[j * N:(j + 1) * N] = e, h
        del e, h
        log.info("exact gradients: checkpoint α=%.3f, %d rows of (e [%d], h [%d])", a, N, E.shape[1], Hh.shape[1])
    dw, _ = layer_delta(pair.state0, pair.statef, spec.head)
    rows, target = embed(E, Hh, -dw)
    log.info("exact gradients: %d gradients embedded in %d dimensions (their rank + 1)", rows.shape[0], rows.shape[1])
    return rows.float().reshape(len(alphas), N, -1), target.float()
