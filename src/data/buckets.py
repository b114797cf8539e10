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


def bucket_filter(spec):
    """``spec`` is ``{n: count, keep: [bucket, ...]}`` → ``row_id -> bool`` (in one of the kept buckets). The spec
    is read once, the kept buckets as a set, not once per row of a 100k-row corpus."""
    n, keep = int(spec["n"]), {int(b) for b in spec["keep"]}
    return lambda row_id: id_bucket(row_id, n) in keep
