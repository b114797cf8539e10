"""Seeded Johnson–Lindenstrauss projections.

Interface: ``Projector(in_dim, d, seed).project(x: [n, in_dim]) -> [n, d]`` such that
``<project(x), project(y)> ≈ <x, y>`` (unbiased, error O(‖x‖‖y‖/√d)).

The matrix R (d × in_dim) is never held whole: it is generated column-block by
column-block from a generator seeded with ``(seed, block)``, so the projection of a
row depends only on ``seed`` and ``block_size``, not on batch size or device, and
memory stays O(d · block_size) even for a 50M-wide LM head.

``FactoredProjector(V, H, d, seed)`` is the Kronecker variant for matrix-shaped gradients
(an LM head's V×H): ``P(G) = vec(A G Bᵀ)``, which it can apply to Σ_t e_t h_tᵀ without
forming the matrix (``project_outer``). Cheaper by far, but its JL error is
O(√(1/d_V + 1/d_H)), not O(1/√d): see its docstring.
"""
from __future__ import annotations

import hashlib
import logging
import math

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


def make_projector(opts, in_dim: int, d: int) -> Projector:
    """The dense map ``opts`` (``src.options.ProjectorOptions``) names, for gradients of ``in_dim`` numbers."""
    from src.options import locate

    return locate(opts.target)(in_dim=in_dim, d=d, seed=opts.seed, block_size=opts.block_size)


