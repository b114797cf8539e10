"""Where gradient selectors read the [P, N, d] gradient matrix from: in RAM, or the store, block by block.

A ``Rows`` source has ``shape`` (P, N, d), ``dtype`` (the stored dtype, never widened here) and
``device`` (where blocks are handed out), and two reads:

- ``blocks()`` yields ``(j, lo, block)`` with ``block = G[j, lo:lo + n]`` as a 2-D [n, d] tensor on
  ``device``: every pass of a selector is one sweep over these, so a pass reads the matrix once;
- ``gather(idx)`` returns ``G[:, idx]`` as [P, len(idx), d] on ``device`` (picked rows, samples).

``TensorRows`` wraps a tensor (tests, benchmarks, callers with the matrix in memory).
``StoreRows`` reads a ``ShardStore``'s shards memory-mapped, one shard at a time, so peak memory
is one shard plus whatever the selector keeps per row (O(P·N) scores), never the matrix; it also
serves the per-row squared norms the gradient pass stored beside each shard (key ``sq``), so a
selector need not recompute them. Shards are checksummed by the gradient pass that precedes
selection; reading them k times must not hash them k times, so only their sidecars are checked here.

When the device is a GPU and the matrix fits in its free memory, either source is copied there
once (``resident``) and later passes never touch the host; otherwise blocks are streamed.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch

from src.errors import UserError

_NP = {"F16": (np.float16, torch.float16), "BF16": (np.uint16, torch.bfloat16), "F32": (np.float32, torch.float32),
       "F64": (np.float64, torch.float64)}


def resolve_device(name: str | None, accelerator: str | None = None) -> torch.device:
    """``auto``: the first GPU when the run's trainer uses one (or names none) and one is present; else CPU."""
    name = str(name or "auto")
    if name == "auto":
        gpu = torch.cuda.is_available() and str(accelerator or "auto") in ("auto", "gpu", "cuda")
        return torch.device("cuda" if gpu else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"selection.device={name} but no CUDA device is available; use selection.device=cpu or auto")
    return torch.device(name)


def fits_on(device: torch.device, nbytes: int, headroom: float = 0.8) -> bool:
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes < headroom * free


