"""A stable split of rows by a hash of their id, the same in every process and on every machine.

Why: the embedded base LM and the benchmark worlds must agree on which rows θ0 was pretrained on
without sharing state. ``id_bucket(id, n)`` puts a row in one of ``n`` buckets by SHA-1 of its id
(Python's ``hash`` is salted per process); pretraining leaves out some buckets and the worlds draw
every candidate, planted or not, from those, so θ0 has seen none of them.
"""
from __future__ import annotations

import hashlib


def id_bucket(row_id: str, n: int) -> int:
    return int.from_bytes(hashlib.sha1(str(row_id).encode()).digest()[:8], "big") % int(n)


def in_buckets(row_id: str, spec) -> bool:
    """``spec`` is ``{n: count, keep: [bucket, ...]}``."""
    return id_bucket(row_id, spec["n"]) in set(spec["keep"])
