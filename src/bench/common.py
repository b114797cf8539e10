"""What the benchmarks share: synthetic gradients, peak-memory measurement, timing, child processes.

- ``synthetic(N, d)`` / ``synthetic_matrix(N, d)``: float16 gradient rows with their stored squared
  norms and a target, streamed block by block or built in memory (on any device);
- ``PeakRSS``: the resident-memory growth of a block of code (VmHWM after ``clear_refs``);
- ``timed(fn)`` / ``best_of(fn)``: wall time of a call (CUDA synchronised on a GPU), best of a few;
- ``run_child(module, args)``: a measurement in a fresh process, its JSON result read back;
- ``offline_env()``, ``load_average()``, ``ROOT``, ``GIB``, ``MIB``.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
GIB, MIB = 2**30, 2**20


def offline_env() -> None:
    """No hub, no W&B network, no tokenizer fork warnings (set only where the caller has not)."""
    for key, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"),
                       ("WANDB_MODE", "offline")):
        os.environ.setdefault(key, value)
    from src.config import quiet_libraries

    quiet_libraries()  # a benchmark's log is its figures, not library banners


def load_average() -> str:
    """The 1/5/15-minute load average, printed beside figures measured on a shared box."""
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


# -- synthetic gradients ----------------------------------------------------------------------------
def synthetic(N: int, d: int, seed: int = 0, block: int = 65536, device="cpu"):
    """Yields (lo, rows [n, d] float16, ‖row‖² float32) block by block, and finally (None, target, None).

    Rows are Gaussian plus a random multiple of one shared direction u, and the target lies partly
    along u, so alignments vary and redundancy matters. The norms are those of the float16 rows, as
    the gradient pass stores them. At most one block is built at a time.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    u = torch.nn.functional.normalize(torch.randn(d, generator=gen, device=device), dim=0)
    for lo in range(0, N, block):
        n = min(block, N - lo)
        g = (torch.randn(n, d, generator=gen, device=device)
             + 2.0 * torch.randn(n, 1, generator=gen, device=device) * u).half()
        yield lo, g, g.float().pow(2).sum(-1)
    yield None, u * 30 + torch.randn(d, generator=gen, device=device), None


def synthetic_matrix(N: int, d: int, seed: int = 0, device="cpu"):
    """``synthetic`` in memory: (G [1, N, d] float16, sq [1, N] float32, target [d] float32)."""
    G = torch.empty(1, N, d, dtype=torch.float16, device=device)
    sq = torch.empty(1, N, device=device)
    for lo, g, s in synthetic(N, d, seed, device=device):
        if lo is None:
            return G, sq, g
        G[0, lo:lo + len(g)], sq[0, lo:lo + len(g)] = g, s
    raise AssertionError("synthetic() ends with the target")


# -- memory -----------------------------------------------------------------------------------------
def rss_status() -> dict:
    """VmRSS (resident now) and VmHWM (resident peak) of this process, in bytes (Linux /proc)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) * 1024
    return out


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0); False if unavailable."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakRSS:
    """Peak resident-memory growth while the ``with`` block runs, counting everything torch, the
    allocator and Python touched (tracemalloc does not see torch's tensors).

    ``exact``: the peak counter could be reset, so ``growth`` = VmHWM − VmRSS-before; otherwise
    ``growth`` is None and ``upper_bound`` (ru_maxrss − VmRSS-before, which over-counts when an earlier
    phase peaked higher) is all there is. ``before`` and ``peak`` (VmHWM, or None) are in bytes too.
    """

    def __enter__(self):
        self.exact = reset_peak_rss()
        self.before = rss_status()["VmRSS"]
        return self

    def __exit__(self, *exc):
        self.peak = rss_status()["VmHWM"] if self.exact else None
        self.growth = None if self.peak is None else self.peak - self.before
        self.upper_bound = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.before
        self.method = "VmHWM after clear_refs" if self.exact else "ru_maxrss (upper bound)"
        return False


# -- time -------------------------------------------------------------------------------------------
def _sync(device) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device=None) -> tuple[float, object]:
    """(seconds, result) of one call; on a CUDA ``device`` the queued kernels are waited for on both sides."""
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def best_of(fn, reps: int = 3, device=None) -> tuple[float, object]:
    """(fastest of ``reps`` calls in seconds, the last call's result): the figure least disturbed by a shared box."""
    best, out = float("inf"), None
    for _ in range(reps):
        seconds, out = timed(fn, device)
        best = min(best, seconds)
    return best, out


# -- child processes --------------------------------------------------------------------------------
def run_child(module: str, args: list[str], what: str = "bench child") -> dict:
    """``python -m module *args`` from the repository root, offline; its last stdout line, parsed as JSON.

    Each measurement that reads peak memory runs in a fresh process, so one measurement's peak or
    cached allocations cannot leak into the next. A failed child prints its stderr tail and exits."""
    out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(f"{what} {module} {' '.join(args)} failed ({out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])
