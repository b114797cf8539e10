"""SELECT: greedy selection of examples whose running gradient sum aligns with −(θf − θ0).

With G[j, i] the projected gradient of example i at synthetic checkpoint θ̂_j and t the
projected target, the subset S is grown one example at a time:

    i* = argmax_{i ∉ S}  (1/P) Σ_j cos(s_j + G[j, i], t)

where s_j is the running gradient sum of S. Because the objective is a cosine of a *sum*,
an example pointing the same way as what S already has adds little, so redundant
examples stop paying off, unlike top-k, which scores each example alone.

Choices the paper leaves open are config options (defaults in conf/selector/select.yaml):
- ``running_sum``: ``per_checkpoint`` (s_j = Σ_{m∈S} G[j, m], the gradient of S at θ̂_j)
  or ``shared`` (one s = Σ_{m∈S} mean_j G[j, m] used against every checkpoint, as the
  authors' public code does).
- ``reset_every``: restart the running sum every B picks, so each block of B examples
  matches the target on its own (one optimiser batch at a time); ``null`` never resets.
- ``normalize``: unit-normalise each G[j, i] first, so long gradients (confidently wrong
  autolabels) do not dominate the sum.
- ``center``: subtract the seed mean ḡ_j = (1/N) Σ_i G[j, i] from every gradient at each
  checkpoint (before normalising), and remove from the target its component along ḡ_j,
  t_j = t − (t·ḡ_j / ‖ḡ_j‖²) ḡ_j, so the target may differ per checkpoint. A direction every
  seed example shares (e.g. the LM head's push towards frequent tokens) then neither scores
  nor fills the running sum; only what sets an example apart from the corpus does.

``greedy_select`` is the fast path: it keeps c_j[i] = s_j · G[j, i] and updates it with one
matrix–vector product per step (O(P·N·d) a step). ``greedy_select_naive`` recomputes every
candidate's norm from scratch and is kept as the reference the tests compare against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from src.errors import UserError
from src.selectors.base import Selection, SelectionContext, Selector

_MODES = ("per_checkpoint", "shared")


def _prepare(grads, target, normalize, mode, center=False):
    """float64 G [P, N, d] (centred, then normalised, as asked) and unit targets t_j [P, d]."""
    if mode not in _MODES:
        raise UserError(f"select: running_sum must be one of {_MODES}, got '{mode}'")
    G = grads.double()
    if G.dim() == 2:
        G = G[None]
    t = target.double()[None].expand(G.shape[0], -1)
    if center:
        G, t = center_naive(G, t)
    if normalize:
        G = F.normalize(G, dim=-1)
    return G, F.normalize(t, dim=-1)


def center_naive(G: torch.Tensor, t: torch.Tensor):
    """G − ḡ_j (materialised) and t_j = t − (t·ḡ_j/‖ḡ_j‖²) ḡ_j; t: [P, d] (or [d])."""
    gbar = G.mean(1)                                                       # [P, d]
    gg = (gbar * gbar).sum(-1, keepdim=True)
    coef = torch.where(gg > 0, (gbar * t).sum(-1, keepdim=True) / gg.clamp_min(1e-300), torch.zeros_like(gg))
    return G - gbar[:, None], t - coef * gbar


def centering(G: torch.Tensor, t: torch.Tensor, acc: torch.dtype, chunk: int):
    """ḡ_j [P, d] (one pass over G, blocks widened to ``acc``) and the unit targets t̂_j [P, d]."""
    P, N, d = G.shape
    gbar = torch.zeros(P, d, dtype=acc)
    for lo in range(0, N, chunk):
        gbar += G[:, lo:lo + chunk].to(acc).sum(1)
    gbar /= max(N, 1)
    gg = (gbar * gbar).sum(-1, keepdim=True)
    coef = torch.where(gg > 0, (gbar @ t)[:, None] / gg.clamp_min(1e-300), torch.zeros_like(gg))
    return gbar, F.normalize(t[None] - coef * gbar, dim=-1)


def _increment(G, m, mode):
    """What adding example m adds to each checkpoint's running sum: [P, d]."""
    return G[:, m] if mode == "per_checkpoint" else G[:, m].mean(0, keepdim=True).expand_as(G[:, m])


