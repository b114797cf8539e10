"""The selector interface and what selectors are given.

``Selector.select(ctx, k) -> Selection``. Selectors declare what they need
(``needs_gradients``) so the pipeline skips the gradient pass when nothing uses it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from src.errors import UserError


@dataclass
class SelectionContext:
    """Everything known about the seed corpus (N examples) when selecting."""

    n_seed: int
    labels: torch.Tensor              # [N] autolabels from θf
    logp_f: torch.Tensor              # [N] log p_θf(autolabel | x)
    logp_0: torch.Tensor              # [N] log p_θ0(autolabel | x)
    n_true: int = 0                   # size of the hidden true training set (expert only)
    grads: object = None               # [P, N, d] projected per-example gradients at θ̂_1..θ̂_P: a tensor
                                       # or a ``src.selectors.rows.Rows`` source (e.g. the store, out of core)
    target: torch.Tensor | None = None  # [d] projected −(θf − θ0)
    rng: int = 0
    stats: dict = field(default_factory=dict)  # {name: [N]} token statistics of the texts (src.scores.token_stats)
    # How gradient selectors run (``selection.*`` in the config):
    device: str | None = None          # where blocks are multiplied (None: where ``grads`` lives)
    block_rows: int = 16384            # rows per block when ``grads`` is a tensor
    precision: str = "stored"          # stored: products in the stored dtype; float32: widen each block first
    progress: bool = False             # progress bars with ETA
    state_dir: Path | None = None      # where long selections checkpoint their progress (None: no checkpoints)
    grads_key: str = ""                # identifies ``grads`` (e.g. the store's hash) in checkpoint file names
    checkpoint_every_s: float = 10.0


@dataclass
class Selection:
    indices: torch.Tensor     # [k] long, distinct
    source: str = "seed"      # "seed": indices into the seed corpus; "true": into the true training data
    info: dict = field(default_factory=dict)
    objective: torch.Tensor | None = None  # [k] SELECT's objective after each pick, when the selector optimised it


class Selector:
    name = "base"
    needs_gradients = False
    gradients: dict = {}     # gradient options this selector selects on (set from its config by the registry)
    needs_true_data = False  # picks from the hidden true data (only an experiment has it)
    needs_classes = False    # needs class autolabels (classification tasks), checked before any compute

    def select(self, ctx: SelectionContext, k: int) -> Selection:
        raise NotImplementedError

    def __call__(self, ctx: SelectionContext, k: int) -> Selection:
        check_k(k, ctx.n_seed)
        sel = self.select(ctx, k)
        assert len(torch.unique(sel.indices)) == len(sel.indices), f"{self.name} picked an index twice"
        return sel


def check_k(k: int, n: int) -> None:
    if int(k) <= 0:
        raise UserError(f"k (selection size) must be positive, got k={k}")
    if int(k) > n:
        raise UserError(f"k={k} is larger than the seed corpus ({n} examples); lower k or enlarge the seed corpus")


def state_path(ctx: SelectionContext, name: str, options: dict) -> Path | None:
    """Checkpoint file of a resumable selection, keyed by the gradients, the options and the seed."""
    if ctx.state_dir is None:
        return None
    from src.cache import stable_hash

    return Path(ctx.state_dir) / f"{name}-{stable_hash(ctx.grads_key, options, ctx.rng, ctx.precision)}.pt"


def top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, ties broken by index for determinism."""
    order = torch.argsort(-scores.double(), stable=True)
    return order[:k]