def mmap_tensor(path: Path, key: str) -> torch.Tensor:
    """One tensor of a safetensors file, memory-mapped copy-on-write (no bytes read until used)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))[key]
    np_dtype, torch_dtype = _NP[head["dtype"]]
    lo, hi = head["data_offsets"]
    if hi == lo:
        return torch.empty(head["shape"], dtype=torch_dtype)
    arr = np.memmap(path, dtype=np_dtype, mode="c", offset=8 + n + lo, shape=tuple(head["shape"]))
    t = torch.from_numpy(arr)
    return t.view(torch_dtype) if torch_dtype == torch.bfloat16 else t


class Rows:
    shape: tuple[int, int, int]
    dtype: torch.dtype
    device: torch.device

    def blocks(self):
        raise NotImplementedError

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sq_norms(self) -> torch.Tensor | None:
        """[P, N] float32 ‖G[j, i]‖² if known without a pass (e.g. stored), else None."""
        return None

    @property
    def n_blocks(self) -> int:
        return sum(1 for _ in self.block_bounds())

    def block_bounds(self):
        raise NotImplementedError


class TensorRows(Rows):
    """A tensor as a source; ``sq`` ([P, N] ‖g‖², if the caller already has them) spares a widening pass."""

    def __init__(self, G: torch.Tensor, device=None, block_rows: int = 16384, sq: torch.Tensor | None = None):
        G = G if G.dim() == 3 else G[None]
        self.sq = sq
        self.device = torch.device(device) if device is not None else G.device
        if self.device != G.device and fits_on(self.device, G.numel() * G.element_size()):
            G, block_rows = G.to(self.device), max(block_rows, G.shape[1])  # resident: one block per checkpoint
        self.G, self.block_rows = G, int(block_rows)
        self.shape, self.dtype = tuple(G.shape), G.dtype

    def block_bounds(self):
        P, N, _ = self.shape
        return [(j, lo, min(lo + self.block_rows, N)) for j in range(P) for lo in range(0, N, self.block_rows)]

    def blocks(self):
        for j, lo, hi in self.block_bounds():
            yield j, lo, self.G[j, lo:hi].to(self.device, non_blocking=True)

    def gather(self, idx):
        idx = idx.to(self.G.device)
        out = torch.empty((self.shape[0], len(idx), self.shape[2]), dtype=self.dtype, device=self.G.device)
        for j in range(self.shape[0]):  # index_select copies whole rows: several times faster than G[:, idx]
            torch.index_select(self.G[j], 0, idx, out=out[j])
        return out.to(self.device)

    def sq_norms(self):
        return None if self.sq is None else self.sq.to(self.device)


class StoreRows(Rows):
    """The store's parts (one per checkpoint) as a [P, N, d] source, one memory-mapped shard at a time."""

    def __init__(self, store, parts, key: str = "g", device=None):
        self.store, self.parts, self.key = store, list(parts), key
        self.device = torch.device(device or "cpu")
        for part in self.parts:
            for i in range(store.n_shards):
                if store.record(part, i) is None or not store.path(part, i).exists():
                    raise RuntimeError(f"store {store.root}: shard {part}/{i} is not complete; run the gradient pass")
        first = mmap_tensor(store.path(self.parts[0], 0), key)
        self.dtype = first.dtype
        self.shape = (len(self.parts), store.n_rows, first.shape[1])
        self.resident = None
        if fits_on(self.device, int(np.prod(self.shape)) * first.element_size()):
            buf = torch.empty(self.shape, dtype=self.dtype, device=self.device)
            for j, lo, blk in self._host_blocks():
                buf[j, lo:lo + len(blk)] = blk.to(self.device)
            self.resident = TensorRows(buf, block_rows=self.shape[1])  # one product per checkpoint

    def block_bounds(self):
        if self.resident is not None:
            return self.resident.block_bounds()
        return [(j, r.start, r.stop) for j in range(len(self.parts)) for r in map(self.store.rows,
                                                                                 range(self.store.n_shards))]

    def _host_blocks(self):
        for j, part in enumerate(self.parts):
            for i in range(self.store.n_shards):
                yield j, self.store.rows(i).start, mmap_tensor(self.store.path(part, i), self.key)

    def blocks(self):
        if self.resident is not None:
            yield from self.resident.blocks()
            return
        for j, lo, blk in self._host_blocks():
            yield j, lo, blk.to(self.device, non_blocking=False)
            del blk  # drop the mapping before the next shard: at most one shard mapped at a time

    def gather(self, idx):
        if self.resident is not None:
            return self.resident.gather(idx)
        idx = idx.cpu()
        out = torch.empty((len(self.parts), len(idx), self.shape[2]), dtype=self.dtype)
        shard = torch.div(idx, self.store.shard_size, rounding_mode="floor")
        for i in torch.unique(shard).tolist():
            where = (shard == i).nonzero().squeeze(1)
            local = idx[where] - i * self.store.shard_size
            for j, part in enumerate(self.parts):
                out[j, where] = mmap_tensor(self.store.path(part, i), self.key)[local]
        return out.to(self.device)

    def sq_norms(self):
        """Stored ‖g‖² (float32, of the stored-dtype rows) if every shard has them; else None."""
        out = torch.empty(self.shape[:2], dtype=torch.float64 if self.dtype == torch.float64 else torch.float32)
        for j, part in enumerate(self.parts):
            for i in range(self.store.n_shards):
                try:
                    sq = mmap_tensor(self.store.path(part, i), "sq")
                except KeyError:
                    return None
                r = self.store.rows(i)
                out[j, r.start:r.stop] = sq
        return out.to(self.device)