class FactoredProjector:
    """Kronecker (factored) JL map for matrices: ``P(G) = vec(A G Bᵀ)``, G ∈ R^{V×H}.

    ``A`` (d_V × V) has entries N(0, 1/d_V) and ``B`` (d_H × H) entries N(0, 1/d_H), drawn
    independently, so ``E[AᵀA] = I_V``, ``E[BᵀB] = I_H`` and ``<P(G1), P(G2)>`` is an unbiased
    estimate of ``<G1, G2>_F``. The point is that for a rank-structured G = Σ_t e_t h_tᵀ (an
    LM head's per-example gradient) ``P(G) = Σ_t (A e_t)(B h_t)ᵀ`` is computed from the d_V- and
    d_H-dimensional images of the factors, never forming the V×H matrix (``project_outer``).

    Output layout: row-major ``vec`` of the d_V × d_H matrix, index ``i * d_H + j``.

    Accuracy — read before choosing d. Equal-d is *not* equal accuracy to a dense Gaussian map:
    for unit-Frobenius G1, G2 the estimate's variance is at most
    ``2/d_V · (1 + 2/d_H) + 2/d_H`` (``worst_case_std``; attained by rank-1 G), versus ``2/d``
    for a dense map, i.e. the error scales like ``sqrt(2/d_V + 2/d_H)`` rather than ``sqrt(2/d)``.
    Gradients of high stable rank do better than this worst case (the excess terms are
    ‖G1 G2ᵀ‖²_F and ‖G2ᵀ G1‖²_F, small when the spectra are spread; ``inner_product_variance``
    gives the exact value), but plan for it: d_V = d_H = 64 (d = 4096) has worst-case per-pair
    error std ≈ 0.25·‖G1‖‖G2‖, a dense d = 4096 map ≈ 0.022.

    Choosing (d_V, d_H) from d alone: among factorisations d = d_V·d_H with d_V ≤ V and d_H ≤ H,
    take the one minimising the variance bound's leading term 2/d_V + 2/d_H, i.e. the most
    balanced pair (ties: the larger factor goes to d_V, since V is usually the wider side).
    If no such factorisation exists (d > V·H, or d prime and larger than both V and H, ...)
    it is a ``UserError``. A lopsided choice (smaller factor < √d/4, e.g. d prime) is logged
    as a warning with the error scale. Explicit d_V/d_H are used as given (d must then equal
    their product if also given); d_V > V or d_H > H is legal but logged, as for ``Projector``.

    Reproducibility: A is generated in column blocks of ``block_size`` input rows (V side)
    from a generator seeded with ``(seed, block)``, B from its own seeded generator, so the
    maps depend only on (seed, V, H, d_V, d_H, block_size) — not on batch size or device —
    and A's memory is O(d_V · block_size) (blocks kept when small, regenerated otherwise).
    """

    kind = "factored"

    def __init__(self, V: int, H: int, d: int | None = None, seed: int = 0, d_V: int | None = None,
                 d_H: int | None = None, block_size: int = 65536, dtype: torch.dtype = torch.float32):
        from src.errors import UserError

        self.V, self.H, self.seed, self.block_size, self.dtype = int(V), int(H), int(seed), int(block_size), dtype
        if self.V <= 0 or self.H <= 0:
            raise UserError(f"FactoredProjector needs positive V, H, got V={V}, H={H}")
        if d is not None and int(d) <= 0:
            raise UserError(f"projection dimension d must be positive, got d={d}")
        if d_V is not None and int(d_V) <= 0 or d_H is not None and int(d_H) <= 0:
            raise UserError(f"factor dimensions must be positive, got d_V={d_V}, d_H={d_H}")
        if d_V is not None and d_H is not None:
            d_V, d_H = int(d_V), int(d_H)
            if d is not None and int(d) != d_V * d_H:
                raise UserError(f"d={d} does not equal d_V*d_H={d_V}*{d_H}={d_V * d_H}")
        elif d is None:
            raise UserError("FactoredProjector needs d, or both d_V and d_H")
        elif d_V is not None or d_H is not None:
            d = int(d)
            given = int(d_V if d_V is not None else d_H)
            if d % given:
                raise UserError(f"d={d} is not a multiple of the given factor {given}")
            d_V, d_H = (given, d // given) if d_V is not None else (d // given, given)
        else:
            d_V, d_H = self.choose_factors(int(d), self.V, self.H)
        self.d_V, self.d_H = int(d_V), int(d_H)
        self.d = self.d_V * self.d_H
        if self.d_V >= self.V or self.d_H >= self.H:
            log.info("factored projection d_V=%d (V=%d), d_H=%d (H=%d): a factor does not compress",
                     self.d_V, self.V, self.d_H, self.H)
        self._cache: dict[tuple, torch.Tensor] = {}

    # -- choosing the factorisation --------------------------------------------------
    @staticmethod
    def choose_factors(d: int, V: int, H: int) -> tuple[int, int]:
        """The most balanced d = d_V·d_H with d_V ≤ V, d_H ≤ H (see the class docstring)."""
        from src.errors import UserError

        if d <= 0:
            raise UserError(f"projection dimension d must be positive, got d={d}")
        best = None
        for a in range(1, int(math.isqrt(d)) + 1):
            if d % a:
                continue
            for d_V, d_H in ((d // a, a), (a, d // a)):  # larger factor on V first (tie-break)
                if d_V <= V and d_H <= H:
                    key = (min(d_V, d_H), d_V)
                    if best is None or key > best[0]:
                        best = (key, (d_V, d_H))
        if best is None:
            raise UserError(f"cannot factor d={d} as d_V*d_H with d_V <= V={V} and d_H <= H={H}; "
                            f"pick d <= V*H with a divisor pair fitting, or pass d_V and d_H explicitly")
        d_V, d_H = best[1]
        if min(d_V, d_H) < math.sqrt(d) / 4:
            log.warning("d=%d factored lopsidedly as d_V=%d x d_H=%d: JL error scale ~ sqrt(2/d_V + 2/d_H) = %.3f "
                        "(a balanced d would do better)", d, d_V, d_H, math.sqrt(2 / d_V + 2 / d_H))
        else:
            log.info("factored projection: d=%d = d_V %d x d_H %d", d, d_V, d_H)
        return d_V, d_H

    # -- sampling -----------------------------------------------------------------------
    def _stream_seed(self, which: str, b: int) -> int:
        """Seed of one generator stream, hashed from (seed, which, block).

        CPU generators keep only the low 32 bits of a seed, so stream offsets like ``+ 2**42``
        would silently alias A's and B's streams (correlating A with B and biasing the
        estimate); a hash keeps every stream distinct, and distinct from a dense Projector's.
        """
        digest = hashlib.blake2b(f"factored-jl:{self.seed}:{which}:{b}".encode(), digest_size=4).digest()
        return int.from_bytes(digest, "little")

    @property
    def n_blocks(self) -> int:
        return (self.V + self.block_size - 1) // self.block_size

    def block_A(self, b: int, device=None) -> torch.Tensor:
        """Aᵀ rows for V coordinates [b*block_size, (b+1)*block_size): shape [width, d_V]."""
        key = ("A", b, str(device))
        if key in self._cache:
            return self._cache[key]
        lo = b * self.block_size
        width = min(self.block_size, self.V - lo)
        gen = torch.Generator().manual_seed(self._stream_seed("A", b))
        blk = (torch.randn((width, self.d_V), generator=gen) / self.d_V ** 0.5).to(self.dtype)
        blk = blk.to(device) if device is not None else blk
        if width * self.d_V <= 2**24:
            self._cache[key] = blk
        return blk

    def matrix_B(self, device=None) -> torch.Tensor:
        """B (d_H × H)."""
        key = ("B", str(device))
        if key not in self._cache:
            gen = torch.Generator().manual_seed(self._stream_seed("B", 0))
            blk = (torch.randn((self.d_H, self.H), generator=gen) / self.d_H ** 0.5).to(self.dtype)
            self._cache[key] = blk.to(device) if device is not None else blk
        return self._cache[key]

    def matrix_A(self) -> torch.Tensor:
        """The dense A (d_V × V). For tests and small sizes only."""
        return torch.cat([self.block_A(b) for b in range(self.n_blocks)], dim=0).T.contiguous()

    def matrix(self) -> torch.Tensor:
        """The dense equivalent map (d × V·H) = A ⊗ B on row-major vec(G). Tests / tiny sizes only."""
        return torch.kron(self.matrix_A(), self.matrix_B())

    # -- use ----------------------------------------------------------------------------
    @staticmethod
    def _acc_dtype(*xs) -> torch.dtype:
        return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32

    def _apply_A(self, x: torch.Tensor, acc_dtype) -> torch.Tensor:
        """x: [..., V] -> x Aᵀ: [..., d_V], A generated block by block."""
        out = torch.zeros(*x.shape[:-1], self.d_V, dtype=acc_dtype, device=x.device)
        for b in range(self.n_blocks):
            lo = b * self.block_size
            blk = self.block_A(b, x.device).to(acc_dtype)
            out += x[..., lo:lo + blk.shape[0]].to(acc_dtype) @ blk
        return out

    def project_matrix(self, G: torch.Tensor) -> torch.Tensor:
        """G: [n, V, H] (dense matrices, e.g. references or the weight delta) -> [n, d]."""
        if G.dim() != 3 or G.shape[1:] != (self.V, self.H):
            raise ValueError(f"expected [n, {self.V}, {self.H}], got {tuple(G.shape)}")
        acc = self._acc_dtype(G)
        AG = torch.zeros(G.shape[0], self.d_V, self.H, dtype=acc, device=G.device)
        for b in range(self.n_blocks):
            lo = b * self.block_size
            blk = self.block_A(b, G.device).to(acc)  # [w, d_V]
            AG += torch.einsum("wi,nwh->nih", blk, G[:, lo:lo + blk.shape[0]].to(acc))
        return (AG @ self.matrix_B(G.device).to(acc).T).reshape(G.shape[0], self.d)

    def project_outer(self, err: torch.Tensor, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """P(Σ_t m_t err_t h_tᵀ) per example without forming V×H.

        err: [n, T, V], h: [n, T, H], mask: [n, T] (bool or float weights; None = all ones)
        -> [n, d] = vec(Σ_t m_t (A err_t)(B h_t)ᵀ). Cost O(n·T·(V·d_V + H·d_H + d)),
        memory O(n·T·(d_V + d_H)) beyond the inputs and one block of A.
        """
        if err.dim() != 3 or h.dim() != 3 or err.shape[:2] != h.shape[:2]:
            raise ValueError(f"expected err [n, T, V] and h [n, T, H], got {tuple(err.shape)}, {tuple(h.shape)}")
        if err.shape[-1] != self.V or h.shape[-1] != self.H:
            raise ValueError(f"expected V={self.V}, H={self.H}, got {err.shape[-1]}, {h.shape[-1]}")
        acc = self._acc_dtype(err, h)
        a = self._apply_A(err, acc)                                   # [n, T, d_V]
        b = h.to(acc) @ self.matrix_B(h.device).to(acc).T            # [n, T, d_H]
        if mask is not None:
            a = a * mask.to(acc)[..., None]
        return torch.einsum("nti,ntj->nij", a, b).reshape(err.shape[0], self.d)

    def project_rows(self, err: torch.Tensor, h: torch.Tensor, index: torch.Tensor, n: int,
                     weights: torch.Tensor | None = None) -> torch.Tensor:
        """``project_outer`` for a flat list of (example, position) rows: [n, d].

        err: [K, V], h: [K, H], index: [K] example of each row, weights: [K] (None = 1).
        Row k adds w_k (A err_k)(B h_k)ᵀ to example ``index[k]``; only the K rows that matter
        (e.g. response positions) are touched. Memory O(n·L·(d_V + d_H)), L = most rows of one example.
        """
        if err.dim() != 2 or h.dim() != 2 or err.shape[0] != h.shape[0] or index.shape != err.shape[:1]:
            raise ValueError(f"expected err [K, V], h [K, H], index [K], got {tuple(err.shape)}, "
                             f"{tuple(h.shape)}, {tuple(index.shape)}")
        acc = self._acc_dtype(err, h)
        a = self._apply_A(err, acc)                                   # [K, d_V]
        if weights is not None:
            a = a * weights.to(acc)[:, None]
        b = h.to(acc) @ self.matrix_B(h.device).to(acc).T            # [K, d_H]
        # Pack each example's rows into a zero-padded [n, L, ·] layout, then one batched matmul.
        index = index.long()
        counts = torch.bincount(index, minlength=n)
        order = torch.argsort(index, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.arange(len(index), device=index.device) - starts[index[order]]
        L = int(counts.max()) if len(index) else 0
        a_pad = torch.zeros(n, L, self.d_V, dtype=acc, device=err.device)
        b_pad = torch.zeros(n, L, self.d_H, dtype=acc, device=err.device)
        a_pad[index[order], pos] = a[order]
        b_pad[index[order], pos] = b[order]
        return (a_pad.transpose(1, 2) @ b_pad).reshape(n, self.d)

    # -- accuracy -----------------------------------------------------------------------
    def worst_case_std(self) -> float:
        """Max over unit-Frobenius G1, G2 of std(<P(G1), P(G2)>): √(2/d_V·(1 + 2/d_H) + 2/d_H)."""
        return math.sqrt(2 / self.d_V * (1 + 2 / self.d_H) + 2 / self.d_H)

    def inner_product_variance(self, G: torch.Tensor) -> torch.Tensor:
        """Exact Var(<P(G_i), P(G_j)>) over the random A, B: [n, n], for dense G [n, V, H].

        With P = G_iᵀG_i, Q = G_jᵀG_j, N = G_jᵀG_i (H×H), Gaussian moments give
        Var = [tr(PQ)(1 + 1/d_H) + tr P·tr Q/d_H + tr(N²) + (tr(N)² + ‖N‖²_F)/d_H] / d_V
              + (‖N‖²_F + tr(N²)) / d_H
        (condition on B: a Gaussian quadratic form in A's rows; then average over B).
        """
        G = G.double()
        Gram = G.transpose(1, 2) @ G                                     # [n, H, H] = G_iᵀG_i
        trP = Gram.diagonal(dim1=1, dim2=2).sum(-1)                      # ‖G_i‖²
        trPQ = torch.einsum("iab,jba->ij", Gram, Gram)                    # ‖G_i G_jᵀ‖²
        N = torch.einsum("jvh,ivk->ijhk", G, G)                          # N[i, j] = G_jᵀ G_i
        trN = N.diagonal(dim1=2, dim2=3).sum(-1)                         # <G_i, G_j>
        trN2 = torch.einsum("ijab,ijba->ij", N, N)
        nN2 = (N ** 2).sum((2, 3))
        dV, dH = self.d_V, self.d_H
        return ((trPQ * (1 + 1 / dH) + trP[:, None] * trP[None, :] / dH + trN2 + (trN ** 2 + nN2) / dH) / dV
                + (nN2 + trN2) / dH)

    def describe(self) -> dict:
        return {"kind": self.kind, "V": self.V, "H": self.H, "d": self.d, "d_V": self.d_V, "d_H": self.d_H,
                "seed": self.seed, "block_size": self.block_size}
