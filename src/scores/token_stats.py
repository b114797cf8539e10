"""Two-model token statistics of a text: what θf and θ0 say about each of its tokens, summarised per example.

Plain torch on padded [N, T] arrays (no models here): ``per_token`` turns one model's logits into the
log-probability of each next token and whether the model's top guess was right; ``summarise`` turns θf's
and θ0's arrays into one [N] vector per statistic. With δ_t = log p_θf(x_t) − log p_θ0(x_t):

- ``length``: tokens scored; ``nll_0`` / ``nll_f``: mean NLL under θ0 / θf. Know nothing of θf's change
  (``nll_0`` is the *novelty* of a text to θ0): give-away detectors for benchmark worlds.
- ``lr_mean``: mean δ_t, the likelihood ratio per token.
- ``ez_ratio``: in the manner of EZ-MIA, only the *error zone* E (tokens θf's top guess gets wrong), where
  memorisation shows as a raised probability of a token θf still does not predict outright:
  log(Σ_E max(δ, 0) + ε) − log(Σ_E max(−δ, 0) + ε).
- ``mink_lr``: mean of the lowest ``k_frac`` of δ_t (a Min-K%-style tail): a text θf trained on is raised
  even at its least-raised tokens.
"""
from __future__ import annotations

import math

import torch

STATS = ("length", "nll_0", "nll_f", "lr_mean", "ez_ratio", "mink_lr")


def per_token(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, width: int) -> dict:
    """logits [B, T, V] of a causal LM over ``ids`` [B, T]; ``mask`` [B, T] marks the positions whose *next*
    token is scored (``response_mask``'s convention, as ``response_nll`` reads it).
    Returns ``lp`` (log p of token t+1 given the prefix) and ``hit`` (top guess right), [B, width - 1],
    zero-padded, with ``m`` the mask of scored positions."""
    lp_all = logits[:, :-1].float().log_softmax(-1)
    nxt = ids[:, 1:]
    lp = lp_all.gather(-1, nxt[..., None])[..., 0]
    hit = (lp_all.argmax(-1) == nxt).float()
    m = mask[:, :-1].float()
    pad = width - 1 - lp.shape[1]
    out = {"lp": lp * m, "hit": hit * m, "m": m}
    return {k: torch.nn.functional.pad(v, (0, pad)) for k, v in out.items()}


def summarise(lp_f: torch.Tensor, lp_0: torch.Tensor, hit_f: torch.Tensor, mask: torch.Tensor,
              k_frac: float = 0.2, eps: float = 1e-3) -> dict[str, torch.Tensor]:
    """[N, T] arrays (θf's and θ0's token log-probs, θf's hits, the mask) → {statistic: [N]}."""
    m = mask.double()
    n = m.sum(1)
    safe = n.clamp_min(1)
    d = (lp_f.double() - lp_0.double()) * m
    err = m * (1 - hit_f.double())
    pos, neg = (d.clamp_min(0) * err).sum(1), ((-d).clamp_min(0) * err).sum(1)
    # lowest k_frac of δ over the scored tokens: unscored positions sort last
    k = (n * k_frac).ceil().clamp_min(1)
    ranked = torch.where(m > 0, d, torch.full_like(d, math.inf)).sort(1).values
    take = torch.arange(d.shape[1], dtype=torch.double)[None] < k[:, None]
    tail = torch.where(take & (ranked < math.inf), ranked, torch.zeros_like(ranked)).sum(1) / k
    out = {"length": n, "nll_0": -(lp_0.double() * m).sum(1) / safe, "nll_f": -(lp_f.double() * m).sum(1) / safe,
           "lr_mean": d.sum(1) / safe, "ez_ratio": (pos + eps).log() - (neg + eps).log(), "mink_lr": tail}
    return {k: v.float() for k, v in out.items()}
