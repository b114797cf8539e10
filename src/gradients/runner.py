"""The gradient pass over synthetic checkpoints: one Lightning predict loop over shard work items.

A *work item* is a pair (checkpoint j, shard i) whose shard is missing or invalid in the
``ShardStore``. ``GradientPassModule.predict_step`` takes one item, swaps in θ̂_j unless it is
already loaded (items are sorted by j, and Lightning's distributed sampler hands rank r the
items r, r+W, r+2W, ..., so each rank loads each checkpoint at most once), computes the
shard's rows with a plain mini-batch loop on ``self.device`` and writes the shard from that
rank. With ``trainer.devices=N trainer.strategy=ddp`` (or ``ddp_spawn``) the ranks split the
items and write disjoint shards; nothing is gathered. Afterwards every process reads the
finished shards back from disk (``ShardStore.load_stacked``).

What to compute comes from the task's ``GradientSpec`` (``src.tasks.base``): ``spec.items`` gives
a shard's examples, ``spec.collate`` batches them and ``spec(model, batch)`` returns their projected
rows ``{"g": [n, d]}``. The spec pickles, so ``ddp_spawn`` can ship it to its workers.

Precision: the forward runs inside ``predict_step``, so Lightning's precision plugin applies
(autocast for ``bf16-mixed`` / ``16-mixed``, converted weights for ``*-true``); outputs are
widened to float32 per batch and cast to ``store_dtype`` (``g`` only) when the shard is written,
beside ``sq``, the float32 squared norm of each stored row (what selection needs besides products).
"""
from __future__ import annotations

import logging
import time

import lightning as L
import torch
from torch.utils.data import DataLoader

from src.models import interpolate
from src.options import TrainerOptions
from src.store import ShardStore
from src.training import length_order

log = logging.getLogger(__name__)


def _item_length(item) -> int:
    """Sort key for mini-batches: total characters of an item's strings (less padding per batch)."""
    return sum(len(x) for x in item if isinstance(x, str))


def _first(batch):
    return batch[0]


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def compute_rows(model, items: list, collate, fn, batch_size: int, device) -> dict[str, torch.Tensor]:
    """``fn`` over ``items`` in length-sorted mini-batches on ``device``; float32 CPU outputs in input order."""
    order, inverse = length_order(items, _item_length)
    chunks: dict[str, list] = {}
    with torch.no_grad():
        for lo in range(0, len(order), batch_size):
            batch = _to_device(collate([items[i] for i in order[lo:lo + batch_size]]), device)
            for k, v in fn(model, batch).items():
                chunks.setdefault(k, []).append(v.detach().float().cpu())
    return {k: torch.cat(v)[inverse] for k, v in chunks.items()}


class GradientPassModule(L.LightningModule):
    """``predict_step((j, i))``: shard i of checkpoint θ̂_j, computed and written by this rank."""

    def __init__(self, pair, alphas: list[float], store: ShardStore, spec, seed, autolabels: dict, *,
                 batch_size: int, store_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model = pair.model
        self.pair, self.alphas, self.store, self.spec = pair, list(alphas), store, spec
        self.seed, self.autolabels = seed, autolabels
        self.batch_size, self.store_dtype = int(batch_size), store_dtype
        self.loaded: int | None = None           # checkpoint index j whose weights are in self.model
        self.stats = {"computed": 0, "skipped": 0, "loads": 0}

    @staticmethod
    def part(j: int) -> str:
        return f"ckpt{j}"

    def on_predict_start(self):
        self.model.eval()

    def _load(self, j: int) -> None:
        if self.loaded != j:
            self.model.load_state_dict(interpolate(self.pair.state0, self.pair.statef, self.alphas[j - 1]))
            self.loaded = j
            self.stats["loads"] += 1

    def predict_step(self, item, _batch_idx=0):
        j, i = (int(x) for x in item)
        part = self.part(j)
        if self.store.is_valid(part, i):  # a duplicated item, or another writer got here first
            self.stats["skipped"] += 1
            return {"part": part, "shard": i, "computed": False}
        self._load(j)
        items = self.spec.items(self.seed, self.autolabels, self.store.rows(i))
        out = compute_rows(self.model, items, self.spec.collate, self.spec, self.batch_size, self.device)
        out["g"] = out["g"].to(self.store_dtype)
        # ‖g‖² of the stored rows, so selection never needs a widening pass over the matrix for norms.
        out["sq"] = out["g"].double().pow(2).sum(-1).float()
        self.store.write(part, i, out, rank=self.global_rank)
        self.stats["computed"] += 1
        return {"part": part, "shard": i, "computed": True}

    def on_predict_end(self):
        log.info("gradient pass: rank %d computed %d shards, skipped %d already valid, loaded %d checkpoints",
                 self.global_rank, self.stats["computed"], self.stats["skipped"], self.stats["loads"])
        self.trainer.strategy.barrier("gradient_pass")  # every rank's shards are on disk before anyone reads


def plan(store: ShardStore, n_checkpoints: int) -> list[tuple[int, int]]:
    """Work items (j, i) for every missing or invalid shard, sorted by checkpoint then shard."""
    return [(j, i) for j in range(1, n_checkpoints + 1) for i in store.missing(GradientPassModule.part(j))]


def gradient_pass(pair, alphas: list[float], store: ShardStore, spec, seed, autolabels: dict, *,
                  trainer: TrainerOptions, batch_size: int, store_dtype=torch.float32, load: bool = True,
                  load_dtype: torch.dtype | None = None):
    """Fill the store's shards of θ̂_1..θ̂_P in one predict loop; return [P, N, d] (in ``load_dtype``,
    default the store dtype), or the number of shards computed when ``load`` is False."""
    from src.training import build_trainer

    store.root.mkdir(parents=True, exist_ok=True)
    items = plan(store, len(alphas))
    if items:
        t0 = time.perf_counter()
        module = GradientPassModule(pair, alphas, store, spec, seed, autolabels, batch_size=batch_size,
                                    store_dtype=store_dtype)
        loader = DataLoader(items, batch_size=1, shuffle=False, collate_fn=_first)
        # A spec that differentiates through the model (several layers, by autograd) cannot run under
        # Lightning's default inference mode, which no enable_grad can lift.
        lightning = build_trainer(trainer, logger=False, inference_mode=not getattr(spec, "needs_grad", False))
        lightning.predict(module, loader, return_predictions=False)
        log.info("gradient pass: %d shards in %.1fs on %s x %s", len(items), time.perf_counter() - t0,
                 trainer.accelerator, trainer.devices)
    for j, alpha in enumerate(alphas, start=1):
        n = sum(1 for jj, _ in items if jj == j)
        log.info("gradient pass: checkpoint %d/%d (alpha=%.3f): %d of %d shards computed, rest from cache",
                 j, len(alphas), alpha, n, store.n_shards)
    if not load:
        return len(items)
    return store.load_stacked([GradientPassModule.part(j) for j in range(1, len(alphas) + 1)], "g",
                              dtype=load_dtype)
