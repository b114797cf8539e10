"""Sharded, checksummed, resumable on-disk store for per-example arrays, safe for concurrent writers.

Layout of one store (one folder per content hash of what produced it)::

    <root>/meta.json                store config, n_rows, shard_size, versions (written once)
    <root>/<part>-<i>.safetensors   rows [i*shard_size, (i+1)*shard_size) of a part
    <root>/<part>-<i>.json          that shard's sidecar: store fingerprint, rows, sha256, shapes,
                                    dtypes, writer rank

A *part* is one independent pass (e.g. one synthetic checkpoint). Each shard is written
file-first, sidecar-second, both by write-to-temp-then-rename, so a reader sees either no
sidecar, an old one, or one describing a complete file; a killed run resumes from the last
complete shard. A shard is used only if its sidecar carries this store's fingerprint (a hash of
config, n_rows and shard_size: a mismatched config recomputes everything) and the file's
sha256 and the recorded rows/shapes match; otherwise it is reported and recomputed, never used.

Nothing is shared between shards, so any number of processes (DDP ranks) may write disjoint
shards at once, and two writers of the same shard (a duplicated work item) each leave a
consistent file + sidecar pair behind (the computation is deterministic, so the bytes agree;
if they did not, the shard would fail its checksum and be recomputed, not used).
"""
from __future__ import annotations

import hashlib
import json
import logging
import platform
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save

from src.cache import atomic_write_bytes, atomic_write_json, file_sha256
from src.options import STORE_DTYPE_NAMES

# The dtypes a gradient store may hold (``gradient.store_dtype``): float16/bfloat16 halve it.
STORE_DTYPES = {name: getattr(torch, name) for name in STORE_DTYPE_NAMES}  # the names the options accept

log = logging.getLogger(__name__)

LAYOUT = 2  # 1: one meta.json holding every shard's record; 2: per-shard sidecars


def _plain(obj):
    return json.loads(json.dumps(obj, default=str))


