"""Content hashes for cache keys and atomic file writes.

A cached artefact lives under ``<cache_dir>/<stage>/<key>/`` where ``key`` hashes
everything that produced it, so a sweep that changes only the selector or k finds
the upstream stages already there, and a change upstream can never reuse a stale one.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from dataclasses import asdict, is_dataclass

CACHE_VERSION = 1  # bump when a stage's output format or meaning changes


def _plain(x):
    """Option objects (``src.options``), also nested in a dict, hash as the values they hold."""
    return asdict(x) if is_dataclass(x) and not isinstance(x, type) else str(x)


def stable_hash(*parts, n: int = 16) -> str:
    blob = json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=_plain)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def text_fingerprint(texts) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def tensor_digest(t) -> str:
    """A content hash of a tensor (dtype, shape and bytes), for keys that depend on fitted values."""
    import torch

    h = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}".encode())
    h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write then rename, so a killed run leaves either the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())