class MeanStoreRows(Rows):
    """The checkpoint mean (1/P) Σ_j G[j] of a ``StoreRows`` source as a [1, N, d] source.

    Each block averages the P parts' shards of one row range, widened to float32 (a mean of low-precision
    rows is no longer exactly representable in their dtype; float64 stays float64); peak memory is still
    one shard per part.
    """

    def __init__(self, rows: StoreRows):
        self.rows, self.device = rows, rows.device
        self.shape = (1, rows.shape[1], rows.shape[2])
        self.dtype = torch.float64 if rows.dtype == torch.float64 else torch.float32
        self.resident = None

    def block_bounds(self):
        return [(0, r.start, r.stop) for r in map(self.rows.store.rows, range(self.rows.store.n_shards))]

    def blocks(self):
        src, P = self.rows, len(self.rows.parts)
        for i in range(src.store.n_shards):
            total = sum(mmap_tensor(src.store.path(part, i), src.key).to(self.device, self.dtype)
                        for part in src.parts)
            yield 0, src.store.rows(i).start, total / P

    def gather(self, idx):
        return self.rows.gather(idx).to(self.dtype).mean(0, keepdim=True)


class MeanTensorRows(Rows):
    """The checkpoint mean (1/P) Σ_j G[j] of a tensor as a [1, N, d] source, one block of rows at a time:
    each block is averaged (widened to float32, or float64 for a float64 tensor) when it is read, so the
    matrix is never copied whole in a wider dtype."""

    def __init__(self, rows: TensorRows):
        self.rows, self.device, self.block_rows = rows, rows.device, rows.block_rows
        self.shape = (1, rows.shape[1], rows.shape[2])
        self.dtype = torch.float64 if rows.dtype == torch.float64 else torch.float32
        self.resident = None

    def block_bounds(self):
        N = self.shape[1]
        return [(0, lo, min(lo + self.block_rows, N)) for lo in range(0, N, self.block_rows)]

    def blocks(self):
        G = self.rows.G
        for _, lo, hi in self.block_bounds():
            total = sum(G[j, lo:hi].to(self.device, self.dtype) for j in range(G.shape[0]))
            yield 0, lo, total / G.shape[0]

    def gather(self, idx):
        return self.rows.gather(idx).to(self.dtype).mean(0, keepdim=True)


class SubsetRows(Rows):
    """Rows ``idx`` (sorted, distinct) of another source as a [P, len(idx), d] source, read through its blocks:
    out of core when the source is, with row i of the subset being row ``idx[i]`` of the source."""

    def __init__(self, rows: Rows, idx: torch.Tensor):
        self.rows, self.idx = rows, torch.as_tensor(idx, dtype=torch.long).sort().values
        self.shape = (rows.shape[0], len(self.idx), rows.shape[2])
        self.dtype, self.device, self.resident = rows.dtype, rows.device, None

    def _range(self, lo: int, hi: int) -> tuple[int, int]:
        a, b = torch.searchsorted(self.idx, torch.tensor([lo, hi]))
        return int(a), int(b)

    def block_bounds(self):
        return [(j, *r) for j, lo, hi in self.rows.block_bounds() if (r := self._range(lo, hi))[1] > r[0]]

    def blocks(self):
        for j, lo, blk in self.rows.blocks():
            a, b = self._range(lo, lo + len(blk))
            if b > a:  # the subset's rows in this block, at their positions in the subset
                yield j, a, blk[(self.idx[a:b] - lo).to(blk.device)]

    def gather(self, idx):
        return self.rows.gather(self.idx[torch.as_tensor(idx, dtype=torch.long).cpu()])

    def sq_norms(self):
        sq = self.rows.sq_norms()
        return None if sq is None else sq[:, self.idx.to(sq.device)]


def checkpoint_mean(rows: Rows) -> Rows:
    """[1, N, d]: each row's gradient averaged over the checkpoints (SELECT's ``running_sum=shared``)."""
    if rows.shape[0] == 1:
        return rows
    if isinstance(rows, SubsetRows):  # the mean's rows, subset: out of core whenever the source is
        return SubsetRows(checkpoint_mean(rows.rows), rows.idx)
    if isinstance(rows, StoreRows) and rows.resident is None:
        return MeanStoreRows(rows)
    return MeanTensorRows(rows.resident if isinstance(rows, StoreRows) else rows)


def as_rows(grads, device=None, block_rows: int = 16384) -> Rows:
    """A ``Rows`` source from a tensor ([P, N, d] or [N, d]) or an existing source."""
    if isinstance(grads, Rows):
        return grads
    return TensorRows(grads, device=device, block_rows=block_rows)