class ShardStore:
    def __init__(self, root: Path, config: dict, n_rows: int, shard_size: int):
        self.root, self.config = Path(root), config
        self.n_rows, self.shard_size = int(n_rows), int(shard_size)
        self.meta_path = self.root / "meta.json"
        blob = json.dumps({"config": _plain(config), "n_rows": self.n_rows, "shard_size": self.shard_size,
                           "layout": LAYOUT}, sort_keys=True)
        self.fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]
        self.meta = self._open()

    # -- metadata -----------------------------------------------------------------
    def _fresh_meta(self) -> dict:
        return {"config": _plain(self.config), "n_rows": self.n_rows, "shard_size": self.shard_size,
                "layout": LAYOUT, "fingerprint": self.fingerprint,
                "versions": {"torch": torch.__version__, "python": platform.python_version()}}

    def _open(self) -> dict:
        """Read meta.json; a missing, unreadable or mismatched one is (re)written here, once.

        Validity never depends on meta.json (each sidecar carries the fingerprint), so ranks
        opening the same store at once may race on this write harmlessly: the content is the same.
        """
        fresh = self._fresh_meta()
        if self.meta_path.exists():
            try:
                meta = json.loads(self.meta_path.read_text())
            except (OSError, json.JSONDecodeError):
                log.warning("store %s: unreadable meta.json, starting over", self.root)
            else:
                if meta.get("fingerprint") == self.fingerprint:
                    return meta
                log.warning("store %s: metadata does not match this run's config, recomputing everything", self.root)
        atomic_write_json(self.meta_path, fresh)
        return fresh

    @property
    def n_shards(self) -> int:
        return (self.n_rows + self.shard_size - 1) // self.shard_size

    def rows(self, i: int) -> range:
        return range(i * self.shard_size, min((i + 1) * self.shard_size, self.n_rows))

    def path(self, part: str, i: int) -> Path:
        return self.root / f"{part}-{i:05d}.safetensors"

    def sidecar_path(self, part: str, i: int) -> Path:
        return self.root / f"{part}-{i:05d}.json"

    # -- shards -------------------------------------------------------------------
    def record(self, part: str, i: int) -> dict | None:
        """The shard's sidecar if it belongs to this store and describes its rows, else None (no checksum)."""
        side = self.sidecar_path(part, i)
        if not side.exists():
            return None
        try:
            rec = json.loads(side.read_text())
        except (OSError, json.JSONDecodeError):
            log.warning("store %s: sidecar of shard %s/%d is unreadable, recomputing it", self.root, part, i)
            return None
        r = self.rows(i)
        if rec.get("store") != self.fingerprint:
            return None  # another config's shard (reported once, when meta.json was opened)
        if rec.get("rows") != [r.start, r.stop] or any(s[:1] != [len(r)] for s in rec.get("shapes", {}).values()):
            log.warning("store %s: shard %s/%d records other rows or shapes, recomputing it", self.root, part, i)
            return None
        return rec

    def is_valid(self, part: str, i: int) -> bool:
        rec = self.record(part, i)
        if rec is None:
            return False
        path = self.path(part, i)
        if not path.exists() or file_sha256(path) != rec.get("sha256"):
            log.warning("store %s: shard %s/%d is missing or corrupt, recomputing it", self.root, part, i)
            return False
        return True

    def missing(self, part: str) -> list[int]:
        """Indices of the shards of ``part`` that are missing or invalid (each checksummed)."""
        return [i for i in range(self.n_shards) if not self.is_valid(part, i)]

    def write(self, part: str, i: int, tensors: dict[str, torch.Tensor], rank: int = 0) -> None:
        """Write one shard: the file, then its sidecar (both atomically). Safe alongside other writers."""
        n = len(self.rows(i))
        for k, v in tensors.items():
            if v.shape[0] != n:
                raise ValueError(f"shard {part}/{i}: tensor {k} has {v.shape[0]} rows, expected {n}")
        blob = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
        atomic_write_bytes(self.path(part, i), blob)
        r = self.rows(i)
        atomic_write_json(self.sidecar_path(part, i), {
            "store": self.fingerprint, "part": part, "shard": i, "rows": [r.start, r.stop],
            "sha256": hashlib.sha256(blob).hexdigest(), "rank": int(rank),
            "shapes": {k: list(v.shape) for k, v in tensors.items()},
            "dtypes": {k: str(v.dtype).removeprefix("torch.") for k, v in tensors.items()}})

    def read(self, part: str, i: int, verify: bool = False) -> dict[str, torch.Tensor]:
        """One shard's tensors, from a single read of the file (checked against its sidecar if ``verify``)."""
        data = self.path(part, i).read_bytes() if self.path(part, i).exists() else None
        if verify:
            rec = self.record(part, i)
            if rec is None or data is None or hashlib.sha256(data).hexdigest() != rec.get("sha256"):
                raise RuntimeError(f"store {self.root}: shard {part}/{i} is not complete; run fill() first")
        if data is None:
            raise FileNotFoundError(self.path(part, i))
        return load_bytes(data)

    def fill(self, part: str, compute: Callable[[range], dict[str, torch.Tensor]], on_shard=None) -> int:
        """Compute every missing or invalid shard of ``part`` in this process; returns how many were computed."""
        self.root.mkdir(parents=True, exist_ok=True)
        done = 0
        for i in range(self.n_shards):
            if not self.is_valid(part, i):
                self.write(part, i, compute(self.rows(i)))
                done += 1
            if on_shard is not None:
                on_shard(i)
        return done

    def load(self, part: str) -> dict[str, torch.Tensor]:
        """Concatenate a part's shards (each checked against its checksum first)."""
        chunks = [self.read(part, i, verify=True) for i in range(self.n_shards)]
        return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}

    def load_stacked(self, parts: Iterable[str], key: str = "g", dtype: torch.dtype | None = None) -> torch.Tensor:
        """``[len(parts), n_rows, ...]`` of tensor ``key``, streamed shard by shard into one buffer.

        Each shard file is read once (checksum and parse from the same bytes) and copied into a
        preallocated tensor of ``dtype`` (default: the stored dtype), so peak memory is the
        result plus one shard, never a second copy of the matrix.
        """
        parts = list(parts)
        out = None
        for j, part in enumerate(parts):
            for i in range(self.n_shards):
                t = self.read(part, i, verify=True)[key]
                if out is None:
                    out = torch.empty((len(parts), self.n_rows, *t.shape[1:]), dtype=dtype or t.dtype)
                r = self.rows(i)
                out[j, r.start:r.stop] = t
        if out is None:
            raise RuntimeError(f"store {self.root}: nothing to load (no parts or no rows)")
        return out
