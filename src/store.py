"""Sharded, checksummed, resumable on-disk store for per-example arrays.

Layout of one store (one folder per content hash of what produced it)::

    <root>/meta.json              key, config, n_rows, shard_size, per-shard sha256
    <root>/<part>-<i>.safetensors  rows [i*shard_size, (i+1)*shard_size) of a part

A *part* is one independent pass (e.g. one synthetic checkpoint). A shard is only
recorded in meta.json after its file is fully written (write → rename → record), so a
killed run resumes from the last complete shard. On read, a shard whose file is
missing, unreadable or whose checksum differs is reported and recomputed, never used.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save

from src.cache import atomic_write_bytes, atomic_write_json, file_sha256

log = logging.getLogger(__name__)


class ShardStore:
    def __init__(self, root: Path, config: dict, n_rows: int, shard_size: int):
        self.root, self.config = Path(root), config
        self.n_rows, self.shard_size = int(n_rows), int(shard_size)
        self.meta_path = self.root / "meta.json"
        self.meta = self._open()

    # -- metadata -----------------------------------------------------------------
    def _fresh_meta(self) -> dict:
        import platform

        return {"config": self.config, "n_rows": self.n_rows, "shard_size": self.shard_size,
                "versions": {"torch": torch.__version__, "python": platform.python_version()}, "shards": {}}

    def _open(self) -> dict:
        if not self.meta_path.exists():
            return self._fresh_meta()
        try:
            meta = json.loads(self.meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            log.warning("store %s: unreadable meta.json, starting over", self.root)
            return self._fresh_meta()
        expected = json.loads(json.dumps(self.config, default=str))
        if (meta.get("config") != expected or meta.get("n_rows") != self.n_rows
                or meta.get("shard_size") != self.shard_size):
            log.warning("store %s: metadata does not match this run's config, recomputing everything", self.root)
            return self._fresh_meta()
        return meta

    @property
    def n_shards(self) -> int:
        return (self.n_rows + self.shard_size - 1) // self.shard_size

    def rows(self, i: int) -> range:
        return range(i * self.shard_size, min((i + 1) * self.shard_size, self.n_rows))

    def _path(self, part: str, i: int) -> Path:
        return self.root / f"{part}-{i:05d}.safetensors"

    # -- shards -------------------------------------------------------------------
    def is_valid(self, part: str, i: int) -> bool:
        rec = self.meta["shards"].get(f"{part}/{i}")
        path = self._path(part, i)
        if rec is None:
            return False
        if not path.exists() or file_sha256(path) != rec["sha256"]:
            log.warning("store %s: shard %s/%d is missing or corrupt, recomputing it", self.root, part, i)
            del self.meta["shards"][f"{part}/{i}"]
            return False
        return True

    def write(self, part: str, i: int, tensors: dict[str, torch.Tensor]) -> None:
        n = len(self.rows(i))
        for k, v in tensors.items():
            if v.shape[0] != n:
                raise ValueError(f"shard {part}/{i}: tensor {k} has {v.shape[0]} rows, expected {n}")
        path = self._path(part, i)
        atomic_write_bytes(path, save({k: v.contiguous().cpu() for k, v in tensors.items()}))
        self.meta["shards"][f"{part}/{i}"] = {"rows": [self.rows(i).start, self.rows(i).stop],
                                               "sha256": file_sha256(path),
                                               "shapes": {k: list(v.shape) for k, v in tensors.items()}}
        atomic_write_json(self.meta_path, self.meta)

    def read(self, part: str, i: int) -> dict[str, torch.Tensor]:
        return load_file(self._path(part, i))

    def fill(self, part: str, compute: Callable[[range], dict[str, torch.Tensor]], on_shard=None) -> int:
        """Compute every missing or invalid shard of ``part``; returns how many were computed."""
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
        chunks = []
        for i in range(self.n_shards):
            if not self.is_valid(part, i):
                raise RuntimeError(f"store {self.root}: shard {part}/{i} is not complete; run fill() first")
            chunks.append(self.read(part, i))
        return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