def greedy_select(grads: torch.Tensor, target: torch.Tensor, k: int, *, running_sum: str = "per_checkpoint",
                  reset_every: int | None = None, normalize: bool = False, center: bool = False, chunk: int = 16384):
    """Fast greedy. grads: [P, N, d] (or [N, d]), target: [d]. Returns (indices [k], objective [k]).

    ``grads`` stays in its storage dtype (e.g. float16 from the gradient store); blocks of ``chunk``
    rows are widened to float32 (float64 if given float64) as they are used, so extra memory is
    O(P·N + P·chunk·d) and 10^6 × 4096 float16 gradients (8 GiB) select within 24 GiB.
    Unit-normalisation is applied as a per-row scale instead of a normalised copy; centring never
    forms G − ḡ either: ⟨g_i − ḡ, u⟩ = ⟨g_i, u⟩ − ⟨ḡ, u⟩ and ‖g_i − ḡ‖² = ‖g_i‖² − 2⟨g_i, ḡ⟩ + ‖ḡ‖².
    """
    if running_sum not in _MODES:
        raise UserError(f"select: running_sum must be one of {_MODES}, got '{running_sum}'")
    G = grads if grads.dim() == 3 else grads[None]
    acc = torch.float64 if G.dtype == torch.float64 else torch.float32
    P, N, d = G.shape
    a, b = torch.empty(P, N, dtype=acc), torch.empty(P, N, dtype=acc)
    if center:
        gbar, t = centering(G, target.to(acc), acc, chunk)                # [P, d] each; t: unit t̂_j
        gm = torch.empty(P, N, dtype=acc)
        for lo in range(0, N, chunk):
            blk = G[:, lo:lo + chunk].to(acc)
            ab = blk @ torch.stack([t, gbar], -1)                          # [P, n, 2]: g·t̂_j, g·ḡ_j
            a[:, lo:lo + chunk], gm[:, lo:lo + chunk], b[:, lo:lo + chunk] = ab[..., 0], ab[..., 1], (blk * blk).sum(-1)
        a -= (gbar * t).sum(-1, keepdim=True)                              # ≈ 0: t̂_j ⟂ ḡ_j by construction
        b += (gbar * gbar).sum(-1, keepdim=True) - 2 * gm
        b.clamp_(min=0)
    else:
        gbar, t = torch.zeros(P, d, dtype=acc), F.normalize(target.to(acc), dim=0)
        for lo in range(0, N, chunk):
            blk = G[:, lo:lo + chunk].to(acc)
            a[:, lo:lo + chunk], b[:, lo:lo + chunk] = blk @ t, (blk * blk).sum(-1)
    scale = b.clamp_min(1e-300).rsqrt() if normalize else torch.ones_like(b)
    a, b = a * scale, b * scale * scale  # g'·t̂_j and ‖g'‖² of the (centred, scaled) rows g': fixed
    c = torch.zeros(P, N, dtype=acc)     # s_j·g'_ij, updated each step
    s = torch.zeros(P, d, dtype=acc)
    taken = torch.zeros(N, dtype=torch.bool)
    picks, objective = [], []
    for step in range(int(k)):
        if reset_every and step % int(reset_every) == 0:
            s.zero_()
            c.zero_()
        st, ss = (s * t).sum(-1) if center else s @ t, (s * s).sum(-1)     # [P]
        norm = (ss[:, None] + 2 * c + b).clamp_min(1e-300).sqrt()          # ‖s_j + g'_ij‖
        score = ((st[:, None] + a) / norm).mean(0)
        score[taken] = -float("inf")
        m = int(torch.argmax(score))
        picks.append(m)
        objective.append(float(score[m]))
        taken[m] = True
        row = (G[:, m].to(acc) - gbar) * scale[:, m, None]
        u = row if running_sum == "per_checkpoint" else row.mean(0, keepdim=True).expand_as(row)  # [P, d]
        ubar = (gbar * u).sum(-1, keepdim=True) if center else 0.0         # ⟨ḡ_j, u_j⟩
        for lo in range(0, N, chunk):                                      # c_j += G'_j u_j, one pass over G
            gu = torch.einsum("pnd,pd->pn", G[:, lo:lo + chunk].to(acc), u)
            c[:, lo:lo + chunk] += (gu - ubar) * scale[:, lo:lo + chunk]
        s += u
    return torch.tensor(picks, dtype=torch.long), torch.tensor(objective, dtype=torch.float64)


def greedy_select_naive(grads: torch.Tensor, target: torch.Tensor, k: int, *, running_sum: str = "per_checkpoint",
                        reset_every: int | None = None, normalize: bool = False, center: bool = False):
    """Reference: at every step, form s_j + G[j, i] for every candidate and take its cosine directly."""
    G, t = _prepare(grads, target, normalize, running_sum, center)
    P, N, d = G.shape
    s = torch.zeros(P, d, dtype=G.dtype)
    picks, objective = [], []
    for step in range(int(k)):
        if reset_every and step % int(reset_every) == 0:
            s = torch.zeros(P, d, dtype=G.dtype)
        score = F.cosine_similarity(s[:, None, :] + G, t[:, None, :], dim=-1, eps=1e-300).mean(0)
        for m in picks:
            score[m] = -float("inf")
        m = int(torch.argmax(score))
        picks.append(m)
        objective.append(float(score[m]))
        s = s + _increment(G, m, running_sum)
    return torch.tensor(picks, dtype=torch.long), torch.tensor(objective, dtype=torch.float64)


class SelectSelector(Selector):
    name = "select"
    needs_gradients = True

    def __init__(self, running_sum: str = "per_checkpoint", reset_every: int | None = None, normalize: bool = False,
                 center: bool = False):
        self.kw = dict(running_sum=running_sum, reset_every=reset_every, normalize=normalize, center=center)

    def select(self, ctx: SelectionContext, k: int) -> Selection:
        idx, obj = greedy_select(ctx.grads, ctx.target, k, **self.kw)
        return Selection(idx, info={"objective_first": float(obj[0]), "objective_last": float(obj[-1]),
                                    "objective_max": float(obj.max())})
