"""The gradient pass over synthetic checkpoints, written shard by shard into a ``ShardStore``.

Task-agnostic: the task supplies ``compute(rows) -> {"g": [n, d], ...}`` for the model
currently loaded; this loop swaps in θ̂_j only when some shard of checkpoint j is missing,
so a resumed or repeated run does no forward pass for finished shards.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

from src.store import ShardStore

log = logging.getLogger(__name__)


def gradient_pass(pair, alphas: list[float], store: ShardStore, compute: Callable[[range], dict],
                  store_dtype=torch.float32) -> torch.Tensor:
    """Projected per-example gradients at each θ̂_j: returns [P, N, d] (float32)."""
    for j, alpha in enumerate(alphas, start=1):
        loaded = []

        def shard(rows, alpha=alpha, loaded=loaded):
            if not loaded:
                pair.load(alpha)
                loaded.append(True)
            out = compute(rows)
            out["g"] = out["g"].to(store_dtype)
            return out

        n = store.fill(f"ckpt{j}", shard)
        log.info("gradient pass: checkpoint %d/%d (alpha=%.3f): %d of %d shards computed, rest from cache",
                 j, len(alphas), alpha, n, store.n_shards)
    return torch.stack([store.load(f"ckpt{j}")["g"].float() for j in range(1, len(alphas) + 1)])
